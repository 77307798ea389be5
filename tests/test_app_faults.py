"""Faults a hospital host meets, with the application running as a real process.

* a full disk (a small tmpfs mounted by the test when it runs as root; else the same fault injected into
  the writer's files), a read-only file system (the tmpfs remounted read-only during training), I/O and
  quota errors, a permission error, and the output folder removed during the run: exit code 4, one line
  naming the folder and the error in words, no stack trace, complete series written before stay;
* SIGTERM and SIGINT during training, during writing, and a run that does not stop by itself: exit code
  128 + N, one line ``stopped by signal ...; N series written, M not written``, nothing half-written;
* two runs writing into one output folder at the same time: two complete series.

Each asserts the exit code, the one-line message without "Traceback", the input unchanged and the output
complete-or-absent (every series folder complete, no temporary ``.partial-*`` folder beside or in it).

Faults that a test cannot cause for real are injected by starting the application through
:data:`RUNNER`, which replaces one function (the writer's ``open``, or the model's file write) before
calling ``app.main.main``, exactly as ``python app`` does. The permission error (EACCES) and the other
error numbers are checked without a process in tests/test_exit_status.py.

Each scenario (one or two application runs, with what the test does to them while they run) runs in a
module-scoped pool two at a time, as the hostile-input battery does; ``test_<scenario>`` asserts its
outcome. Selecting tests with ``-k`` runs only their scenarios.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.app_runner import FAST_ENV, REPO, _raise_stack_limit, folder_digest
from tests.dicom_factory import add_correlated_noise, make_phantom, write_ct_series

pytestmark = pytest.mark.slow

QUICK = {"NSN2N_MAX_STEPS": "2", "NSN2N_QA_REPORT": "false", "NSN2N_SAVE_MODEL": "false"}
#: Training that lasts 3 s whatever the machine: a signal sent when it starts lands in it.
LONG_TRAINING = {"NSN2N_MAX_STEPS": "100000", "NSN2N_TIME_BUDGET_S": "3"}
TRACEBACK = "Traceback"

#: ``python -c RUNNER REPO FAULT app-args...``: app.main.main with one fault injected (FAULT "-" for none).
#:   output:ERRNO:BYTES  every file written into the output fails with ERRNO once BYTES were written
#:                       (pydicom wraps the error, as for a real full disk)
#:   work:ERRNO          saving the model into the work folder fails with ERRNO
#:   slow-write:SECONDS  each output file waits SECONDS before it is written, after printing a marker
#: Stop signals are blocked first, as app.main.main does before numpy starts its threads.
RUNNER = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
repo, fault, *args = sys.argv[1:]
sys.path.insert(0, repo)
import builtins, errno, os, time
kind, _, spec = fault.partition(":")
if kind == "output":
    import dicom_series.writer
    name, _, limit = spec.partition(":")
    number, limit, written = getattr(errno, name), int(limit), [0]

    class FailingFile:
        def __init__(self, path, mode):
            self.fh = builtins.open(path, mode)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.fh.close()
        def write(self, data):
            if written[0] + len(data) > limit:
                raise OSError(number, os.strerror(number))
            written[0] += len(data)
            return self.fh.write(data)
        def __getattr__(self, name):
            return getattr(self.fh, name)

    dicom_series.writer.open = FailingFile
elif kind == "work":
    import nsn2n.api
    number = getattr(errno, spec)

    def failing_replace(path, data):
        raise OSError(number, os.strerror(number), str(path))

    nsn2n.api._replace_file = failing_replace
elif kind == "slow-write":
    import dicom_series.writer

    def slow_open(path, mode):
        print(f"FAULT writing {path}", file=sys.stderr, flush=True)
        time.sleep(float(spec))
        return builtins.open(path, mode)

    dicom_series.writer.open = slow_open
from app.main import main
sys.exit(main([sys.executable, "app", *args]))
"""


# --------------------------------------------------------------------------------------------------
# Inputs, runs and checks
# --------------------------------------------------------------------------------------------------


def study(folder: Path, shapes: list[tuple[int, int, int]]) -> list[str]:
    """CT series of one study in ``folder/a``, ``folder/b``... (processed in that order); their UIDs."""
    study_uid, uids = str(generate_uid()), []
    for k, shape in enumerate(shapes):
        uid = str(generate_uid())
        volume = add_correlated_noise(make_phantom(shape, seed=k), 20.0, seed=k)
        write_ct_series(folder / "abcdef"[k], volume, study_uid=study_uid, series_uid=uid, series_number=k + 1)
        uids.append(uid)
    return uids


class AppProcess:
    """The application in a subprocess whose log is read line by line while it runs."""

    def __init__(
        self,
        input_dir: Path,
        output: Path,
        work: Path,
        env: dict[str, str],
        fault: str | None,
        command: list[str] | None = None,
    ) -> None:
        """``python app -i input_dir -o output -w work`` (through :data:`RUNNER` with a ``fault``), or
        ``command`` as it is (the folders then come from ``env``)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NSN2N_", "HOLOSCAN_"))}
        full_env.update(FAST_ENV, PYTHONUNBUFFERED="1", **env)
        args = ["-i", str(input_dir), "-o", str(output), "-w", str(work)]
        if command is not None:
            cmd = command
        elif fault is None:
            cmd = [sys.executable, str(REPO / "app"), *args]
        else:
            cmd = [sys.executable, "-c", RUNNER, str(REPO), fault, *args]
        self.output = output
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_raise_stack_limit,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 180) -> None:
        """Until a log line matches ``pattern``; fails when the process ends first or the time is up."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(re.search(pattern, line) for line in self.lines):
                if self.proc.poll() is not None and not self._reader.is_alive():
                    pytest.fail(f"the application ended before {pattern!r}:\n{self.log[-4000:]}")
                if time.monotonic() > deadline:
                    self.proc.kill()
                    pytest.fail(f"no {pattern!r} within {timeout} s:\n{self.log[-4000:]}")
                self._changed.wait(0.2)

    def finish(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the application did not end within {timeout} s:\n{self.log[-4000:]}")
        self._reader.join(10)
        return code


def last_line(log: str, code: int) -> str:
    """The one ``failed (exit code N)`` or ``stopped by signal`` line (exactly one must exist)."""
    lines = [line for line in log.splitlines() if f"(exit code {code})" in line and "[ERROR]" in line]
    assert len(lines) == 1, f"expected one final line with exit code {code}:\n{log[-4000:]}"
    assert TRACEBACK not in log, f"a stack trace in the log:\n{log}"
    return lines[0]


def derived_series(output: Path) -> dict[str, list[int]]:
    """Source SeriesInstanceUID -> file counts of its derived series, after checking the output holds only
    series folders, each of one derived series with DICOM files, and nothing hidden or partial beside it."""
    leftovers = [p.name for p in output.parent.iterdir() if ".partial-" in p.name] if output.parent.is_dir() else []
    assert not leftovers, f"temporary folders beside the output: {leftovers}"
    if not output.exists():
        return {}
    found: dict[str, list[int]] = {}
    for folder in sorted(output.iterdir()):
        assert folder.is_dir() and not folder.name.startswith("."), f"unexpected entry in the output: {folder.name}"
        files = sorted(folder.iterdir())
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        source = {str(ds.ReferencedSeriesSequence[-1].SeriesInstanceUID) for ds in datasets}
        assert len(source) == 1 and {str(ds.SeriesInstanceUID) for ds in datasets} == {folder.name}
        found.setdefault(source.pop(), []).append(len(files))
    return found


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``mount_point`` when the test runs as root and may mount; yields whether."""
    mount_point.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)]
    mounted = _can_mount() and subprocess.run(command, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


# --------------------------------------------------------------------------------------------------
# Scenarios: each runs the application and does something to it; the tests below assert the outcome
# --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a scenario saw: the exit code, the log, the derived series found in the output (checked for
    completeness before any tmpfs is unmounted), the source series UIDs and whether the input stayed."""

    code: int
    log: str
    derived: dict[str, int]
    uids: list[str]
    input_unchanged: bool
    output: Path
    work: Path
    seconds_to_stop: float | None = None  # from the signal to the "stopped by signal" line
    seconds_to_exit: float | None = None
    notes: dict[str, object] = field(default_factory=dict)


SCENARIOS: dict[str, Callable[[Path], Outcome]] = {}


def scenario(function: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
    SCENARIOS[function.__name__] = function
    return function


def _two_series(root: Path) -> tuple[Path, list[str], dict[str, str]]:
    uids = study(root / "in", [(6, 32, 32), (6, 32, 32)])
    return root / "in", uids, folder_digest(root / "in")


def _outcome(app: AppProcess, code: int, folder: Path, uids: list[str], digest: dict[str, str], root: Path) -> Outcome:
    return Outcome(
        code, app.log, derived_series(app.output), uids, folder_digest(folder) == digest, app.output, root / "work"
    )


@scenario
def full_disk(root: Path) -> Outcome:
    """Series a (6 x 32 x 32, about 25 KB) fits on a 256 KiB tmpfs, series b (10 x 128 x 128, about 330 KB)
    does not. Not root: the same error injected after 100 KB."""
    uids = study(root / "in", [(6, 32, 32), (10, 128, 128)])
    digest = folder_digest(root / "in")
    with tmpfs(root / "disk", "256k") as mounted:
        app = AppProcess(
            root / "in", root / "disk" / "out", root / "work", QUICK, None if mounted else "output:ENOSPC:100000"
        )
        code = app.finish()
        return _outcome(app, code, root / "in", uids, digest, root)


def _injected(root: Path, fault: str) -> Outcome:
    folder, uids, digest = _two_series(root)
    app = AppProcess(folder, root / "out", root / "work", {**QUICK, "NSN2N_SAVE_MODEL": "true"}, fault)
    return _outcome(app, app.finish(), folder, uids, digest, root)


@scenario
def io_error_on_the_output(root: Path) -> Outcome:
    return _injected(root, "output:EIO:0")


@scenario
def quota_exceeded_in_the_work_folder(root: Path) -> Outcome:
    return _injected(root, "work:EDQUOT")


@scenario
def read_only_file_system_during_the_run(root: Path) -> Outcome:
    """The output's file system is remounted read-only while the first series trains (root); not root:
    EROFS injected into the writer."""
    folder, uids, digest = _two_series(root)
    with tmpfs(root / "disk", "4m") as mounted:
        env = {**QUICK, **LONG_TRAINING}
        app = AppProcess(folder, root / "disk" / "out", root / "work", env, None if mounted else "output:EROFS:0")
        app.wait_for("NS-N2N training on this series")
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(root / "disk")], check=True)
        return _outcome(app, app.finish(), folder, uids, digest, root)


@scenario
def output_folder_removed_during_the_run(root: Path) -> Outcome:
    folder, uids, digest = _two_series(root)
    app = AppProcess(folder, root / "out", root / "work", {**QUICK, **LONG_TRAINING}, None)
    app.wait_for("NS-N2N training on this series")
    shutil.rmtree(root / "out")
    return _outcome(app, app.finish(), folder, uids, digest, root)


def _signal_after(app: AppProcess, pattern: str, signal_number: int, timeout: float = 60) -> tuple[float, float]:
    """Send ``signal_number`` once ``pattern`` is in the log; seconds from the signal to the last log line
    (the run has stopped) and to the exit (Holoscan's teardown of its context takes a few seconds more)."""
    app.wait_for(pattern)
    sent = time.monotonic()
    app.proc.send_signal(signal_number)
    app.wait_for(r"stopped by signal \w+ \(exit code", timeout)
    stopped = time.monotonic() - sent
    app.finish(timeout)
    return stopped, time.monotonic() - sent


@scenario
def sigterm_during_training(root: Path) -> Outcome:
    """During the training of the second series of two (the first is written)."""
    folder, uids, digest = _two_series(root)
    app = AppProcess(folder, root / "out", root / "work", {**QUICK, **LONG_TRAINING}, None)
    app.wait_for(rf"series {re.escape(uids[1])} \(.*\): NS-N2N training on this series")
    time.sleep(0.5)  # into the training loop
    outcome_seconds = _signal_after(app, "NS-N2N training on this series", signal.SIGTERM)
    outcome = _outcome(app, app.proc.returncode, folder, uids, digest, root)
    outcome.seconds_to_stop, outcome.seconds_to_exit = outcome_seconds
    return outcome


@scenario
def sigint_in_strict_mode(root: Path) -> Outcome:
    folder, uids, digest = _two_series(root)
    env = {**QUICK, **LONG_TRAINING, "NSN2N_STRICT": "true"}
    app = AppProcess(folder, root / "out", root / "work", env, None)
    outcome_seconds = _signal_after(
        app, rf"series {re.escape(uids[1])} \(.*\): NS-N2N training on this series", signal.SIGINT
    )
    outcome = _outcome(app, app.proc.returncode, folder, uids, digest, root)
    outcome.seconds_to_stop, outcome.seconds_to_exit = outcome_seconds
    return outcome


@scenario
def sigterm_during_writing(root: Path) -> Outcome:
    """Each file of the derived series waits 0.5 s (injected): the signal lands between two files."""
    folder, uids, digest = _two_series(root)
    app = AppProcess(folder, root / "out", root / "work", QUICK, "slow-write:0.5")
    outcome_seconds = _signal_after(app, "FAULT writing .*00002.dcm", signal.SIGTERM)
    outcome = _outcome(app, app.proc.returncode, folder, uids, digest, root)
    outcome.seconds_to_stop, outcome.seconds_to_exit = outcome_seconds
    return outcome


@scenario
def a_run_that_does_not_stop(root: Path) -> Outcome:
    """A file write that hangs (injected: 60 s) never reaches the next stop check."""
    folder, uids, digest = _two_series(root)
    app = AppProcess(folder, root / "out", root / "work", QUICK, "slow-write:60")
    app.wait_for("FAULT writing .*00001.dcm")
    writing = [p.name for p in root.iterdir() if p.name.startswith(".out.partial-")]
    sent = time.monotonic()
    app.proc.send_signal(signal.SIGTERM)
    app.wait_for(r"stopped by signal SIGTERM \(exit code", 60)
    outcome_seconds = time.monotonic() - sent
    app.finish(60)
    outcome = _outcome(app, app.proc.returncode, folder, uids, digest, root)
    outcome.seconds_to_stop = outcome_seconds
    outcome.notes["temporary folders while writing"] = writing
    return outcome


@scenario
def sigterm_through_the_map_entrypoint(root: Path) -> Outcome:
    """``docker stop`` signals PID 1, the MAP entrypoint map/tools.sh, which forwards it to the application;
    the folders are the MAP's (work ``/var/holoscan`` holds ``input/`` and ``output/``)."""
    var = root / "var" / "holoscan"
    uids = study(var / "input", [(6, 32, 32), (6, 32, 32)])
    digest = folder_digest(var / "input")
    manifest = json.loads((REPO / "map" / "app.json").read_text(encoding="utf-8"))
    manifest["command"] = json.dumps([sys.executable, str(REPO / "app")])
    (root / "app.json").write_text(json.dumps(manifest), encoding="utf-8")
    env = {
        **QUICK,
        **LONG_TRAINING,
        "HOLOSCAN_APP_MANIFEST_PATH": str(root / "app.json"),
        "HOLOSCAN_CONFIG_PATH": str(REPO / "app.yaml"),
        "HOLOSCAN_INPUT_PATH": str(var / "input"),
        "HOLOSCAN_OUTPUT_PATH": str(var / "output"),
        "HOLOSCAN_WORKDIR": str(var),
        "HOLOSCAN_MODEL_PATH": str(root / "models"),
    }
    app = AppProcess(var / "input", var / "output", var, env, None, command=[str(REPO / "map" / "tools.sh")])
    seconds = _signal_after(app, "NS-N2N training on this series", signal.SIGTERM)
    unchanged = folder_digest(var / "input") == digest
    outcome = Outcome(
        app.proc.returncode, app.log, derived_series(var / "output"), uids, unchanged, var / "output", var
    )
    outcome.seconds_to_stop, outcome.seconds_to_exit = seconds
    return outcome


@scenario
def two_runs_into_one_output_folder(root: Path) -> Outcome:
    """Same input, same output and work folder, started together."""
    uids = study(root / "in", [(6, 32, 32)])
    digest = folder_digest(root / "in")
    env = {**QUICK, "NSN2N_SAVE_MODEL": "true"}
    apps = [AppProcess(root / "in", root / "out", root / "work", env, None) for _ in range(2)]
    codes = [app.finish() for app in apps]
    outcome = _outcome(apps[0], codes[0], root / "in", uids, digest, root)
    outcome.log = "\n".join(app.log for app in apps)
    outcome.notes["codes"] = codes
    return outcome


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Runs the scenarios of the selected tests, two at a time."""
    wanted = [
        item.originalname.removeprefix("test_")
        for item in request.session.items
        if item.module is request.module and item.originalname.removeprefix("test_") in SCENARIOS
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(SCENARIOS[name], tmp_path_factory.mktemp(name)) for name in dict.fromkeys(wanted)}


def _result(outcomes: dict[str, Future], name: str) -> Outcome:
    outcome = outcomes[name].result()
    assert outcome.input_unchanged, "the input folder was modified"
    return outcome


# --------------------------------------------------------------------------------------------------
# Output errors (exit code 4)
# --------------------------------------------------------------------------------------------------


def test_full_disk(outcomes: dict[str, Future]) -> None:
    """The series written before stays complete, the one that did not fit leaves nothing."""
    out = _result(outcomes, "full_disk")
    line = last_line(out.log, 4)
    assert out.code == 4
    assert f"output folder {out.output}: cannot write the derived series of series {out.uids[1]}" in line
    assert "No space left on device (ENOSPC); 1 series written, 1 not written" in line
    assert out.derived == {out.uids[0]: [6]}
    assert "kept the 1 complete derived series written before the failure" in out.log
    assert f"series {out.uids[1]}: not written" in out.log


def test_io_error_on_the_output(outcomes: dict[str, Future]) -> None:
    out = _result(outcomes, "io_error_on_the_output")
    line = last_line(out.log, 4)
    assert out.code == 4
    assert f"output folder {out.output}: cannot write the derived series of series {out.uids[0]}: " in line
    assert "Input/output error (EIO); 0 series written, 2 not written" in line
    assert out.derived == {}


def test_quota_exceeded_in_the_work_folder(outcomes: dict[str, Future]) -> None:
    out = _result(outcomes, "quota_exceeded_in_the_work_folder")
    line = last_line(out.log, 4)
    assert out.code == 4
    assert f"work folder {out.work}: cannot save the model into {out.work / 'nsn2n' / out.uids[0]}: " in line
    assert "Disk quota exceeded (EDQUOT); 0 series written, 2 not written" in line
    assert out.derived == {}


def test_read_only_file_system_during_the_run(outcomes: dict[str, Future]) -> None:
    out = _result(outcomes, "read_only_file_system_during_the_run")
    line = last_line(out.log, 4)
    assert out.code == 4
    assert f"output folder {out.output}: cannot write the derived series of series {out.uids[0]}" in line
    assert "Read-only file system (EROFS); 0 series written, 2 not written" in line
    assert out.derived == {}


def test_output_folder_removed_during_the_run(outcomes: dict[str, Future]) -> None:
    """An output error, and the folder is not created again (it may have been an unmounted volume)."""
    out = _result(outcomes, "output_folder_removed_during_the_run")
    line = last_line(out.log, 4)
    assert out.code == 4
    assert f"output folder {out.output}: cannot write the derived series of series {out.uids[0]}" in line
    assert "(the folder was removed during the run): No such file or directory (ENOENT)" in line
    assert not out.output.exists(), "the removed output folder must not be created again"


# --------------------------------------------------------------------------------------------------
# Stop signals (exit code 128 + N)
# --------------------------------------------------------------------------------------------------


def test_sigterm_during_training(outcomes: dict[str, Future]) -> None:
    """The first series stays; the second, in training, is not written; Holoscan's handler never runs."""
    out = _result(outcomes, "sigterm_during_training")
    line = last_line(out.log, 143)
    assert out.code == 128 + signal.SIGTERM == 143
    assert out.seconds_to_stop is not None and out.seconds_to_stop < 2.0, f"{out.seconds_to_stop:.1f} s to stop"
    assert out.seconds_to_exit is not None and out.seconds_to_exit < 15.0, f"{out.seconds_to_exit:.1f} s to exit"
    assert "stopped by signal SIGTERM (exit code 143); 1 series written, 1 not written" in line
    assert "Interrupt signal received" not in out.log and "Forcing exit" not in out.log
    assert out.derived == {out.uids[0]: [6]}
    record = (out.work / "nsn2n" / out.uids[1] / "run.json").read_text()
    assert '"status": "failed"' in record and "stopped by signal SIGTERM" in record


def test_sigint_in_strict_mode(outcomes: dict[str, Future]) -> None:
    """Strict mode is all or nothing, also for a stop: the first series, written, is removed again."""
    out = _result(outcomes, "sigint_in_strict_mode")
    line = last_line(out.log, 130)
    assert out.code == 128 + signal.SIGINT == 130
    assert "stopped by signal SIGINT (exit code 130); 0 series written, 2 not written" in line
    assert "written earlier in this run" in out.log
    assert out.derived == {}


def test_sigterm_during_writing(outcomes: dict[str, Future]) -> None:
    out = _result(outcomes, "sigterm_during_writing")
    line = last_line(out.log, 143)
    assert out.code == 143
    assert "stopped by signal SIGTERM (exit code 143); 0 series written, 2 not written" in line
    assert out.derived == {} and not list(out.output.iterdir()), "nothing in the output"
    record = (out.work / "nsn2n" / out.uids[0] / "run.json").read_text()
    assert '"status": "failed"' in record and "stopped by signal SIGTERM" in record


def test_a_run_that_does_not_stop(outcomes: dict[str, Future]) -> None:
    """5 s after the signal the process removes the temporary folder it is writing and ends with 143."""
    out = _result(outcomes, "a_run_that_does_not_stop")
    line = last_line(out.log, 143)
    assert out.notes["temporary folders while writing"], "writing had begun"
    assert out.code == 143
    assert out.seconds_to_stop is not None and 4.5 < out.seconds_to_stop < 10.0, f"{out.seconds_to_stop:.1f} s"
    assert "the run did not stop by itself within the grace time" in line
    assert "removed the temporary folder" in out.log
    assert out.derived == {}


def test_sigterm_through_the_map_entrypoint(outcomes: dict[str, Future]) -> None:
    """The entrypoint's exit code is the application's; the first series, in training, is not written."""
    out = _result(outcomes, "sigterm_through_the_map_entrypoint")
    line = last_line(out.log, 143)
    assert out.code == 143
    assert "stopped by signal SIGTERM (exit code 143); 0 series written, 2 not written" in line
    assert "application exited with 143" in out.log, "tools.sh waited for the application"
    assert out.seconds_to_exit is not None and out.seconds_to_exit < 15.0
    assert out.derived == {}


# --------------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------------


def test_two_runs_into_one_output_folder(outcomes: dict[str, Future]) -> None:
    """Two complete derived series, each with its own UID; no temporary name collides (series folders
    and model files)."""
    out = _result(outcomes, "two_runs_into_one_output_folder")
    assert out.notes["codes"] == [0, 0], out.log[-4000:]
    assert TRACEBACK not in out.log
    assert out.derived == {out.uids[0]: [6, 6]}, "two complete derived series (their own UIDs: two folders)"
    model_folder = out.work / "nsn2n" / out.uids[0]
    assert sorted(p.name for p in model_folder.iterdir()) == ["nsn2n_model.json", "nsn2n_model.pt", "run.json"]
