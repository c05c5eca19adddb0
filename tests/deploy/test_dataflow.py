"""Dataflow, offline.

Each pipeline's graph is built and translated by the real DataflowRunner
with ``--dry_run`` (everything up to the job submission: graph construction,
Dataflow's overrides, the runner API proto, the Dataflow job message, and
staging the ``--setup_file`` sdist locally; no Google Cloud call), so a
broken graph, coder or option fails here. The Flex Template's metadata,
launcher and image are checked against the batch pipeline's options.
"""
import json
import os
import re
import tarfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

from deploy_checks import REPO, beam_unknown_args
from topk.pipelines import batch, stream

DATAFLOW_DIR = os.path.join(REPO, "deploy", "dataflow")
SETUP = os.path.join(REPO, "setup.py")
DATAFLOW = [
    "--runner=DataflowRunner", "--project=topk-test",
    "--region=europe-west1", "--temp_location=gs://topk-test/tmp",
    "--no_auth", "--dry_run=True", "--sdk_location=container",
    f"--setup_file={SETUP}",
]
OUT = "--output=gs://topk-test/out"
KAFKA = ["--bootstrap=kafka:9092", "--topic=events", OUT]
BATCH_STEPS = ["ParseEvents", "DedupSlices", "ItemShards", "RankWindows",
               "SliceTables", "WriteOutput"]

CASES = {
    "batch": (["--input=gs://topk-test/events/*.jsonl.gz", OUT],
              "JOB_TYPE_BATCH", ["ReadFiles", *BATCH_STEPS]),
    "batch, approximate": (
        ["--input=gs://topk-test/events/*.parquet", OUT,
         "--method=exact,cms,frequent_items"], "JOB_TYPE_BATCH",
        ["ReadFiles", *BATCH_STEPS, "ApproximateSlices", "SketchTables",
         "ApproximateWindows"]),
    "reprocess": (
        ["--from-archive", "gs://topk-test/out", "--archive-start",
         "2024-05-01", "--archive-end", "2024-05-03", OUT], "JOB_TYPE_BATCH",
        ["ReadArchive0", "ReadArchive1", "AllArchiveDays", "KeepRange",
         *BATCH_STEPS, "WholeWindowsOnly[0]"]),
    "stream, bounded": ([*KAFKA, "--bounded"], "JOB_TYPE_BATCH",
                        ["ReadKafka", "ParseEvents"]),
    "stream": ([*KAFKA, "--streaming"], "JOB_TYPE_STREAMING",
               ["ReadKafka", "ParseEvents"]),
}


def _dry_run(name):
    argv, _, _ = CASES[name]
    if name.startswith("stream"):
        module, options = stream, PipelineOptions([*DATAFLOW, *argv])
    else:
        module, options = batch, batch.parse_args([*DATAFLOW, *argv])
    pipeline = beam.Pipeline(options=options)
    module.build(pipeline, options)
    return pipeline.run().job


@pytest.fixture(scope="module")
def jobs():
    return {}


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_graph_translates_for_dataflow(name, jobs):
    _, job_type, steps = CASES[name]
    job = jobs[name] = _dry_run(name)
    assert job.proto.type.name == job_type
    top_level = {t.unique_name for t in
                 job.proto_pipeline.components.transforms.values()}
    missing = [s for s in steps if s not in top_level]
    assert not missing, missing
    # Dataflow runs Docker environments only; the graph has no other.
    environments = job.proto_pipeline.components.environments.values()
    assert {e.urn for e in environments} == {"beam:env:docker:v1"}


def _staged(job) -> dict[str, str]:
    """name -> local path of every artifact staged with the job."""
    out = {}
    for env in job.proto_pipeline.components.environments.values():
        for dep in env.dependencies:
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(
                dep.type_payload).path
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload \
                .FromString(dep.role_payload).staged_name
            out[name] = path
    return out


def test_setup_file_stages_the_package(jobs):
    job = jobs.get("reprocess") or _dry_run("reprocess")
    staged = _staged(job)
    # Dataflow's workers pip-install this sdist, built from setup.py.
    assert "workflow.tar.gz" in staged
    with tarfile.open(staged["workflow.tar.gz"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for module in ("topk/pipelines/batch.py", "topk/storage/reprocess.py",
                   "topk/transforms/exact.py", "topk/sinks/parquet.py",
                   "setup.py"):
        assert module in names, module


def test_a_broken_option_fails_before_submission():
    with pytest.raises(ValueError,
                       match="--from-archive needs --archive-start"):
        batch.parse_args([*DATAFLOW, OUT, "--from-archive", "gs://b/out"])
    with pytest.raises(SystemExit):  # argparse: bad value of a known option
        batch.parse_args([*DATAFLOW, OUT, "--input=gs://b/x", "--k=0"])


# --- the Flex Template --------------------------------------------------


def _metadata():
    with open(os.path.join(DATAFLOW_DIR, "metadata.json")) as f:
        return json.load(f)


#: A valid value of every template parameter.
SAMPLES = {"output": "gs://b/out", "input": "gs://b/events/*.jsonl.gz",
           "from_archive": "gs://b/out", "archive_start": "2024-05-01",
           "archive_end": "2024-05-02T00:00:00Z", "windows": "1h,1h/1m",
           "k": "100", "method": "exact,cms", "item_shards": "64",
           "dedup_shards": "64"}


def test_template_parameters_are_batch_options():
    params = {p["name"]: p for p in _metadata()["parameters"]}
    assert set(params) == set(SAMPLES)
    # The launcher passes each parameter as --name=value: a known option
    # that accepts the sample value.
    flags = [f"--{name}={value}" for name, value in SAMPLES.items()]
    assert beam_unknown_args(flags) == []
    assert [n for n, p in params.items() if not p["isOptional"]] == ["output"]
    for name, p in params.items():
        assert p["label"] and p["helpText"]
        [regex] = p["regexes"]
        assert re.fullmatch(regex, SAMPLES[name]), name


@pytest.mark.parametrize("name, bad", [
    ("output", "/local/out"), ("archive_start", "yesterday"),
    ("archive_end", "2024/05/02"), ("windows", "2h"), ("k", "0"),
    ("method", "exact,bogus"),
])
def test_template_regexes_reject_what_the_pipeline_rejects(name, bad):
    [param] = [p for p in _metadata()["parameters"] if p["name"] == name]
    assert not re.fullmatch(param["regexes"][0], bad)


def test_template_image_launches_the_batch_pipeline():
    """The launcher runs main.py (``batch.run``: the graph of the dry runs
    above) with ``--setup_file`` pointing at the package's setup.py."""
    with open(os.path.join(DATAFLOW_DIR, "Dockerfile")) as f:
        dockerfile = f.read()
    env = dict(re.findall(r"^ENV (FLEX_TEMPLATE_PYTHON_\w+)=\$\{WORKDIR\}/"
                          r"(\S+)$", dockerfile, re.M))
    assert env == {"FLEX_TEMPLATE_PYTHON_PY_FILE": "main.py",
                   "FLEX_TEMPLATE_PYTHON_SETUP_FILE": "setup.py"}
    copies = {dest: src for src, dest in re.findall(
        r"^COPY (\S+) \$\{WORKDIR\}/(\S+)$", dockerfile, re.M)}
    assert copies["main.py"] == "deploy/dataflow/main.py"
    assert copies["setup.py"] == "setup.py"
    with open(os.path.join(DATAFLOW_DIR, "main.py")) as f:
        assert "batch.run()" in f.read()
