"""docs/deploy.md shows exactly the commands that the Dockerfile and the manifests imply."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "deploy.md"


def shell_commands(markdown: str) -> list[str]:
    """Every command line of the ```bash blocks (backslash continuations joined)."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        buf = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            buf += line
            if buf.strip() and not buf.strip().startswith("#"):
                commands.append(" ".join(buf.split()))
            buf = ""
    return commands


@pytest.fixture(scope="module")
def commands() -> list[str]:
    return shell_commands(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app_json() -> dict[str, Any]:
    return json.loads((REPO / "map" / "app.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tag() -> str:
    application = yaml.safe_load((REPO / "app.yaml").read_text(encoding="utf-8"))["application"]
    return f"{application['title']}:{application['version']}"


def _starting(commands: list[str], prefix: str) -> list[str]:
    return [c for c in commands if c.startswith(prefix)]


def test_build_commands(commands: list[str], tag: str) -> None:
    builds = _starting(commands, "docker build")
    assert builds == [
        f"docker build -t {tag} .",
        f"docker build -t {tag} --build-arg BASE_IMAGE=ubuntu:24.04 .",
    ]
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=", dockerfile, flags=re.M), "BASE_IMAGE must be a build arg"
    for arg in ("TORCH_INDEX_URL", "APP_UID", "APP_GID"):
        assert re.search(rf"^ARG {arg}=", dockerfile, flags=re.M)
        assert arg in DOC.read_text(encoding="utf-8")


def _mounts(command: str) -> dict[str, str]:
    """{container path: host path[:mode]} of the -v options."""
    tokens = shlex.split(command)
    out = {}
    for flag, value in itertools.pairwise(tokens):
        if flag == "-v":
            host, container, *mode = value.split(":")
            out[container] = host + (":" + mode[0] if mode else "")
    return out


def test_run_commands_match_the_manifest_paths(commands: list[str], tag: str, app_json: dict[str, Any]) -> None:
    work = app_json["workingDirectory"].rstrip("/")
    input_dir = f"{work}/{app_json['input']['path'].rstrip('/')}"
    output_dir = f"{work}/{app_json['output']['path'].rstrip('/')}"
    expected_gpu = (
        f"docker run --rm --gpus all --ulimit stack=67108864 -v $PWD/in:{input_dir}:ro -v $PWD/out:{output_dir} {tag}"
    )
    expected_cpu = expected_gpu.replace(" --gpus all", "")
    runs = [c for c in _starting(commands, "docker run") if "/var/holoscan/input" in c]
    assert expected_gpu in runs
    assert expected_cpu in runs
    for run in runs:
        tokens = shlex.split(run)
        assert tokens[-1] == tag or tag in tokens
        assert "--ulimit" in tokens and "stack=67108864" in tokens
        assert _mounts(run)[input_dir].endswith(":ro") and output_dir in _mounts(run)
    params = [r for r in runs if "-e NSN2N_" in r]
    assert params, "show how to set a parameter with -e NSN2N_<KEY>=..."
    denoise = yaml.safe_load((REPO / "app.yaml").read_text(encoding="utf-8"))["denoise"]
    for key in re.findall(r"-e NSN2N_(\w+)=", " ".join(params)):
        assert key.lower() in denoise, f"NSN2N_{key} is not a key of app.yaml denoise:"


def test_self_describing_commands(commands: list[str], tag: str) -> None:
    for sub in ("show", "show app", "show pkg", "env", "help"):
        assert f"docker run --rm {tag} {sub}" in commands
    assert f"docker run --rm -v $PWD/export:/var/run/holoscan/export {tag} extract" in commands


def test_packager_route(commands: list[str], tag: str) -> None:
    (package,) = _starting(commands, "monai-deploy package")
    tokens = shlex.split(package)
    app_dir = tokens[2]
    assert tokens[tokens.index("-c") + 1] == "app.yaml"
    assert tokens[tokens.index("-t") + 1] == tag
    assert tokens[tokens.index("--platform") + 1] == "x86_64"
    # The staged folder holds the app, its packages and requirements.txt (the packager's only lookup place).
    staging = " ".join(c for c in commands if c.startswith("cp "))
    assert app_dir in staging
    for item in ("app/.", "operators", "nsn2n", "dicom_series", "qa_report", "requirements.txt"):
        assert item in staging.split(), item
    text = DOC.read_text(encoding="utf-8")
    for caveat in ("buildx", "--source", "raw.githubusercontent.com", "holoscan-cli 4.2.0"):
        assert caveat in text, caveat


def test_workflow_section_names_the_same_tag_and_paths(tag: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "deploy/workflow-manager.json" in text
    for needle in (tag, "env_HOLOSCAN_INPUT_PATH", "env_HOLOSCAN_OUTPUT_PATH", "/var/holoscan/input"):
        assert needle in text
    tags = set(re.findall(r"nsn2n-denoise(?:-[\w-]+)?:\d+\.\d+\.\d+", text))
    name, version = tag.split(":")
    assert tags <= {tag, f"{name}-x64-workstation-dgpu-linux-amd64:{version}"}, tags
