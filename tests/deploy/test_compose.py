"""deploy/compose/docker-compose.yml (Kafka + Flink + the job), offline.

Validated against the Compose Specification's JSON schema (the copy that
check-jsonschema ships: a misspelt service field fails), then checked for
what the schema cannot see: the extended Kafka service, the image, the
worker pool sharing the TaskManager's network, and the pipeline commands,
parsed by topk's CLI and Beam's option parser. ``docker compose config``
runs too where Docker's compose plugin is installed (not on this project's
machines).
"""
import copy
import importlib.resources
import json
import os
import shutil
import subprocess

import jsonschema
import pytest
import yaml
from apache_beam.options.pipeline_options import (FlinkRunnerOptions,
                                                  PortableOptions,
                                                  StandardOptions)

from deploy_checks import REPO, check_topk_command, flink_sh_default

COMPOSE = os.path.join(REPO, "deploy", "compose", "docker-compose.yml")
KAFKA_COMPOSE = os.path.join(REPO, "deploy", "kafka", "docker-compose.yml")
DOCKERFILE = os.path.join(REPO, "deploy", "flink", "Dockerfile")


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(importlib.resources.files(
        "check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("path", [COMPOSE, KAFKA_COMPOSE])
def test_compose_files_follow_the_compose_spec(validator, path):
    validator.validate(_load(path))


@pytest.mark.parametrize("service, field, value", [
    ("jobmanager", "enviroment", {}),
    ("worker-pool", "network_mode", 5),
    ("job", "depends_on", {"kafka": {"condition": "healthy"}}),
])
def test_a_wrong_field_fails_validation(validator, service, field, value):
    compose = copy.deepcopy(_load(COMPOSE))
    compose["services"][service][field] = value
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(compose)


def test_services_fit_together():
    compose = _load(COMPOSE)
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, (name, dep)
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], (name, volume)
    # Kafka is deploy/kafka's service, with the volume it mounts declared.
    extends = services["kafka"]["extends"]
    kafka = _load(os.path.join(os.path.dirname(COMPOSE), extends["file"]))
    kafka_service = kafka["services"][extends["service"]]
    for volume in kafka_service["volumes"]:
        assert volume.split(":")[0] in compose["volumes"]
    # One image, built from deploy/flink/Dockerfile, for every Flink role.
    build = services["jobmanager"]["build"]
    context = os.path.normpath(os.path.join(os.path.dirname(COMPOSE),
                                            build["context"]))
    assert os.path.samefile(os.path.join(context, build["dockerfile"]),
                            DOCKERFILE)
    images = {services[s]["image"] for s in services if s != "kafka"}
    assert len(images) == 1
    # The Dockerfile's sources exist and its Flink matches flink.sh's.
    with open(DOCKERFILE) as f:
        dockerfile = f.read()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            assert os.path.exists(os.path.join(context, line.split()[1])), line
    assert (f"FLINK_IMAGE=flink:{flink_sh_default('TOPK_FLINK_VERSION')}-"
            in dockerfile)
    assert (f"BEAM_JOBSERVER_VERSION="
            f"{flink_sh_default('TOPK_FLINK_BEAM_VERSION')}" in dockerfile)
    assert services["worker-pool"]["network_mode"] == "service:taskmanager"
    # Checkpoints go to files on a volume both Flink roles mount: the
    # default, the JobManager's memory, refuses any over 5 MB.
    for role in ("jobmanager", "taskmanager"):
        conf = yaml.safe_load(services[role]["environment"]["FLINK_PROPERTIES"])
        assert conf["state.checkpoint-storage"] == "filesystem", role
        directory = conf["state.checkpoints.dir"].removeprefix("file://")
        mounts = [v.split(":")[1] for v in services[role]["volumes"]]
        assert any(directory.startswith(m + "/") for m in mounts), role


def _pipeline_options(service) -> tuple:
    argv = service["entrypoint"][1:] + service.get("command", [])
    assert service["entrypoint"][0] == "topk"
    return check_topk_command(argv)


@pytest.mark.parametrize("name, command", [("job", "stream"),
                                           ("reprocess", "batch")])
def test_pipeline_commands_submit_to_the_cluster(name, command):
    services = _load(COMPOSE)["services"]
    service = services[name]
    if name == "reprocess":  # the user adds the day to reprocess
        service = dict(service, command=["--archive-start", "2024-05-01",
                                         "--archive-end", "2024-05-02"])
    args, options = _pipeline_options(service)
    assert args.command == command
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    flink = options.view_as(FlinkRunnerOptions)
    host, port = flink.flink_master.split(":")
    # The JobManager's REST port inside the network (it publishes it).
    assert [p.rsplit(":", 1)[1] for p in services[host]["ports"]] == [port]
    assert flink.flink_version == flink_sh_default(
        "TOPK_FLINK_VERSION").rsplit(".", 1)[0]
    with open(DOCKERFILE) as f:
        assert f"/beam-job-server.jar {flink.flink_job_server_jar}\n" in f.read()
    assert flink.parallelism == 2
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    pool = services["worker-pool"]["entrypoint"]
    assert f"--service_port={portable.environment_config.split(':')[1]}" \
        in pool and portable.environment_config.startswith("localhost:")
    # Workers write --output: the worker pool mounts it.
    output = options.get_all_options()["output"]
    assert any(output.startswith(v.split(":")[1] + "/")
               for v in services["worker-pool"]["volumes"])


def test_producer_command_parses():
    args, _ = _pipeline_options(_load(COMPOSE)["services"]["producer"])
    assert args.command == "produce" and args.bootstrap == "kafka:9092"


def _compose_plugin() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_plugin(),
                    reason="docker compose plugin not installed")
def test_docker_compose_config_accepts_it():
    subprocess.run(["docker", "compose", "-f", COMPOSE, "config", "-q"],
                   check=True, timeout=60)
