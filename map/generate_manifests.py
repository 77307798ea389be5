#!/usr/bin/env python3
"""Generate the MAP manifests ``map/app.json`` and ``map/pkg.json`` from ``app.yaml``.

The MONAI Application Package (MAP) specification 1.0 requires two manifests in the image:
``/etc/holoscan/app.json`` (how to run the application) and ``/etc/holoscan/pkg.json`` (what the package
holds and needs). ``monai-deploy package`` (holoscan-cli 4.2.0) writes them while it builds; we build the
image from a hand-written ``Dockerfile`` instead, so this script writes the same two files, with the
same fields and layout, from the single sources of truth:

* ``app.yaml``: ``application.version``, ``application.input-formats``/``output-formats`` (falling back to
  the camelCase spellings), and ``resources`` (copied verbatim into pkg.json, as the packager does);
* ``requirements.txt``: the pinned ``monai-deploy-app-sdk`` (app.json ``sdkVersion``) and ``holoscan-cu13``
  (``HOLOSCAN_VERSION``) versions.

Usage::

    python map/generate_manifests.py          # rewrite map/app.json and map/pkg.json
    python map/generate_manifests.py --check  # exit 1 if they are stale or disagree with the Dockerfile

``--check`` also verifies that the Dockerfile's ``ENV HOLOSCAN_*`` values equal app.json ``environment`` and
that its OCI/MAP labels carry the app.yaml title/version and the pinned SDK versions. The helpers
(:func:`parse_dockerfile`, :func:`dockerfile_env`, :func:`dockerfile_labels`) are reused by the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_YAML = REPO_ROOT / "app.yaml"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
DOCKERFILE = REPO_ROOT / "Dockerfile"
APP_JSON = REPO_ROOT / "map" / "app.json"
PKG_JSON = REPO_ROOT / "map" / "pkg.json"

#: MAP spec version written into both manifests (``apiVersion``).
API_VERSION = "1.0.0"
#: MAP paths (spec 1.0, identical to what holoscan-cli 4.2.0 generates).
WORKING_DIRECTORY = "/var/holoscan"
APPLICATION_ROOT = "/opt/holoscan/app"
MODEL_ROOT = "/opt/holoscan/models"
DOCS_ROOT = "/opt/holoscan/docs"
#: ``input.path``/``output.path`` are relative to ``workingDirectory`` (spec 1.0).
INPUT_DIR = "input/"
OUTPUT_DIR = "output/"
#: The application runs as ``python3 /opt/holoscan/app`` (a folder with ``__main__.py``: "PythonModule").
COMMAND: list[str] = ["python3", APPLICATION_ROOT]
#: 0 = no timeout (the host's own task timeout applies; training time is capped by ``denoise.time_budget_s``).
TIMEOUT_S = 0
SDK = "monai-deploy"
PLATFORM_CONFIG = "dgpu"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction after joining continuation lines."""

    keyword: str
    """Upper-case instruction name, e.g. ``COPY``."""
    args: str
    """Everything after the keyword, continuation lines joined with a space."""
    line: int
    """1-based line number where the instruction starts."""


def load_app_yaml(path: Path = APP_YAML) -> dict[str, Any]:
    """Return the parsed ``app.yaml``."""
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or "application" not in data or "resources" not in data:
        raise ValueError(f"{path}: needs top-level 'application' and 'resources' sections")
    return data


def pinned_version(package: str, path: Path = REQUIREMENTS) -> str:
    """Return the ``==`` pin of *package* in a requirements file (raises if it is not pinned)."""
    wanted = re.sub(r"[-_.]+", "-", package).lower()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
        if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == wanted:
            return m.group(2)
    raise ValueError(f"{path}: no '{package}==<version>' pin")


def holoscan_environment(holoscan_version: str) -> dict[str, str]:
    """All ``HOLOSCAN_*`` variables of the MAP, as in the Dockerfile ``ENV`` and app.json ``environment``.

    The spec's table names ``HOLOSCAN_DOCS``/``HOLOSCAN_LOGS``; holoscan-cli writes ``*_PATH``: both are set.
    """
    return {
        "HOLOSCAN_APPLICATION": APPLICATION_ROOT,
        "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
        "HOLOSCAN_CONFIG_PATH": f"{WORKING_DIRECTORY}/app.yaml",
        "HOLOSCAN_DOCS": DOCS_ROOT,
        "HOLOSCAN_DOCS_PATH": DOCS_ROOT,
        "HOLOSCAN_INPUT_PATH": f"{WORKING_DIRECTORY}/{INPUT_DIR.rstrip('/')}",
        "HOLOSCAN_LOGS": f"{WORKING_DIRECTORY}/logs",
        "HOLOSCAN_LOGS_PATH": f"{WORKING_DIRECTORY}/logs",
        "HOLOSCAN_MODEL_PATH": MODEL_ROOT,
        "HOLOSCAN_OUTPUT_PATH": f"{WORKING_DIRECTORY}/{OUTPUT_DIR.rstrip('/')}",
        "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
        "HOLOSCAN_TIMEOUT": str(TIMEOUT_S),
        "HOLOSCAN_VERSION": holoscan_version,
        "HOLOSCAN_WORKDIR": WORKING_DIRECTORY,
    }


def _formats(application: dict[str, Any], kind: str) -> list[str]:
    """``input``/``output`` formats: kebab-case key (what holoscan-cli reads), else camelCase, else file."""
    value = application.get(f"{kind}-formats", application.get(f"{kind}Formats", ["file"]))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"app.yaml application.{kind}-formats must be a list of strings, got {value!r}")
    return value


def build_manifests(app_yaml: dict[str, Any], requirements: Path = REQUIREMENTS) -> tuple[dict, dict]:
    """Return ``(app_json, pkg_json)`` for the given parsed app.yaml."""
    application = app_yaml["application"]
    version = str(application["version"])
    sdk_version = pinned_version("monai-deploy-app-sdk", requirements)
    holoscan_version = pinned_version("holoscan-cu13", requirements)
    app_json = {
        "apiVersion": API_VERSION,
        # A *string* holding a JSON array, exactly like holoscan-cli writes it (tools: `.command | fromjson`).
        "command": json.dumps(COMMAND),
        "environment": holoscan_environment(holoscan_version),
        "input": {"path": INPUT_DIR, "formats": _formats(application, "input")},
        "liveness": None,
        "output": {"path": OUTPUT_DIR, "formats": _formats(application, "output")},
        "readiness": None,
        "sdk": SDK,
        "sdkVersion": sdk_version,
        "timeout": TIMEOUT_S,
        "version": version,
        "workingDirectory": WORKING_DIRECTORY,
    }
    pkg_json = {
        "apiVersion": API_VERSION,
        "applicationRoot": APPLICATION_ROOT,
        "modelRoot": MODEL_ROOT,
        # Self-supervised: no model is baked in (a trained model can be mounted at run time with -m).
        "models": {},
        "resources": app_yaml["resources"],
        "version": version,
        "platformConfig": PLATFORM_CONFIG,
    }
    return app_json, pkg_json


def render(manifest: dict) -> str:
    """Serialise a manifest the way it is committed (stable key order, 4-space indent, final newline)."""
    return json.dumps(manifest, indent=4) + "\n"


# --------------------------------------------------------------------------------------------- Dockerfile


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions (joins ``\\`` continuations, drops comments and blank lines).

    Enough for this project's Dockerfile: no heredocs, default escape character.
    """
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by BuildKit
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    if buf:
        raise ValueError("Dockerfile ends inside a continued instruction")
    return instructions


def _key_values(args: str) -> dict[str, str]:
    """Parse ``KEY=VALUE KEY2="V 2"`` (ENV/LABEL syntax) into a dict."""
    out: dict[str, str] = {}
    for token in shlex.split(args, posix=True):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"only the KEY=VALUE form is supported, got {token!r}")
        out[key] = value
    return out


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """All ``ENV`` assignments (later ones win), values unexpanded."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            env.update(_key_values(ins.args))
    return env


def dockerfile_labels(instructions: list[Instruction]) -> dict[str, str]:
    """All ``LABEL`` assignments (later ones win), values unexpanded."""
    labels: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "LABEL":
            labels.update(_key_values(ins.args))
    return labels


def dockerfile_problems(app_yaml: dict[str, Any], app_json: dict, dockerfile: Path = DOCKERFILE) -> list[str]:
    """Return every disagreement between the Dockerfile and the manifests/app.yaml (empty = consistent)."""
    problems: list[str] = []
    instructions = parse_dockerfile(dockerfile.read_text(encoding="utf-8"))
    env = {k: v for k, v in dockerfile_env(instructions).items() if k.startswith("HOLOSCAN_")}
    if env != app_json["environment"]:
        problems.append(
            f"Dockerfile ENV HOLOSCAN_* {json.dumps(env, sort_keys=True)} != app.json environment "
            f"{json.dumps(app_json['environment'], sort_keys=True)}"
        )
    labels = dockerfile_labels(instructions)
    expected = {
        "org.opencontainers.image.title": str(app_yaml["application"]["title"]),
        "org.opencontainers.image.version": app_json["version"],
        "org.monai.deploy.app-sdk": app_json["sdkVersion"],
        "org.nvidia.holoscan": app_json["environment"]["HOLOSCAN_VERSION"],
    }
    for key, want in expected.items():
        if labels.get(key) != want:
            problems.append(f"Dockerfile LABEL {key}={labels.get(key)!r}, expected {want!r}")
    workdirs = [ins.args for ins in instructions if ins.keyword == "WORKDIR"]
    if not workdirs or workdirs[-1] != app_json["workingDirectory"]:
        problems.append(f"Dockerfile final WORKDIR {workdirs[-1:]} != {app_json['workingDirectory']!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: write the manifests, or with ``--check`` report whether they are up to date."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if anything is stale")
    args = parser.parse_args(argv)

    app_yaml = load_app_yaml()
    app_json, pkg_json = build_manifests(app_yaml)
    wanted = {APP_JSON: render(app_json), PKG_JSON: render(pkg_json)}

    if not args.check:
        for path, text in wanted.items():
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0

    problems = [
        f"{path.relative_to(REPO_ROOT)} is stale: run `python map/generate_manifests.py`"
        for path, text in wanted.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    problems += dockerfile_problems(app_yaml, app_json)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print("MAP manifests and Dockerfile are up to date with app.yaml and requirements.txt")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
