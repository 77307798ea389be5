"""``-l LEVEL`` and ``HOLOSCAN_LOG_LEVEL`` govern the application's own loggers.

The rule (app/log_level.py): ``-l`` wins, then ``HOLOSCAN_LOG_LEVEL``, then INFO; the level is set on every
package of ``app.packages.APPLICATION_PACKAGES``, and every module logs through
``logging.getLogger(__name__)`` so that each of its loggers is below one of them. The end-to-end tests run
the real entry point (``app.main.main``) in a subprocess on a tiny CT series; an internal error is
injected by making pydicom's ``Dataset.save_as`` raise (after training, so progress lines come first).
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.log_level import LogLevel, export_to_holoscan, resolve_log_level, sdk_argv
from app.packages import APPLICATION_PACKAGES
from tests.app_runner import FAST_ENV, _raise_stack_limit
from tests.dicom_factory import add_correlated_noise, make_phantom, write_ct_series

REPO = Path(__file__).resolve().parent.parent
PROGRESS = "train: step "
INJECTED = "injected failure for the log-level test"
# Runs app.main.main like `python app` does, optionally with Dataset.save_as broken (an internal error).
RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "inject":
    import pydicom.dataset

    def save_as(self, *args, **kwargs):
        raise RuntimeError("{injected}")

    pydicom.dataset.Dataset.save_as = save_as
from app.main import main

sys.exit(main([sys.executable, "app", *sys.argv[3:]]))
""".replace("{injected}", INJECTED)


# ------------------------------------------------------------------------------------------ logger names


def _module_level_loggers(path: Path) -> list[tuple[int, str]]:
    """``(line, source)`` of every ``logging.getLogger(...)`` call whose argument is not ``__name__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "getLogger"
            and node.args
            and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "__name__")
        ):
            bad.append((node.lineno, ast.unparse(node)))
    return bad


def test_every_module_logs_under_its_own_name() -> None:
    """A logger named anything but ``__name__`` escapes the level set on the package loggers.
    (app/log_level.py sets levels on other packages by name: that is the one exception.)"""
    problems = []
    for package in APPLICATION_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "app" / "log_level.py":
                continue
            problems += [f"{path.relative_to(REPO)}:{line}: {call}" for line, call in _module_level_loggers(path)]
    assert not problems, "use logging.getLogger(__name__):\n" + "\n".join(problems)


def test_the_logger_name_check_finds_a_fixed_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('import logging\nlog = logging.getLogger("nsn2n")\nok = logging.getLogger(__name__)\n')
    assert _module_level_loggers(module) == [(2, "logging.getLogger('nsn2n')")]


# ------------------------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("argv", "env", "level", "source"),
    [
        (["app"], {}, logging.INFO, "default"),
        (["app", "-l", "DEBUG"], {}, logging.DEBUG, "-l"),
        (["app", "-l", "warning", "-i", "x"], {"HOLOSCAN_LOG_LEVEL": "DEBUG"}, logging.WARNING, "-l"),
        (["app", "--log-level=ERROR"], {}, logging.ERROR, "-l"),
        (["app", "-lWARN"], {}, logging.WARNING, "-l"),
        (["app"], {"HOLOSCAN_LOG_LEVEL": "warn"}, logging.WARNING, "HOLOSCAN_LOG_LEVEL"),
        (["app"], {"HOLOSCAN_LOG_LEVEL": "TRACE"}, logging.DEBUG, "HOLOSCAN_LOG_LEVEL"),
        (["app"], {"HOLOSCAN_LOG_LEVEL": "OFF"}, logging.CRITICAL + 1, "HOLOSCAN_LOG_LEVEL"),
    ],
)
def test_flag_then_environment_then_info(argv: list[str], env: dict[str, str], level: int, source: str) -> None:
    resolved = resolve_log_level(["python", *argv], env)
    assert (resolved.level, resolved.source, resolved.ignored) == (level, source, None)


def test_unknown_values() -> None:
    assert resolve_log_level(["python", "app"], {"HOLOSCAN_LOG_LEVEL": "loud"}) == LogLevel(
        logging.INFO, "INFO", "default", ignored="loud"
    )
    # An unknown -l value is the SDK parser's to report (usage error, exit code 2): passed on unchanged.
    resolved = resolve_log_level(["python", "app", "-l", "LOUD"], {"HOLOSCAN_LOG_LEVEL": "DEBUG"})
    assert resolved.source == "default"
    assert sdk_argv(["python", "app", "-l", "LOUD"], resolved) == ["python", "app", "-l", "LOUD"]


def test_a_flag_sets_holoscans_own_level_too() -> None:
    environ = {"HOLOSCAN_LOG_LEVEL": "DEBUG"}
    export_to_holoscan(resolve_log_level(["p", "app", "-l", "warning"], environ), environ)
    assert environ == {"HOLOSCAN_LOG_LEVEL": "WARN"}
    environ = {"HOLOSCAN_LOG_LEVEL": "TRACE"}
    export_to_holoscan(resolve_log_level(["p", "app"], environ), environ)
    assert environ == {"HOLOSCAN_LOG_LEVEL": "TRACE"}, "Holoscan keeps its own variable"
    environ = {}
    export_to_holoscan(resolve_log_level(["p", "app"], environ), environ)
    assert environ == {}


def test_the_sdk_gets_the_level_in_its_own_spelling() -> None:
    """monai-deploy-app-sdk 4.0.0 accepts DEBUG, INFO, WARN, ERROR, CRITICAL only."""
    for argv, env, expected in [
        (["p", "app", "-l", "WARNING", "-i", "in"], {}, ["p", "app", "-l", "WARN", "-i", "in"]),
        (["p", "app", "--log-level=warning"], {}, ["p", "app", "--log-level=WARN"]),
        (["p", "app", "-lwarning"], {}, ["p", "app", "-lWARN"]),
        (["p", "app", "-i", "in"], {"HOLOSCAN_LOG_LEVEL": "TRACE"}, ["p", "app", "-i", "in", "-l", "DEBUG"]),
        (["p", "app", "-i", "in"], {}, ["p", "app", "-i", "in"]),
    ]:
        assert sdk_argv(argv, resolve_log_level(argv, env)) == expected


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("log_levels") / "in"
    clean = make_phantom((8, 48, 48), seed=3)
    write_ct_series(folder, add_correlated_noise(clean, 30.0, seed=5), series_number=7)
    return folder


def run_main(
    tiny_series: Path, tmp_path: Path, *args: str, inject: bool = False, extra_env: dict[str, str] | None = None
) -> tuple[int, str, Path]:
    """``main(["app", -i, -o, -w, *args])`` in a subprocess; returns (exit code, log, output folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSN2N_", "HOLOSCAN_"))}
    env.update(FAST_ENV, PYTHONUNBUFFERED="1", NSN2N_QA_REPORT="false", **(extra_env or {}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", RUNNER, str(REPO), "inject" if inject else "-"]
    cmd += ["-i", str(tiny_series), "-o", str(out), "-w", str(tmp_path / "work"), *args]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, preexec_fn=_raise_stack_limit
    )
    return proc.returncode, proc.stdout + proc.stderr, out


@pytest.mark.slow
def test_debug_shows_the_traceback_of_an_internal_error(tiny_series: Path, tmp_path: Path) -> None:
    code, log, out = run_main(tiny_series, tmp_path, "-l", "DEBUG", inject=True)
    assert code == 1, log
    assert "Traceback (most recent call last)" in log and f"RuntimeError: {INJECTED}" in log, log
    assert "in save_as" in log, "the traceback reaches the failing call"
    assert not any(out.rglob("*.dcm")), "an internal error leaves no output"


@pytest.mark.slow
def test_info_shows_progress_and_one_line_for_an_internal_error(tiny_series: Path, tmp_path: Path) -> None:
    code, log, _ = run_main(tiny_series, tmp_path, inject=True)
    assert code == 1, log
    assert PROGRESS in log, "progress lines at INFO"
    assert "Traceback" not in log, log
    last = [line for line in log.splitlines() if "failed (exit code 1)" in line]
    assert last and INJECTED in last[-1], log


@pytest.mark.slow
def test_warning_hides_progress_lines(tiny_series: Path, tmp_path: Path) -> None:
    code, log, out = run_main(tiny_series, tmp_path, "-l", "WARNING")
    assert code == 0, log
    assert len(list(out.rglob("*.dcm"))) == 8, "the run itself is unchanged"
    assert PROGRESS not in log and "train: done" not in log, log
    info = [line for line in log.splitlines() if " INFO " in line or "[INFO]" in line or "[info]" in line]
    assert not info, "no INFO line of the application, the SDK or Holoscan:\n" + "\n".join(info)


@pytest.mark.slow
def test_holoscan_log_level_applies_when_there_is_no_flag(tiny_series: Path, tmp_path: Path) -> None:
    code, log, out = run_main(tiny_series, tmp_path, extra_env={"HOLOSCAN_LOG_LEVEL": "ERROR"})
    assert code == 0, log
    assert len(list(out.rglob("*.dcm"))) == 8
    assert PROGRESS not in log, log
    app_info = [line for line in log.splitlines() if " INFO " in line or "[INFO]" in line]
    assert not app_info, "\n".join(app_info)
