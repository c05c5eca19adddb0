"""Point Apache Beam's BigQuery IO (Python SDK 2.77) at the local emulator.

Beam has no endpoint option for BigQuery. Two clients are involved:

* the apitools client (``BigqueryV2``: tables get/insert, load jobs, job polling) whose
  base URL is a class attribute -> patched here;
* google-cloud-bigquery (``insert_rows_json`` for STREAMING_INSERTS), which honours
  ``BIGQUERY_EMULATOR_HOST`` (scheme included) by itself.

Both build credentials from Application Default Credentials and would otherwise
reach for the metadata server or an OAuth token endpoint. We hand them a throw-away
``authorized_user`` file whose access token never expires, so no refresh (and no
network) is attempted. It is generated at run time in a temp dir: nothing secret.

Call ``point_beam_at_emulator()`` in the process that runs the pipeline *before*
building it. The BASE_URL patch is in-process only: use an in-process runner
(DirectRunner / FnApiRunner, default ``direct_running_mode=in_memory``); SDK worker
subprocesses (``multi_processing``) would need the same call (e.g. from a
``sitecustomize``), which this project does not do.
"""
from __future__ import annotations

import json
import os
import tempfile

DEFAULT_ENDPOINT = "http://127.0.0.1:9050"
DEFAULT_PROJECT = "topk-local"


def write_fake_adc(directory: str | None = None) -> str:
    """Write an offline-only ``authorized_user`` ADC file and return its path."""
    directory = directory or tempfile.mkdtemp(prefix="bqemu-adc-")
    path = os.path.join(directory, "application_default_credentials.json")
    info = {
        "type": "authorized_user",
        # Placeholders: never sent anywhere but the local emulator, which ignores them.
        "client_id": "bqemulator-local",
        "client_secret": "not-a-secret",
        "refresh_token": "not-a-token",
        "token": "bqemulator-local-token",
        "expiry": "2999-12-31T23:59:59Z",  # far future: google-auth never refreshes
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    os.chmod(path, 0o600)
    return path


def point_beam_at_emulator(endpoint: str | None = None, project: str | None = None,
                           adc_dir: str | None = None) -> dict[str, str]:
    """Configure env + the apitools base URL; return the env vars that were set."""
    endpoint = (endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST") or DEFAULT_ENDPOINT).rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        endpoint = "http://" + endpoint  # google-cloud-bigquery needs the scheme
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT
    env = {
        "BIGQUERY_EMULATOR_HOST": endpoint,
        "GOOGLE_CLOUD_PROJECT": project,
        "GOOGLE_APPLICATION_CREDENTIALS": os.environ.get("BQEMU_ADC_FILE") or write_fake_adc(adc_dir),
    }
    os.environ.update(env)

    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
    BigqueryV2.BASE_URL = f"{endpoint}/bigquery/v2/"
    return env
