"""The error contract without a process (milliseconds): OS errors in one line with the errno in words,
pydicom's embedded stack trace stripped, the folder relations checked at start, and the stop request.

The same contract with the application running as a real process: tests/test_app_faults.py.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from app.paths import FolderRelationError, check_folder_relations, check_paths
from operators.exit_status import (
    EXIT_CONFIG,
    EXIT_OUTPUT,
    ExitStatus,
    OutputError,
    RunError,
    StoppedBySignal,
    StopRequest,
    as_run_error,
    errno_of,
    one_line,
)
from tests.dicom_factory import make_ct_datasets


def _pydicom_write_error(number: int) -> OSError:
    """The exception pydicom's ``save_as`` raises when the file's ``write`` fails with ``number``: a new
    OSError without errno whose text holds the original's stack trace (pydicom ``tag_in_exception``)."""

    class Failing:
        """Takes the preamble and the file meta information, then fails inside the data set."""

        written = 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 600:
                raise OSError(number, os.strerror(number))
            self.written += len(data)
            return len(data)

        def tell(self) -> int:
            return self.written

        def seek(self, *args: object) -> int:
            return 0

        def flush(self) -> None:
            pass

    ds = make_ct_datasets(np.zeros((1, 8, 8), np.float32))[0]
    with pytest.raises(OSError) as info:
        ds.save_as(Failing(), enforce_file_format=True)
    return info.value


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("ENOSPC", "No space left on device"),
        ("EDQUOT", "Disk quota exceeded"),
        ("EROFS", "Read-only file system"),
        ("EACCES", "Permission denied"),
        ("EIO", "Input/output error"),
        ("ENOENT", "No such file or directory"),
    ],
)
def test_an_os_error_inside_pydicom_is_one_line_with_the_errno_in_words(name: str, words: str) -> None:
    number = getattr(errno, name)
    wrapped = _pydicom_write_error(number)
    assert wrapped.errno is None and "Traceback (most recent call last)" in str(wrapped), "pydicom's wrapping"
    assert errno_of(wrapped) == number
    error = OutputError.from_os_error(wrapped, "output", Path("/data/out"), "write the derived series of series 1.2.3")
    assert str(error) == f"output folder /data/out: cannot write the derived series of series 1.2.3: {words} ({name})"
    assert error.exit_code == EXIT_OUTPUT and error.keeps_written


def test_an_error_without_errno_keeps_its_first_line_only() -> None:
    text = 'With tag (7FE0,0010) got exception: disk on fire\nTraceback (most recent call last):\n  File "x.py"'
    error = OutputError.from_os_error(ValueError(text), "work", Path("/w"), "write /w/run.json")
    assert str(error) == "work folder /w: cannot write /w/run.json: With tag (7FE0,0010) got exception: disk on fire"


def test_internal_errors_lose_embedded_stack_traces_too() -> None:
    text = "With tag (0008,0018) got exception: boom\nTraceback (most recent call last):\n  File ..., line 3"
    assert one_line(text) == "With tag (0008,0018) got exception: boom"
    assert str(as_run_error(RuntimeError(text), "writer")) == (
        "internal error in writer: RuntimeError: With tag (0008,0018) got exception: boom"
    )
    assert one_line("two\nlines  here") == "two lines here"


def test_errno_of_follows_causes_and_contexts() -> None:
    try:
        try:
            raise OSError(errno.EIO, "io")
        except OSError:
            raise RuntimeError("wrapped") from None
    except RuntimeError as exc:
        assert errno_of(exc) is None, "from None hides the cause"
    try:
        try:
            raise OSError(errno.EIO, "io")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        assert errno_of(exc) == errno.EIO


def test_stop_request_and_its_error() -> None:
    stop = StopRequest()
    assert not stop() and not stop.requested
    stop.request(signal.SIGINT)
    stop.request(signal.SIGTERM)  # the first signal counts
    assert stop() and stop.requested and stop.signal_number == signal.SIGINT
    error = stop.error()
    assert isinstance(error, StoppedBySignal) and error.exit_code == 130 and str(error) == "stopped by signal SIGINT"


def test_exit_status_progress() -> None:
    status = ExitStatus()
    assert status.progress() == "0 series written; the input was not read to the end"
    status.total = 3
    status.written.append("1.2.3")
    assert status.progress() == "1 series written, 2 not written"
    assert not RunError("x").keeps_written and StoppedBySignal(15).keeps_written


# --------------------------------------------------------------------------------------------------
# Folder relations (app/paths.py), checked before anything is read or trained
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("output", "work", "message"),
    [
        ("in", "w", "output folder {r}/in is the same folder as the input folder {r}/in"),
        ("in/out", "w", "output folder {r}/in/out is inside the input folder {r}/in"),
        (".", "w", "output folder {r} holds the input folder {r}/in"),
        ("out", "in", "work folder {r}/in is the same folder as the input folder {r}/in"),
        ("out", "in/work", "work folder {r}/in/work is inside the input folder {r}/in"),
        ("out", "out", "output folder {r}/out is the same folder as the work folder {r}/out"),
        ("out", "out/work", "work folder {r}/out/work is inside the output folder {r}/out"),
    ],
)
def test_folders_that_touch_the_input_or_each_other(layout: Path, output: str, work: str, message: str) -> None:
    with pytest.raises(FolderRelationError) as info:
        check_folder_relations(layout / "in", (layout / output).absolute(), layout / work)
    assert str(info.value).startswith(message.format(r=layout)), str(info.value)
    assert info.value.exit_code == EXIT_CONFIG


def test_the_map_layout_is_accepted(tmp_path: Path) -> None:
    """/var/holoscan (work) holds input/ and output/: the application writes into work/nsn2n only."""
    (tmp_path / "input").mkdir()
    check_folder_relations(tmp_path / "input", tmp_path / "output", tmp_path)
    check_folder_relations(tmp_path / "input", tmp_path / "output", tmp_path / "work")


def test_symbolic_links_are_resolved(layout: Path) -> None:
    (layout / "link").symlink_to(layout / "in")
    with pytest.raises(FolderRelationError, match="is inside the input folder") as info:
        check_folder_relations(layout / "in", layout / "link" / "out", layout / "w")
    assert f"symbolic links resolved: {layout / 'link' / 'out'} -> {layout / 'in' / 'out'}" in str(info.value)


def test_check_paths_reports_relations_before_writability(layout: Path) -> None:
    argv = ["python", "app", "-i", str(layout / "in"), "-o", str(layout / "in" / "out"), "-w", str(layout / "w")]
    with pytest.raises(FolderRelationError):
        check_paths(argv, env={})
    assert not (layout / "in" / "out").exists(), "nothing is created"


# --------------------------------------------------------------------------------------------------
# The signal watcher (app/signals.py) without real signals; with them: tests/test_app_faults.py
# --------------------------------------------------------------------------------------------------


def test_an_interrupted_wait_is_no_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11's sigtimedwait returns an uninitialised siginfo after EINTR past its deadline."""
    import app.signals

    class Garbage:
        si_signo = -284294016

    monkeypatch.setattr(app.signals.signal, "sigtimedwait", lambda signals, timeout: Garbage())
    assert app.signals._wait(0.2) is None


def test_the_first_signal_asks_to_stop_and_the_second_ends_at_once() -> None:
    from app.signals import SignalWatcher

    stop, ended = StopRequest(), []
    watcher = SignalWatcher(stop, ended.append, grace_s=0.3)
    watcher._received(signal.SIGTERM)
    assert stop.requested and stop.signal_number == signal.SIGTERM and ended == []
    watcher._received(signal.SIGINT)
    assert ended == [signal.SIGTERM], "a second signal ends the run at once, with the first one's code"
    watcher._timer.join(2)
    assert ended == [signal.SIGTERM, signal.SIGTERM], "and so does the grace time running out"
