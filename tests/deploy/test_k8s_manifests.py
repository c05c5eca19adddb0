"""deploy/k8s, checked offline.

Every manifest is validated against the Kubernetes API's JSON schemas in
strict mode (kubernetes-validate: an unknown or misspelt field fails), and
the FlinkDeployment against the Flink Kubernetes Operator's own CRD schema
(from its API jar on Maven Central), made strict the same way. The commands
in them are parsed by topk's CLI and Beam's option parser, and must agree
with the image (deploy/flink/Dockerfile) and deploy/flink/flink.sh's
versions.
"""
import copy
import datetime as dt
import glob
import os
import shlex
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from apache_beam.options.pipeline_options import (FlinkRunnerOptions,
                                                  PortableOptions,
                                                  StandardOptions)

from deploy_checks import (REPO, check_topk_command, flink_sh_default,
                           topk_calls)
from topk.pipelines import batch
from topk.core.schema import DAY_MS

K8S = os.path.join(REPO, "deploy", "k8s")
DOCKERFILE = os.path.join(REPO, "deploy", "flink", "Dockerfile")
#: Kubernetes API version the manifests are checked against.
K8S_VERSION = "1.32.0"
ENTRY_CLASS = "org.apache.beam.runners.flink.FlinkPortableClientEntryPoint"


def _documents() -> list[dict]:
    """The documents of every resource file the kustomization lists."""
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    docs = []
    for name in kustomization["resources"]:
        with open(os.path.join(K8S, name)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def _one(kind: str) -> dict:
    [doc] = [d for d in _documents() if d["kind"] == kind]
    return doc


def _strict(schema):
    """A CRD's structural schema with unknown fields rejected, as the API
    server's strict field validation does (its pruning would drop them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validator(operator_crds):
    [path] = glob.glob(os.path.join(operator_crds, "flinkdeployments.*.yml"))
    with open(path) as f:
        crd = yaml.safe_load(f)
    [version] = [v for v in crd["spec"]["versions"] if v["served"]]
    api_version = f"{crd['spec']['group']}/{version['name']}"
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # The API server checks these itself; a CRD's schema leaves them out.
    schema["properties"].update(apiVersion={"type": "string"},
                                kind={"type": "string"},
                                metadata={"type": "object"})
    validator = jsonschema.Draft7Validator(schema)

    def validate(doc):
        assert doc["apiVersion"] == api_version
        validator.validate(doc)
    return validate


def _validate(doc, crd_validator):
    if doc["kind"] == "FlinkDeployment":
        crd_validator(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_manifest_is_valid(crd_validator):
    docs = _documents()
    assert {d["kind"] for d in docs} == {
        "Namespace", "ServiceAccount", "Role", "RoleBinding",
        "PersistentVolumeClaim", "FlinkDeployment", "CronJob"}
    for doc in docs:
        _validate(doc, crd_validator)


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@pytest.mark.parametrize("kind, path, value", [
    ("FlinkDeployment", ["spec", "job", "entrypointClass"], ENTRY_CLASS),
    ("FlinkDeployment", ["spec", "flinkVersion"], "v1_99"),
    ("FlinkDeployment", ["spec", "job", "upgradeMode"], "never"),
    ("FlinkDeployment", ["spec", "taskManager", "podTemplate", "spec",
                         "containers", 0, "imag"], "x"),
    ("CronJob", ["spec", "shedule"], "0 2 * * *"),
    ("CronJob", ["spec", "jobTemplate", "spec", "template", "spec",
                 "containers", 0, "resources", "request"], {}),
    ("PersistentVolumeClaim", ["spec", "accessModes"], "ReadWriteMany"),
])
def test_a_wrong_field_fails_validation(crd_validator, kind, path, value):
    doc = copy.deepcopy(_one(kind))
    _set(doc, path, value)
    with pytest.raises((jsonschema.ValidationError,
                        kubernetes_validate.ValidationError)):
        _validate(doc, crd_validator)


@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="kubectl not installed")
def test_kustomize_renders_everything_into_the_namespace():
    rendered = subprocess.run(
        ["kubectl", "kustomize", K8S], capture_output=True, text=True,
        check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in _documents())
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "topk", d["kind"]


def _jobserver_jar_in_image() -> str:
    with open(DOCKERFILE) as f:
        [line] = [ln for ln in f if ln.startswith("COPY --from=jobserver")]
    return line.split()[-1]


def _mounts(container) -> list[str]:
    return [m["mountPath"] for m in container.get("volumeMounts", [])]


def test_flink_deployment_runs_the_beam_job_with_a_worker_pool_sidecar():
    fd = _one("FlinkDeployment")["spec"]
    minor = flink_sh_default("TOPK_FLINK_VERSION").rsplit(".", 1)[0]
    assert fd["flinkVersion"] == "v" + minor.replace(".", "_")
    job = fd["job"]
    assert job["entryClass"] == ENTRY_CLASS
    assert job["jarURI"] == "local://" + _jobserver_jar_in_image()
    assert job["args"][0] == "--driver-cmd" and len(job["args"]) == 2

    [sidecar] = fd["taskManager"]["podTemplate"]["spec"]["containers"]
    assert sidecar["image"] == fd["image"]  # same Beam SDK as the driver
    command = sidecar["command"]
    assert command[:3] == ["python", "-m",
                           "apache_beam.runners.worker.worker_pool_main"]
    [port] = [int(a.split("=")[1]) for a in command
              if a.startswith("--service_port=")]
    assert [p["containerPort"] for p in sidecar["ports"]] == [port]

    driver = shlex.split(job["args"][1])
    assert driver[0] == "topk"
    # The entry point appends the job server's endpoint.
    args, options = check_topk_command(
        driver[1:] + ["--job_endpoint=localhost:8099"])
    assert args.command == "stream"
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == f"localhost:{port}"
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    assert options.view_as(StandardOptions).streaming
    assert options.view_as(FlinkRunnerOptions).parallelism == \
        job["parallelism"]
    slots = int(fd["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    assert slots >= 1

    # The driver (JobManager) and the Python workers (sidecar) both see
    # --output; the volume is the claim of storage.yaml.
    output = options.get_all_options()["output"]
    [main] = fd["podTemplate"]["spec"]["containers"]
    for container in (main, sidecar):
        assert any(output.startswith(m + "/") for m in _mounts(container))
    [volume] = fd["podTemplate"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == \
        _one("PersistentVolumeClaim")["metadata"]["name"]
    assert fd["serviceAccount"] == _one("ServiceAccount")["metadata"]["name"]


def test_cronjob_reprocesses_yesterday(tmp_path):
    cron = _one("CronJob")["spec"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["/bin/bash", "-c"]
    [call] = topk_calls(container["args"][0], tmp_path)
    args, options = check_topk_command(call)
    assert args.command == "batch"
    today = dt.datetime.now(dt.timezone.utc).date()
    midnight = (today - dt.date(1970, 1, 1)).days * DAY_MS
    assert batch.archive_range(options) == (midnight - DAY_MS, midnight)
    values = options.get_all_options()
    assert values["from_archive"] == values["output"]
    assert any(values["output"].startswith(m + "/")
               for m in _mounts(container))
    assert cron["timeZone"] == "Etc/UTC"
    assert cron["concurrencyPolicy"] == "Forbid"


def test_checkpoints_go_to_the_volume_both_flink_roles_mount():
    """The default checkpoint storage, the JobManager's memory, refuses
    any checkpoint over 5 MB: a stream's state outgrows it."""
    deployment = _one("FlinkDeployment")["spec"]
    conf = deployment["flinkConfiguration"]
    assert conf["state.checkpoint-storage"] == "filesystem"
    directory = conf["state.checkpoints.dir"].removeprefix("file://")
    mounts = [m["mountPath"] for c in deployment["podTemplate"]["spec"][
        "containers"] for m in c.get("volumeMounts", [])]
    assert any(directory.startswith(m + "/") for m in mounts), mounts
