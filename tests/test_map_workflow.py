"""deploy/workflow-manager.json: a MONAI Deploy Workflow Manager workflow that runs the MAP and exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "deploy" / "workflow-manager.json"
# Required args of the Workflow Manager docker task plugin (TaskManager/Plug-ins/Docker/Keys.cs).
DOCKER_REQUIRED_ARGS = {"server_url", "entrypoint", "command", "container_image", "temp_storage_container_path"}


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return json.loads(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def image_tag() -> str:
    application = yaml.safe_load((REPO / "app.yaml").read_text(encoding="utf-8"))["application"]
    return f"{application['title']}:{application['version']}"


@pytest.fixture(scope="module")
def app_json() -> dict[str, Any]:
    return json.loads((REPO / "map" / "app.json").read_text(encoding="utf-8"))


def _tasks(workflow: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [t for t in workflow["tasks"] if t["type"] == kind]


def test_workflow_shape(workflow: dict[str, Any]) -> None:
    assert {"name", "version", "description", "informatics_gateway", "tasks"} <= set(workflow)
    ig = workflow["informatics_gateway"]
    assert ig["ae_title"] and ig["data_origins"] and ig["export_destinations"]
    ids = [t["id"] for t in workflow["tasks"]]
    assert len(ids) == len(set(ids))
    for task in workflow["tasks"]:
        for dest in task.get("task_destinations", []):
            assert dest["name"] in ids, f"{task['id']} -> unknown task {dest['name']}"
    assert workflow["tasks"][0]["type"] == "router", "the first task runs first: route CT/MR only"
    conditions = " ".join(workflow["tasks"][0]["task_destinations"][0]["conditions"])
    assert "'0008','0060'" in conditions and "'CT'" in conditions and "'MR'" in conditions


def test_docker_task_runs_the_map(workflow: dict[str, Any], image_tag: str, app_json: dict[str, Any]) -> None:
    (task,) = _tasks(workflow, "docker")
    args = task["args"]
    assert set(args) >= DOCKER_REQUIRED_ARGS
    assert args["container_image"] == image_tag == "nsn2n-denoise:0.1.0"
    assert args["entrypoint"].split(",") == ["/bin/bash", "-c"]
    assert args["command"] == "/var/holoscan/tools"
    assert int(args["task_timeout_minutes"]) > 0
    env = app_json["environment"]
    assert args["env_HOLOSCAN_INPUT_PATH"] == env["HOLOSCAN_INPUT_PATH"]
    assert args["env_HOLOSCAN_OUTPUT_PATH"] == env["HOLOSCAN_OUTPUT_PATH"]
    for key, value in args.items():
        if key.startswith("env_HOLOSCAN_"):
            assert env[key.removeprefix("env_")] == value, key
    # Every artifact must be mapped to an env_ argument (the plugin's ValidateStorageMappings).
    inputs = task["artifacts"]["input"]
    outputs = task["artifacts"]["output"]
    assert [a["name"] for a in inputs] == ["env_HOLOSCAN_INPUT_PATH"]
    assert inputs[0]["value"] == "{{ context.input.dicom }}"
    assert [a["name"] for a in outputs] == ["env_HOLOSCAN_OUTPUT_PATH"] and outputs[0]["mandatory"]
    for artifact in inputs + outputs:
        assert artifact["name"] in args


def test_export_task_sends_the_docker_output_to_pacs(workflow: dict[str, Any]) -> None:
    (docker,) = _tasks(workflow, "docker")
    (export,) = _tasks(workflow, "export")
    assert export["id"] in [d["name"] for d in docker["task_destinations"]]
    destinations = [d["Name"] for d in export["export_destinations"]]
    assert destinations and set(destinations) <= set(workflow["informatics_gateway"]["export_destinations"])
    (artifact,) = export["artifacts"]["input"]
    m = re.fullmatch(r"\{\{ context\.executions\.(\w+)\.artifacts\.(\w+) \}\}", artifact["value"])
    assert m, artifact["value"]
    assert m.group(1) == docker["id"] and m.group(2) == "env_HOLOSCAN_OUTPUT_PATH"
    assert artifact["mandatory"] is True
