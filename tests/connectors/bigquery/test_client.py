"""Configuration and one-line errors of the BigQuery connection.

No emulator here (it accepts any token): credentials errors come from
google-auth itself, refused tokens and 401/403 answers from a small local
HTTP server that plays the OAuth token service and BigQuery's error
format, over real HTTP.
"""
import http.server
import json
import threading

import pytest

from topk.connectors.bigquery import client as bigquery_client
from topk.connectors.bigquery.client import BigQueryError, Target

#: Offline placeholders: the token never expires, so nothing refreshes it.
ADC = {"type": "authorized_user", "client_id": "local", "client_secret": "x",
       "refresh_token": "x", "token": "t", "expiry": "2999-12-31T23:59:59Z"}


def test_targets_validate_the_identifiers_that_go_into_sql():
    t = Target("my-project", "top_k", "dev_")
    assert t.table_id("slices") == "my-project.top_k.dev_slices"
    assert t.beam_table_spec("slices") == "my-project:top_k.dev_slices"
    assert Target("example.com:my-project", "d").dataset_id == \
        "example.com:my-project.d"
    for args, message in (
            (("my-project", "d`; DROP TABLE x; --"), "bad BigQuery dataset"),
            (("my-project", "d", "x.y"), "bad BigQuery table prefix"),
            (("My Project", "d"), "bad BigQuery project id"),
            (("p", "d"), "bad BigQuery project id")):
        with pytest.raises(BigQueryError, match=message):
            Target(*args)


@pytest.mark.parametrize("args, message", [
    (("my-project", "top_k\n"), "bad BigQuery dataset"),
    (("my-project", "top_k", "dev_\n"), "bad BigQuery table prefix"),
    (("my-project\n", "top_k"), "bad BigQuery project id"),
    (("example.com:my-project\n", "top_k"), "bad BigQuery project id"),
    (("my-project", "top_k\n\n"), "bad BigQuery dataset"),
])
def test_a_trailing_newline_is_not_part_of_a_valid_name(args, message):
    # ``$`` matches before a final newline; names must match whole.
    with pytest.raises(BigQueryError, match=message):
        Target(*args)


def test_a_name_with_a_newline_fails_before_any_connection(adc, capsys):
    from topk import cli
    assert cli.main(["query", "--backend", "bigquery", "--bq-project",
                     "my-project", "--bq-dataset", "top_k\n", "--k", "3",
                     "--start", "2024-05-01T00:00:00Z", "--end",
                     "2024-05-01T01:00:00Z"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad BigQuery dataset name" in err, err


def test_endpoints_get_a_scheme():
    assert bigquery_client.normalize_endpoint("127.0.0.1:9050/") == \
        "http://127.0.0.1:9050"
    assert bigquery_client.normalize_endpoint("https://bq.example") == \
        "https://bq.example"
    assert bigquery_client.normalize_endpoint("") is None


@pytest.fixture
def adc(tmp_path, monkeypatch):
    """An offline ``authorized_user`` ADC file (no project in it)."""
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(ADC))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)
    return path


def test_missing_settings_are_named(adc, monkeypatch):
    with pytest.raises(BigQueryError, match=r"^no BigQuery dataset given "
                       r"\(--bq-dataset\)$"):
        bigquery_client.connect("my-project", None)
    with pytest.raises(BigQueryError, match="^no Google Cloud project: pass "
                       "--bq-project or set GOOGLE_CLOUD_PROJECT$"):
        bigquery_client.connect(None, "topk", check_dataset=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    _, target = bigquery_client.connect(None, "topk", check_dataset=False)
    assert target.project == "env-project" and target.endpoint is None
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "127.0.0.1:1")
    _, target = bigquery_client.connect("opt-project", "topk",
                                        check_dataset=False)
    assert (target.project, target.endpoint) == ("opt-project",
                                                 "http://127.0.0.1:1")


def test_unusable_credentials_are_one_line(adc, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc) + ".gone")
    with pytest.raises(BigQueryError) as e:
        bigquery_client.connect("my-project", "topk")
    assert str(e.value) == (
        f"no usable Google Cloud credentials: File {adc}.gone was not found. "
        "(run `gcloud auth application-default login`, or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file)")
    adc.write_text('{"type": "authorized_user"}')  # fields missing
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    with pytest.raises(BigQueryError, match="^no usable Google Cloud "
                       "credentials: .*authorized user"):
        bigquery_client.connect("my-project", "topk")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A token service (``POST /token``: a token, or ``invalid_grant`` when
    ``server.revoked``) and a BigQuery that answers every call with the
    error ``server.status``."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.revoked:
            self._send(400, {"error": "invalid_grant", "error_description":
                             "Token has been expired or revoked."})
        else:
            self._send(200, {"access_token": "t", "expires_in": 3600,
                             "token_type": "Bearer"})

    def do_GET(self):
        status = self.server.status
        self._send(status, {"error": {"code": status, "message": {
            401: "Request had invalid authentication credentials.",
            403: "Access Denied: Dataset my-project:topk: Permission "
                 "bigquery.datasets.get denied"}[status]}})

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def service_account_key(token_uri: str) -> dict:
    """A throw-away service account key (generated here, never stored)
    whose tokens come from ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048
                                   ).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "key-project",
            "private_key_id": "1", "private_key": pem,
            "client_email": "topk@key-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": token_uri}


@pytest.fixture
def refusing_server(adc):
    """The server, and ADC (a service account key) whose tokens come from
    its token service."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.endpoint = f"127.0.0.1:{server.server_address[1]}"
    server.revoked, server.status = False, 401
    adc.write_text(json.dumps(service_account_key(
        f"http://{server.endpoint}/token")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, message", [
    (401, "BigQuery at http://ENDPOINT rejected the credentials (401): "
          "Request had invalid authentication credentials.; check "
          "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth "
          "application-default login`"),
    (403, "BigQuery denied access to my-project.topk (403): Access Denied: "
          "Dataset my-project:topk: Permission bigquery.datasets.get denied; "
          "the credentials need roles/bigquery.dataEditor on the dataset and "
          "roles/bigquery.jobUser on the project")])
def test_refused_access_is_one_line(refusing_server, status, message):
    refusing_server.status = status
    with pytest.raises(BigQueryError) as e:
        bigquery_client.connect("my-project", "topk",
                                endpoint=refusing_server.endpoint)
    assert str(e.value) == message.replace("ENDPOINT",
                                           refusing_server.endpoint)


def test_revoked_credentials_are_one_line(refusing_server):
    refusing_server.revoked = True
    with pytest.raises(BigQueryError) as e:
        bigquery_client.connect("my-project", "topk",
                                endpoint=refusing_server.endpoint)
    assert str(e.value) == (
        "the Google Cloud credentials were refused: invalid_grant: Token has "
        "been expired or revoked. (run `gcloud auth application-default "
        "login`, or check GOOGLE_APPLICATION_CREDENTIALS)")


def test_unreachable_token_service_is_one_line(refusing_server):
    refusing_server.shutdown()
    refusing_server.server_close()  # nothing listens there any more
    with pytest.raises(BigQueryError, match="^cannot reach Google's token "
                       "service to refresh the credentials: "):
        bigquery_client.connect("my-project", "topk", endpoint="127.0.0.1:9")


def test_the_credentials_project_is_the_last_resort(refusing_server):
    _, target = bigquery_client.connect(None, "topk", check_dataset=False)
    assert target.project == "key-project"
