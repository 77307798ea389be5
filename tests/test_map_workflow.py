"""deploy/workflow-manager.json: a MONAI Deploy Workflow Manager workflow that runs the MAP and exports.

The rules checked here are the Workflow Manager's own, read from its source (Project-MONAI/
monai-deploy-workflow-manager, commit 9e10e950): the workflow validator
(src/WorkflowManager/WorkflowManager/Validators/WorkflowValidator.cs, task types in
src/Common/Miscellaneous/ValidationConstants.cs) and the Docker task plugin (src/TaskManager/Plug-ins/Docker:
Keys.cs for its arguments, DockerPlugin.cs for how it mounts and runs the container).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "deploy" / "workflow-manager.json"
# Docker plugin arguments (Keys.cs): required ones, and every key it reads besides env_<VAR>.
DOCKER_REQUIRED_ARGS = {"server_url", "entrypoint", "command", "container_image", "temp_storage_container_path"}
DOCKER_KNOWN_ARGS = DOCKER_REQUIRED_ARGS | {"user", "always_pull", "task_timeout_minutes"}
# The one env_ argument for which the plugin mounts an intermediate volume (Keys.WorkingDirectory); its
# contents are uploaded to the workflow's storage when the container ends (ContainerStatusMonitor.cs).
INTERMEDIATE_VOLUME_ARG = "env_MONAI_WORKDIR"
VALID_TASK_TYPES = {"argo", "aide_clinical_review", "router", "export", "docker", "email", "remote_app_execution"}
VALID_TASK_TYPES |= {"export_hl7"}


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


def validator_errors(workflow: dict[str, Any]) -> list[str]:
    """The checks of the Workflow Manager's WorkflowValidator.ValidateWorkflowAsync that need no server
    (it also checks that the name is unused and that data origins are registered)."""
    errors = []
    if not workflow.get("name"):
        errors.append("Missing Workflow Name.")
    if not workflow.get("version"):
        errors.append("Missing Workflow Version.")
    gateway = workflow.get("informatics_gateway")
    if not gateway or not gateway.get("ae_title") or len(gateway["ae_title"]) > 15:
        errors.append("AeTitle is required in the InformaticsGateaway section and must be under 16 characters.")
    tasks = workflow.get("tasks") or []
    if not tasks:
        return [*errors, "Workflow does not contain Tasks, please review Workflow."]
    ids = [task["id"] for task in tasks]
    errors += [f"TaskId: '{i}' Contains Invalid Characters." for i in ids if not re.fullmatch(r"[a-zA-Z0-9-_]+", i)]
    errors += [f"Found duplicate task id '{i}'" for i in set(ids) if ids.count(i) > 1]
    destinations = [d["name"] for task in tasks for d in task.get("task_destinations", [])]
    errors += [f"Converging Tasks Destinations on task: {d}" for d in set(destinations) if destinations.count(d) > 1]
    if ids[0] in destinations:
        errors.append(f"Converging Tasks Destinations on root task: {ids[0]}")
    errors += [f"Found Task(s) without any task destinations to it: {i}" for i in ids[1:] if i not in destinations]
    errors += [f"unknown task destination {d}" for d in destinations if d not in ids]
    for task in tasks:
        artifacts = task.get("artifacts") or {}
        outputs = [a["name"] for a in artifacts.get("output") or []]
        if len(outputs) != len(set(outputs)):
            errors.append(f"Task: '{task['id']}' has multiple output names with the same value.")
        if task["type"].lower() not in VALID_TASK_TYPES:
            errors.append(f"Task: '{task['id']}' has an invalid type")
            continue
        if task["type"].lower() != "router":
            inputs = artifacts.get("input") or []
            if not inputs:
                errors.append(f"Task: '{task['id']}' must have Input Artifacts specified.")
            if any(not a.get("name") or not a.get("value") for a in inputs):
                errors.append(f"Task: '{task['id']}' Input Artifacts must have a Name and a Value.")
        if task["type"].lower() == "export":
            names = [d["Name"] for d in task.get("export_destinations", [])]
            if not names:
                errors.append(f"Task: '{task['id']}' does not contain a destination.")
            if len(names) != len(set(names)):
                errors.append(f"Task: '{task['id']}' contains duplicate destinations.")
            registered = (gateway or {}).get("export_destinations") or []
            errors += [f"export_destination: '{n}' must be registered" for n in names if n not in registered]
    return errors


def test_workflow_passes_the_workflow_managers_validator(workflow: dict[str, Any]) -> None:
    assert validator_errors(workflow) == []


def test_the_validator_rules_reject_broken_workflows(workflow: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(workflow))
    broken["informatics_gateway"]["ae_title"] = "MONAI-DEPLOY-TOO-LONG"
    broken["tasks"][0]["id"] = "denoise task"
    broken["tasks"][-1]["export_destinations"] = [{"Name": "PACS2"}]
    broken["tasks"][0]["task_destinations"] = []
    errors = validator_errors(broken)
    assert any("AeTitle" in e for e in errors)
    assert any("Invalid Characters" in e for e in errors)
    assert any("must be registered" in e for e in errors)
    assert any("without any task destinations" in e for e in errors), "export is no longer reached"


def test_no_router_condition_on_series_tags(workflow: dict[str, Any]) -> None:
    """The Workflow Manager resolves {{ context.dicom.series.any(g,e) }} and .all(g,e) from the first stored
    instance's .dcm.json only (DicomService.GetAnyValueAsync returns the first file's value, even an empty
    one; GetAllValueAsync compares no other file): a study whose first-listed file is an SR, PR or SEG would
    never reach the denoiser. The MAP's own selector checks every series, so every study goes to it."""
    text = json.dumps(workflow)
    assert "context.dicom.series" not in text
    assert workflow["tasks"][0]["type"] == "docker", "the MAP is the first task: it selects the CT/MR series itself"


def test_docker_task_runs_the_map(workflow: dict[str, Any], image_tag: str, app_json: dict[str, Any]) -> None:
    (task,) = _tasks(workflow, "docker")
    args = task["args"]
    assert set(args) >= DOCKER_REQUIRED_ARGS
    unknown = {k for k in args if k not in DOCKER_KNOWN_ARGS and not k.startswith("env_")}
    assert not unknown, f"the Docker plugin ignores {unknown}"
    url = urlparse(args["server_url"])
    assert url.scheme in ("unix", "tcp", "http", "https") and (url.netloc or url.path), "an absolute URI"
    assert args["container_image"] == image_tag == "nsn2n-denoise:0.1.0"
    assert args["entrypoint"].split(",") == ["/bin/bash", "-c"]
    assert args["command"] == "/var/holoscan/tools"
    assert int(args["task_timeout_minutes"]) > 0
    env = app_json["environment"]
    assert args["env_HOLOSCAN_INPUT_PATH"] == env["HOLOSCAN_INPUT_PATH"]
    assert args["env_HOLOSCAN_OUTPUT_PATH"] == env["HOLOSCAN_OUTPUT_PATH"]
    assert args["env_HOLOSCAN_MODEL_PATH"] == env["HOLOSCAN_MODEL_PATH"]
    # Every artifact must be mapped to an env_ argument (the plugin's ValidateStorageMappings).
    inputs = task["artifacts"]["input"]
    outputs = task["artifacts"]["output"]
    assert [a["name"] for a in inputs] == ["env_HOLOSCAN_INPUT_PATH"]
    assert inputs[0]["value"] == "{{ context.input.dicom }}"
    assert [a["name"] for a in outputs] == ["env_HOLOSCAN_OUTPUT_PATH"]
    for artifact in inputs + outputs:
        assert artifact["name"] in args


def test_failed_runs_are_visible_through_the_mandatory_output(workflow: dict[str, Any]) -> None:
    """The plugin reports Succeeded for any exit code (DockerPlugin.GetStatus); the Workflow Manager fails a
    task whose mandatory output artifact is empty (WorkflowExecuterService.HandleOutputArtifacts). The app
    writes nothing into its output on failure, so a failed run fails the task and stops the export."""
    (task,) = _tasks(workflow, "docker")
    (output,) = task["artifacts"]["output"]
    assert output.get("mandatory", True) is True


def test_work_folder_is_the_plugins_intermediate_volume(workflow: dict[str, Any], app_json: dict[str, Any]) -> None:
    """Run records, QA montages and saved models survive the container: the app's work folder
    (HOLOSCAN_WORKDIR) is the folder the plugin mounts and uploads for env_MONAI_WORKDIR."""
    (task,) = _tasks(workflow, "docker")
    args = task["args"]
    workdir = args[INTERMEDIATE_VOLUME_ARG]
    assert args["env_HOLOSCAN_WORKDIR"] == workdir
    image_paths = [v for k, v in app_json["environment"].items() if k != "HOLOSCAN_WORKDIR" and v.startswith("/")]
    image_paths.append("/var/holoscan/tools")
    for path in image_paths:
        assert not Path(path).is_relative_to(workdir), f"mounting {workdir} would hide {path}"
        assert not Path(workdir).is_relative_to(path), f"{workdir} is inside {path}"
    assert Path(workdir).parent == Path(app_json["workingDirectory"]), "a new folder under the MAP's working folder"


def test_container_user_is_the_images_user(workflow: dict[str, Any]) -> None:
    """The plugin runs the container as `user` and chowns the input, output and intermediate folders to it
    (DockerPlugin.SetPermission), so no manual permission step is needed; the image's user is 1000:1000."""
    (task,) = _tasks(workflow, "docker")
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    uid = re.search(r"^ARG APP_UID=(\d+)$", dockerfile, re.M).group(1)
    gid = re.search(r"^ARG APP_GID=(\d+)$", dockerfile, re.M).group(1)
    assert task["args"]["user"] == f"{uid}:{gid}"


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
