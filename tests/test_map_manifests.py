"""map/app.json and map/pkg.json: every field MAP spec 1.0 requires, generated from app.yaml, up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.map_support import generator

REPO = Path(__file__).resolve().parent.parent
APP_JSON = REPO / "map" / "app.json"
PKG_JSON = REPO / "map" / "pkg.json"


@pytest.fixture(scope="module")
def app_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "app.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app_json() -> dict[str, Any]:
    return json.loads(APP_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pkg_json() -> dict[str, Any]:
    return json.loads(PKG_JSON.read_text(encoding="utf-8"))


def test_app_json_has_every_spec_field(app_json: dict[str, Any]) -> None:
    assert set(app_json) == {
        "apiVersion",
        "command",
        "environment",
        "input",
        "liveness",
        "output",
        "readiness",
        "sdk",
        "sdkVersion",
        "timeout",
        "version",
        "workingDirectory",
    }
    assert app_json["apiVersion"] == "1.0.0"
    # A string holding a JSON array, exactly as holoscan-cli writes it.
    assert isinstance(app_json["command"], str)
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert app_json["input"]["path"] == "input/" and app_json["output"]["path"] == "output/"
    assert app_json["readiness"] is None and app_json["liveness"] is None
    assert app_json["sdk"] == "monai-deploy" and app_json["sdkVersion"] == "4.0.0"
    assert isinstance(app_json["timeout"], int) and app_json["timeout"] >= 0
    assert app_json["workingDirectory"] == "/var/holoscan"


def test_app_json_environment_names_every_map_variable(app_json: dict[str, Any]) -> None:
    env = app_json["environment"]
    assert all(isinstance(v, str) for v in env.values())
    assert env == {
        "HOLOSCAN_APPLICATION": "/opt/holoscan/app",
        "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
        "HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml",
        "HOLOSCAN_DOCS": "/opt/holoscan/docs",
        "HOLOSCAN_DOCS_PATH": "/opt/holoscan/docs",
        "HOLOSCAN_INPUT_PATH": "/var/holoscan/input",
        "HOLOSCAN_LOGS": "/var/holoscan/logs",
        "HOLOSCAN_LOGS_PATH": "/var/holoscan/logs",
        "HOLOSCAN_MODEL_PATH": "/opt/holoscan/models",
        "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output",
        "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
        "HOLOSCAN_TIMEOUT": str(app_json["timeout"]),
        "HOLOSCAN_VERSION": "4.2.0",
        "HOLOSCAN_WORKDIR": "/var/holoscan",
    }
    # input/output paths are relative to workingDirectory and must agree with the env variables.
    work = app_json["workingDirectory"].rstrip("/")
    assert env["HOLOSCAN_INPUT_PATH"] == f"{work}/{app_json['input']['path'].rstrip('/')}"
    assert env["HOLOSCAN_OUTPUT_PATH"] == f"{work}/{app_json['output']['path'].rstrip('/')}"
    assert env["HOLOSCAN_WORKDIR"] == work


def test_pkg_json_has_every_spec_field(pkg_json: dict[str, Any]) -> None:
    assert set(pkg_json) == {
        "apiVersion",
        "applicationRoot",
        "modelRoot",
        "models",
        "resources",
        "version",
        "platformConfig",
    }
    assert pkg_json["apiVersion"] == "1.0.0"
    assert pkg_json["applicationRoot"] == "/opt/holoscan/app"
    assert pkg_json["modelRoot"] == "/opt/holoscan/models"
    assert pkg_json["models"] == {}
    assert pkg_json["platformConfig"] == "dgpu"


def test_manifests_agree_with_app_yaml(
    app_yaml: dict[str, Any], app_json: dict[str, Any], pkg_json: dict[str, Any]
) -> None:
    application = app_yaml["application"]
    assert app_json["version"] == pkg_json["version"] == str(application["version"])
    assert app_json["input"]["formats"] == application["input-formats"] == application["inputFormats"]
    assert app_json["output"]["formats"] == application["output-formats"] == application["outputFormats"]
    assert pkg_json["resources"] == app_yaml["resources"]
    for key in ("cpu", "gpu", "memory"):
        assert key in pkg_json["resources"], key


def test_sdk_versions_agree_with_the_pinned_requirements(app_json: dict[str, Any]) -> None:
    gen = generator()
    assert app_json["sdkVersion"] == gen.pinned_version("monai-deploy-app-sdk")
    assert app_json["environment"]["HOLOSCAN_VERSION"] == gen.pinned_version("holoscan-cu13")
    assert gen.pinned_version("holoscan-cli") == "4.2.0", "holoscan-cli >= 4.3 has no MAP packager"


def test_generated_files_are_committed_up_to_date() -> None:
    gen = generator()
    app_json, pkg_json = gen.build_manifests(gen.load_app_yaml())
    assert APP_JSON.read_text(encoding="utf-8") == gen.render(app_json)
    assert PKG_JSON.read_text(encoding="utf-8") == gen.render(pkg_json)


def test_generate_manifests_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "map" / "generate_manifests.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_detects_stale_manifests_and_dockerfile_drift(tmp_path: Path, monkeypatch) -> None:
    gen = generator()
    app_yaml = gen.load_app_yaml()
    bumped = json.loads(json.dumps(app_yaml))
    bumped["application"]["version"] = "9.9.9"
    app_json, _ = gen.build_manifests(bumped)
    problems = gen.dockerfile_problems(bumped, app_json)
    assert any("org.opencontainers.image.version" in p for p in problems)

    stale = tmp_path / "app.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(gen, "APP_JSON", stale)
    monkeypatch.setattr(gen, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(gen, "PKG_JSON", tmp_path / "pkg.json")
    assert gen.main(["--check"]) == 1


def test_pinned_version_parser(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# c\nMonai_Deploy.App-SDK == 4.0.0  # pinned\nholoscan-cu13==4.2.0\nfoo>=1\n")
    gen = generator()
    assert gen.pinned_version("monai-deploy-app-sdk", req) == "4.0.0"
    assert gen.pinned_version("holoscan_cu13", req) == "4.2.0"
    with pytest.raises(ValueError):
        gen.pinned_version("foo", req)
