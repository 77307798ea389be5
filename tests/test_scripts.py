"""The scripts of the README's commands: the demo leaves the checkout clean, the image build borrows the
host's pip configuration read-only, and every script is shellcheck-clean.

The demo itself runs in CI through scripts/check-runtime-venv.sh (which also compares ``git status`` before
and after it); the tests here check the scripts' text, so a change that makes them write into a tracked
path fails in seconds.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


def _ignored(path: str) -> bool:
    """Whether git ignores ``path`` (so writing there never changes ``git status``)."""
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", "--", path], cwd=REPO).returncode == 0


def _commands(script: Path) -> list[list[str]]:
    """The script's simple commands as tokens (comments and continuation lines joined)."""
    text = re.sub(r"\\\n", " ", script.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                out.append(shlex.split(line, comments=True))
            except ValueError:
                continue
    return out


def test_demo_writes_only_into_ignored_folders() -> None:
    demo = SCRIPTS / "demo.sh"
    text = demo.read_text(encoding="utf-8")
    writes: list[str] = []
    for tokens in _commands(demo):
        for flag in ("-o", "-w"):
            if flag in tokens[:-1] and any(t.endswith("python") for t in tokens):
                writes.append(tokens[tokens.index(flag) + 1])
        if tokens[:2] == ["rm", "-rf"]:
            writes += tokens[2:]
        assert tokens[0] not in ("cp", "mv", "install", "tee", "ln"), f"demo.sh copies or moves files: {tokens}"
    assert {"output/sample", "work/sample"} <= set(writes), writes
    for path in writes:
        assert _ignored(f"{path}/x.dcm"), f"demo.sh writes into {path}, which git tracks"
    redirects = re.findall(r"(?<![0-9&])>{1,2}\s*([^\s;&|]+)", text)
    assert all(target == "/dev/null" for target in redirects), redirects
    assert "docs/images" not in text, "refreshing the README image is scripts/refresh-readme-image.sh's job"


def test_refreshing_the_readme_image_is_its_own_script() -> None:
    script = (SCRIPTS / "refresh-readme-image.sh").read_text(encoding="utf-8")
    assert "docs/images/sample-qa-montage.png" in script
    assert (REPO / "docs/images/sample-qa-montage.png").is_file()
    assert not _ignored("docs/images/sample-qa-montage.png")


def test_the_runtime_check_and_the_image_test_are_part_of_the_test_command() -> None:
    commands = [tokens for tokens in _commands(SCRIPTS / "test.sh")]
    flat = [" ".join(tokens) for tokens in commands]
    assert "scripts/check-runtime-venv.sh" in flat
    assert any(line.startswith("scripts/test-image.sh") for line in flat)
    assert _ignored(".cache/runtime-venv/bin/python"), "the runtime-only venv lives in a git-ignored folder"


@pytest.mark.parametrize("script", [*sorted(p.name for p in SCRIPTS.glob("*.sh")), "../.ci/run"])
def test_scripts_are_executable_and_shellcheck_clean(script: str) -> None:
    path = SCRIPTS / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian package 'shellcheck')")
    result = subprocess.run([shellcheck, "-x", str(path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------- host pip configuration


def _host_pip_config():
    spec = importlib.util.spec_from_file_location("host_pip_config", SCRIPTS / "host_pip_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_pip_paths_are_mounted_read_only_and_rewritten(tmp_path: Path) -> None:
    hpc = _host_pip_config()
    cert = tmp_path / "certs" / "bundle.crt"
    cert.parent.mkdir()
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    mounts = hpc.Mounts()
    assert hpc.translate("cert", str(cert), mounts) == "/run/host-pip/1-bundle.crt"
    assert hpc.translate("extra-index-url", f"file://{index} https://pypi.example/simple", mounts) == (
        "file:///run/host-pip/2-mirror/simple https://pypi.example/simple"
    )
    assert hpc.translate("find-links", str(wheels), mounts) == "/run/host-pip/3-wheels"
    assert hpc.translate("index-url", "https://pypi.org/simple", mounts) == "https://pypi.org/simple"
    assert hpc.translate("default-timeout", "180", mounts) == "180"
    assert hpc.translate("find-links", str(tmp_path / "absent"), mounts) == str(tmp_path / "absent")
    assert mounts.volumes() == [
        f"{cert}:/run/host-pip/1-bundle.crt:ro",
        f"{index.parent}:/run/host-pip/2-mirror:ro",
        f"{wheels}:/run/host-pip/3-wheels:ro",
    ]


def test_the_written_pip_conf_reflects_the_host_and_lies_outside_the_repository(tmp_path: Path) -> None:
    out = tmp_path / "pip"
    result = subprocess.run(
        ["python3", str(SCRIPTS / "host_pip_config.py"), str(out)], capture_output=True, text=True, check=True
    )
    volumes = result.stdout.splitlines()
    assert f"{out / 'pip.conf'}:/run/host-pip/pip.conf:ro" in volumes
    assert all(line.endswith(":ro") for line in volumes)
    assert not any(line.startswith(str(REPO)) for line in volumes)
    text = (out / "pip.conf").read_text(encoding="utf-8")
    for volume in volumes:
        host, _inside, _ro = volume.rsplit(":", 2)
        assert host not in text or host.startswith(("http", "/run/host-pip")), f"{host} not rewritten"
        assert Path(host).exists()
