"""``pip install .`` gives a console command ``nsn2n-denoise`` that behaves exactly like ``python app``.

Both run :func:`app.main.cli`. The slow test builds the wheel, installs it (``--no-deps``) into a fresh
virtual environment whose third-party packages come from this one (a ``.pth`` file), and runs the command
outside the checkout: it must find the packages and the installed app.yaml, and write the derived series.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from app.packages import APPLICATION_PACKAGES
from tests.app_runner import FAST_ENV, _raise_stack_limit
from tests.dicom_factory import add_correlated_noise, make_phantom, write_ct_series

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_command_and_python_app_run_the_same_function() -> None:
    assert PYPROJECT["project"]["scripts"] == {"nsn2n-denoise": "app.main:cli"}
    tree = ast.parse((REPO / "app" / "__main__.py").read_text(encoding="utf-8"))
    guarded = [n for n in tree.body if isinstance(n, ast.If)]
    calls = [ast.unparse(c) for n in guarded for c in ast.walk(n) if isinstance(c, ast.Call)]
    assert calls == ["cli()"], f"app/__main__.py must only call cli(), found {calls}"


def test_the_wheel_holds_the_application_packages_and_the_pins() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(APPLICATION_PACKAGES)
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    assert setuptools["data-files"] == {"share/nsn2n-denoise": ["app.yaml"]}
    for package, patterns in setuptools["package-data"].items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"{package}/{pattern} matches nothing"


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, preexec_fn=_raise_stack_limit
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns the path of its ``nsn2n-denoise`` command."""
    root = tmp_path_factory.mktemp("console")
    source = root / "source"  # setuptools writes build/ and *.egg-info beside the sources: not into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "app.yaml"):
        shutil.copy(REPO / name, source / name)
    for package in APPLICATION_PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = root / "wheels"
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        source,
        dict(os.environ),
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("nsn2n_denoise-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch, holoscan, ... from here
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    install = _run([*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)], root, dict(os.environ))
    assert install.returncode == 0, install.stdout + install.stderr
    assert (venv / "share" / "nsn2n-denoise" / "app.yaml").is_file()
    return venv / "bin" / "nsn2n-denoise"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSN2N_", "HOLOSCAN_", "PYTHON"))}
    return env | FAST_ENV | {"NSN2N_QA_REPORT": "false"}


@pytest.mark.slow
def test_the_command_fails_like_python_app(installed: Path, tmp_path: Path) -> None:
    args = ["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]
    command = _run([str(installed), *args], tmp_path, _env())
    checkout = _run([sys.executable, str(REPO / "app"), *args], tmp_path, _env())
    assert command.returncode == checkout.returncode == 3
    assert command.stderr.splitlines()[-1].split(" ", 2)[2] == checkout.stderr.splitlines()[-1].split(" ", 2)[2]


@pytest.mark.slow
def test_the_command_denoises_outside_the_checkout_with_the_installed_app_yaml(installed: Path, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "in", add_correlated_noise(make_phantom((6, 40, 40), seed=2), 30.0, seed=1))
    result = _run([str(installed), "-i", "in", "-o", "out", "-w", "work"], tmp_path, _env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 6
    (record,) = (tmp_path / "work").rglob("run.json")
    parameters = json.loads(record.read_text(encoding="utf-8"))["parameters"]
    assert parameters["time_budget_s"] == 900, "app.yaml's time_budget_s (the code default is none)"
