"""Connecting to BigQuery the Google Cloud way, with one-line errors (no Beam).

Credentials are Application Default Credentials (``google.auth.default``):
``gcloud auth application-default login`` on a workstation,
``GOOGLE_APPLICATION_CREDENTIALS=<key file>`` for a service account, or the
attached service account on Google Cloud. Nothing secret lives in the repo.
The project comes from the option (``--bq-project``), else
``GOOGLE_CLOUD_PROJECT``, else the credentials' own project. The endpoint is
Google's unless ``--bq-endpoint`` or ``BIGQUERY_EMULATOR_HOST`` names
another one (the local emulator, ``deploy/bigquery``).

``connect`` checks the dataset up front, so a missing dataset, unusable
credentials or an unreachable endpoint fail at once with a ``BigQueryError``
(a ``ValueError``: the CLI prints it as one line and exits 2) instead of in
the middle of a run. ``errors`` turns the API's exceptions into the same.
"""
import contextlib
import dataclasses
import datetime as dt
import os
import re

#: OAuth scope of every BigQuery call.
SCOPES = ("https://www.googleapis.com/auth/bigquery",)
#: Environment variable naming a BigQuery emulator endpoint (also read by
#: google-cloud-bigquery itself).
EMULATOR_HOST_ENV = "BIGQUERY_EMULATOR_HOST"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
GOOGLE_ENDPOINT = "https://bigquery.googleapis.com"

#: Identifiers go into SQL text (they cannot be query parameters), so they
#: are checked against BigQuery's own naming rules first, always with
#: ``fullmatch`` (``$`` would also match before a trailing newline).
_PROJECT = re.compile(
    r"(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_DATASET = re.compile(r"[A-Za-z0-9_]{1,1024}")
_PREFIX = re.compile(r"[A-Za-z0-9_]*")
_TIMEOUT_S = 60.0
_REQUEST_PREFIX = re.compile(r"^(?:GET|POST|PUT|PATCH|DELETE) \S+: ")


class BigQueryError(ValueError):
    """A BigQuery configuration or API problem, with a one-line reason."""


def _is_name(pattern: re.Pattern, value) -> bool:
    """Whether all of ``value`` (a ``str``) follows ``pattern``."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the output tables live: ``project.dataset.<prefix><table>``."""
    project: str
    dataset: str
    table_prefix: str = ""
    endpoint: str | None = None  # None: Google's
    location: str | None = None  # None: the dataset's

    def __post_init__(self):
        if not _is_name(_PROJECT, self.project):
            raise BigQueryError(f"bad BigQuery project id {self.project!r}")
        if not _is_name(_DATASET, self.dataset):
            raise BigQueryError(
                f"bad BigQuery dataset name {self.dataset!r}: letters, digits "
                "and underscores only")
        if not _is_name(_PREFIX, self.table_prefix):
            raise BigQueryError(
                f"bad BigQuery table prefix {self.table_prefix!r}: letters, "
                "digits and underscores only")

    @property
    def dataset_id(self) -> str:
        return f"{self.project}.{self.dataset}"

    def table_id(self, table: str) -> str:
        """``project.dataset.prefix_table`` (google-cloud-bigquery, SQL)."""
        return f"{self.dataset_id}.{self.table_prefix}{table}"

    def beam_table_spec(self, table: str) -> str:
        """``project:dataset.prefix_table`` (Beam's ``WriteToBigQuery``)."""
        return f"{self.project}:{self.dataset}.{self.table_prefix}{table}"


def add_arguments(parser) -> None:
    """Add ``--bq-project``, ``--bq-dataset``, ``--bq-table-prefix``,
    ``--bq-endpoint`` and ``--bq-location`` to an argparse parser: Beam's
    pipeline options and the commands alike. Each also parses with
    underscores (``--bq_dataset``), the spelling Beam uses when it ships
    pipeline options to remote workers (``--<dest>=value``)."""
    parser.add_argument(
        "--bq-project", "--bq_project", dest="bq_project", default=None,
        help="Google Cloud project of the BigQuery dataset (default: "
        f"{PROJECT_ENV}, then the Application Default Credentials' "
        "project).")
    parser.add_argument(
        "--bq-dataset", "--bq_dataset", dest="bq_dataset", default=None,
        help="BigQuery dataset of the output tables (it must exist).")
    parser.add_argument(
        "--bq-table-prefix", "--bq_table_prefix", dest="bq_table_prefix",
        default="",
        help="Prefix of the BigQuery table names, e.g. dev_ (default none).")
    parser.add_argument(
        "--bq-endpoint", "--bq_endpoint", dest="bq_endpoint", default=None,
        help="BigQuery API endpoint, e.g. the local emulator "
        f"http://127.0.0.1:9050 (default: {EMULATOR_HOST_ENV} if set, else "
        "Google's).")
    parser.add_argument(
        "--bq-location", "--bq_location", dest="bq_location", default=None,
        help="BigQuery location of the jobs, e.g. EU (default: the "
        "dataset's).")


def normalize_endpoint(endpoint: str | None) -> str | None:
    """``127.0.0.1:9050`` -> ``http://127.0.0.1:9050``; ``None``/empty stays
    ``None`` (Google's endpoint)."""
    if not endpoint:
        return None
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        endpoint = "http://" + endpoint
    return endpoint


def credentials():
    """Application Default Credentials and their project (may be None)."""
    import google.auth
    from google.auth import exceptions
    try:
        return google.auth.default(scopes=SCOPES)
    except exceptions.DefaultCredentialsError as e:
        raise BigQueryError(
            f"no usable Google Cloud credentials: {_one_line(e)} (run `gcloud "
            "auth application-default login`, or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key file)"
        ) from None


def connect(project: str | None, dataset: str | None, table_prefix: str = "",
            endpoint: str | None = None, location: str | None = None,
            check_dataset: bool = True):
    """A ``google.cloud.bigquery.Client`` and the ``Target`` it writes to or
    reads from; raises ``BigQueryError`` on any configuration problem,
    including (with ``check_dataset``) a dataset that does not exist."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery
    if not dataset:
        raise BigQueryError("no BigQuery dataset given (--bq-dataset)")
    endpoint = normalize_endpoint(endpoint
                                  or os.environ.get(EMULATOR_HOST_ENV))
    creds, adc_project = credentials()
    project = project or os.environ.get(PROJECT_ENV) or adc_project
    if not project:
        raise BigQueryError(
            "no Google Cloud project: pass --bq-project or set "
            f"{PROJECT_ENV}")
    target = Target(project, dataset, table_prefix or "", endpoint, location)
    client = bigquery.Client(
        project=project, credentials=creds, location=location,
        client_options=ClientOptions(api_endpoint=endpoint) if endpoint
        else None)
    if check_dataset:
        with errors(target, missing=(
                f"BigQuery dataset {project}:{dataset} not found: create it "
                f"first (bq mk --dataset {project}:{dataset})")):
            client.get_dataset(target.dataset_id, retry=preflight_retry(),
                               timeout=_TIMEOUT_S)
    return client, target


def preflight_retry():
    """Retry only what the server says is transient: an unreachable endpoint
    or refused credentials fail at once (the client's default retry would
    keep trying a refused connection for minutes)."""
    from google.api_core import exceptions, retry
    return retry.Retry(
        predicate=retry.if_exception_type(
            exceptions.InternalServerError, exceptions.BadGateway,
            exceptions.ServiceUnavailable, exceptions.TooManyRequests),
        initial=0.5, maximum=4.0, timeout=30.0)


@contextlib.contextmanager
def errors(target: Target, missing: str | None = None):
    """Turn BigQuery/auth/transport exceptions into one-line
    ``BigQueryError``s; ``missing`` is the message for a 404."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    where = target.endpoint or GOOGLE_ENDPOINT
    try:
        yield
    except api.NotFound as e:
        raise BigQueryError(missing or f"BigQuery: {_one_line(e)}") from None
    except api.Unauthorized as e:
        raise BigQueryError(
            f"BigQuery at {where} rejected the credentials (401): "
            f"{_one_line(e)}; check GOOGLE_APPLICATION_CREDENTIALS or run "
            "`gcloud auth application-default login`") from None
    except api.Forbidden as e:
        raise BigQueryError(
            f"BigQuery denied access to {target.dataset_id} (403): "
            f"{_one_line(e)}; the credentials need roles/bigquery.dataEditor "
            "on the dataset and roles/bigquery.jobUser on the project"
        ) from None
    except api.GoogleAPICallError as e:
        raise BigQueryError(f"BigQuery error: {_one_line(e)}") from None
    except auth.RefreshError as e:  # e.g. a revoked key or refresh token
        raise BigQueryError(
            "the Google Cloud credentials were refused: "
            f"{_one_line(e.args[0] if e.args else e)} (run `gcloud auth "
            "application-default login`, or check "
            "GOOGLE_APPLICATION_CREDENTIALS)") from None
    except auth.TransportError as e:
        raise BigQueryError(
            "cannot reach Google's token service to refresh the credentials: "
            f"{_reason(e)}") from None
    except requests.exceptions.RequestException as e:
        raise BigQueryError(
            f"cannot reach BigQuery at {where}: {_reason(e)}") from None


def query_parameters(params):
    """``(name, type, value)`` triples -> google-cloud-bigquery parameters;
    ``TIMESTAMP`` values are epoch ms, ``ARRAY<T>`` values lists."""
    from google.cloud import bigquery
    out = []
    for name, kind, value in params:
        if kind.startswith("ARRAY<"):
            out.append(bigquery.ArrayQueryParameter(name, kind[6:-1], value))
        else:
            if kind == "TIMESTAMP":
                value = dt.datetime.fromtimestamp(value / 1000,
                                                  tz=dt.timezone.utc)
            out.append(bigquery.ScalarQueryParameter(name, kind, value))
    return out


def run_query(client, target: Target, sql: str, params, missing: str):
    """Run parameterised ``sql``; returns the result rows (a list). A 404
    (e.g. a table not created yet) raises ``BigQueryError(missing)``."""
    from google.cloud import bigquery
    config = bigquery.QueryJobConfig(query_parameters=query_parameters(params))
    with errors(target, missing=missing):
        return list(client.query(sql, job_config=config).result(
            timeout=_TIMEOUT_S))


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(getattr(e, "message", None) or e).split())
    text = _REQUEST_PREFIX.sub("", text)  # "GET https://...: " adds nothing
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _reason(e: BaseException) -> str:
    """The root cause of a transport error, e.g. ``[Errno 111] Connection
    refused``, not requests' nested retry text."""
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(e))
    return m.group(0).strip() if m else _one_line(e)
