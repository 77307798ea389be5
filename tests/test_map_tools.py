"""map/tools.sh (the image's /var/holoscan/tools entrypoint) with its root paths pointed at a temp folder."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "map" / "tools.sh"

# The fake application: reports its argv, cwd, stack limit and environment, then exits as asked.
FAKE_APP = """\
import json, os, resource, sys, time
report = {
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "stack_soft": resource.getrlimit(resource.RLIMIT_STACK)[0],
    "env": {k: v for k, v in os.environ.items() if k.startswith(("HOLOSCAN_", "NSN2N_"))},
}
with open(os.environ["FAKE_APP_REPORT"], "w") as f:
    json.dump(report, f)
if os.environ.get("FAKE_APP_SLEEP"):
    time.sleep(float(os.environ["FAKE_APP_SLEEP"]))
sys.exit(int(os.environ.get("FAKE_APP_EXIT", "0")))
"""


@dataclass
class MapRoot:
    """A temporary folder laid out like the image, and the environment pointing tools.sh at it."""

    root: Path
    env: dict[str, str]

    def run(self, *args: str, extra_env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Execute tools.sh with *args* (as the container's ENTRYPOINT would)."""
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(
            [str(TOOLS), *args],
            env=env,
            cwd=self.root / "var/holoscan",
            capture_output=True,
            text=True,
            timeout=60,
            **kwargs,
        )


@pytest.fixture
def map_root(tmp_path: Path) -> MapRoot:
    root = tmp_path / "root"
    app_dir = root / "opt/holoscan/app"
    app_dir.mkdir(parents=True)
    (app_dir / "__main__.py").write_text(FAKE_APP, encoding="utf-8")
    (app_dir / "operators").mkdir()
    (app_dir / "operators" / "__init__.py").write_text("", encoding="utf-8")
    (root / "opt/holoscan/models/demo").mkdir(parents=True)
    (root / "opt/holoscan/models/demo/model.ts").write_bytes(b"model")
    (root / "opt/holoscan/docs").mkdir(parents=True)
    (root / "opt/holoscan/docs/README.md").write_text("# readme\n", encoding="utf-8")
    (root / "etc/holoscan").mkdir(parents=True)
    manifest = json.loads((REPO / "map/app.json").read_text(encoding="utf-8"))
    # Same manifest, but the command runs this interpreter on the temp app folder.
    manifest["command"] = json.dumps([sys.executable, str(app_dir)])
    (root / "etc/holoscan/app.json").write_text(json.dumps(manifest, indent=4), encoding="utf-8")
    shutil.copy(REPO / "map/pkg.json", root / "etc/holoscan/pkg.json")
    for sub in ("input", "output", "logs"):
        (root / "var/holoscan" / sub).mkdir(parents=True)
    shutil.copy(REPO / "app.yaml", root / "var/holoscan/app.yaml")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOLOSCAN_", "NSN2N_"))}
    env.update(
        {
            "HOLOSCAN_APPLICATION": str(app_dir),
            "HOLOSCAN_APP_MANIFEST_PATH": str(root / "etc/holoscan/app.json"),
            "HOLOSCAN_PKG_MANIFEST_PATH": str(root / "etc/holoscan/pkg.json"),
            "HOLOSCAN_CONFIG_PATH": str(root / "var/holoscan/app.yaml"),
            "HOLOSCAN_MODEL_PATH": str(root / "opt/holoscan/models"),
            "HOLOSCAN_DOCS_PATH": str(root / "opt/holoscan/docs"),
            "HOLOSCAN_INPUT_PATH": str(root / "var/holoscan/input"),
            "HOLOSCAN_OUTPUT_PATH": str(root / "var/holoscan/output"),
            "HOLOSCAN_WORKDIR": str(root / "var/holoscan"),
            "HOLOSCAN_EXPORT_ROOT": str(root / "var/run/holoscan/export"),
            "FAKE_APP_REPORT": str(tmp_path / "report.json"),
        }
    )
    return MapRoot(root, env)


def _sections(stdout: str) -> dict[str, object]:
    """Split `show` output into {"app.json": obj, "pkg.json": obj}."""
    out: dict[str, object] = {}
    name, buf = None, []
    for line in [*stdout.splitlines(), "=== end.json ==="]:
        if line.startswith("===") and line.rstrip("= ").endswith(".json"):
            if name:
                out[name] = json.loads("\n".join(buf))
            name, buf = line.strip("= "), []
        else:
            buf.append(line)
    return out


def test_show_prints_both_manifests(map_root: MapRoot) -> None:
    result = map_root.run("show")
    assert result.returncode == 0, result.stderr
    sections = _sections(result.stdout)
    assert sections["app.json"] == json.loads((map_root.root / "etc/holoscan/app.json").read_text())
    assert sections["pkg.json"] == json.loads((REPO / "map/pkg.json").read_text())


@pytest.mark.parametrize("which", ["app", "pkg"])
def test_show_one_manifest(map_root: MapRoot, which: str) -> None:
    result = map_root.run("show", which)
    assert result.returncode == 0, result.stderr
    assert list(_sections(result.stdout)) == [f"{which}.json"]


def test_show_rejects_unknown_manifest_and_reports_missing_ones(map_root: MapRoot) -> None:
    assert map_root.run("show", "bogus").returncode == 2
    (map_root.root / "etc/holoscan/pkg.json").unlink()
    result = map_root.run("show", "pkg")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_show_works_without_python_using_jq_or_cat(map_root: MapRoot, tmp_path: Path) -> None:
    """With neither python3 nor jq on PATH the manifest is still printed (cat)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "cat", "date", "dirname", "grep", "sort"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    result = subprocess.run(
        ["bash", str(TOOLS), "show", "pkg"],
        env={**map_root.env, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert _sections(result.stdout)["pkg.json"] == json.loads((REPO / "map/pkg.json").read_text())


def test_env_prints_map_and_parameter_variables_sorted(map_root: MapRoot) -> None:
    result = map_root.run("env", extra_env={"NSN2N_MAX_STEPS": "20", "UNRELATED_VAR": "x"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == sorted(lines)
    keys = {line.split("=", 1)[0] for line in lines}
    assert {"HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH", "HOLOSCAN_DOCS", "HOLOSCAN_LOGS_PATH"} <= keys
    assert "NSN2N_MAX_STEPS=20" in lines
    assert "UNRELATED_VAR" not in keys and "PATH" not in keys


def test_help(map_root: MapRoot) -> None:
    result = map_root.run("help")
    assert result.returncode == 0
    for word in ("show", "env", "extract", "/var/holoscan/tools", "NSN2N_"):
        assert word in result.stdout


def test_extract_everything_when_only_the_export_root_is_mounted(map_root: MapRoot) -> None:
    export = Path(map_root.env["HOLOSCAN_EXPORT_ROOT"])
    export.mkdir(parents=True)
    result = map_root.run("extract")
    assert result.returncode == 0, result.stderr
    assert (export / "app/__main__.py").read_text() == FAKE_APP
    assert (export / "app/operators/__init__.py").is_file()
    assert sorted(p.name for p in (export / "config").iterdir()) == ["app.json", "app.yaml", "pkg.json"]
    assert (export / "config/app.yaml").read_text() == (REPO / "app.yaml").read_text()
    assert (export / "models/demo/model.ts").read_bytes() == b"model"
    assert (export / "docs/README.md").is_file()


def test_extract_only_the_mounted_parts(map_root: MapRoot) -> None:
    export = Path(map_root.env["HOLOSCAN_EXPORT_ROOT"])
    (export / "config").mkdir(parents=True)
    (export / "docs").mkdir()
    result = map_root.run("extract")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in export.iterdir()) == ["config", "docs"]
    assert (export / "config/pkg.json").is_file() and (export / "docs/README.md").is_file()


def test_extract_without_a_mount_fails(map_root: MapRoot) -> None:
    result = map_root.run("extract")
    assert result.returncode == 1
    assert "no volume mounted" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_extract_into_an_unwritable_mount_fails(map_root: MapRoot) -> None:
    export = Path(map_root.env["HOLOSCAN_EXPORT_ROOT"])
    (export / "app").mkdir(parents=True)
    (export / "app").chmod(0o555)
    try:
        result = map_root.run("extract")
    finally:
        (export / "app").chmod(0o755)
    assert result.returncode == 1 and "cannot write" in result.stderr


def test_default_runs_the_app_json_command_with_arguments_and_exit_code(map_root: MapRoot, tmp_path: Path) -> None:
    result = map_root.run("-l", "DEBUG", "an arg with spaces", extra_env={"FAKE_APP_EXIT": "3"})
    assert result.returncode == 3, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["argv"] == ["-l", "DEBUG", "an arg with spaces"]
    assert report["cwd"] == str(map_root.root / "var/holoscan")
    assert report["env"]["HOLOSCAN_INPUT_PATH"] == map_root.env["HOLOSCAN_INPUT_PATH"]
    assert "application exited with 3" in result.stderr

    assert map_root.run(extra_env={"FAKE_APP_EXIT": "0"}).returncode == 0
    assert json.loads((tmp_path / "report.json").read_text())["argv"] == []


def test_default_command_is_the_real_app_json_command(map_root: MapRoot, tmp_path: Path) -> None:
    """With the committed app.json, tools runs `python3 /opt/holoscan/app` (python3 found on PATH)."""
    shutil.copy(REPO / "map/app.json", map_root.root / "etc/holoscan/app.json")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "python3.log"
    shim = bin_dir / "python3"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "${1:-}" == /opt/holoscan/app ]]; then printf "%s\\n" "$@" > "$SHIM_LOG"; exit 5; fi\n'
        f'exec "{sys.executable}" "$@"\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)
    result = map_root.run("-l", "INFO", extra_env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SHIM_LOG": str(log)})
    assert result.returncode == 5, result.stderr
    assert log.read_text().splitlines() == ["/opt/holoscan/app", "-l", "INFO"]


def test_missing_manifest_fails(map_root: MapRoot) -> None:
    (map_root.root / "etc/holoscan/app.json").unlink()
    result = map_root.run()
    assert result.returncode == 1 and "not found" in result.stderr


def test_sigterm_reaches_the_application(map_root: MapRoot, tmp_path: Path) -> None:
    """`docker stop` signals PID 1 (tools); the application must get it and the container end promptly."""
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [str(TOOLS)],
        env={**map_root.env, "FAKE_APP_SLEEP": "60"},
        cwd=map_root.root / "var/holoscan",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert report.exists(), "fake application did not start"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        assert rc == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_stack_limit_is_raised_for_holoscan(map_root: MapRoot, tmp_path: Path) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if hard != resource.RLIM_INFINITY and hard < 32 * 1024 * 1024:
        pytest.skip("hard stack limit below 32 MiB here")

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (8 * 1024 * 1024, hard))

    result = map_root.run(preexec_fn=small_stack)
    assert result.returncode == 0, result.stderr
    stack = json.loads((tmp_path / "report.json").read_text())["stack_soft"]
    assert stack == resource.RLIM_INFINITY or stack >= 32 * 1024 * 1024
