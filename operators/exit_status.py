"""How a run ends: the exit codes, the errors that choose them, and the one object that records the outcome.

Exit codes (README "Exit codes"):

====  ===========================================================================================
 0    every selected series was denoised and written (series skipped in non-strict mode are warned
      about; see the run records)
 1    internal error (a bug): the one-line message says where; details at DEBUG log level
 2    configuration or command-line error (app.yaml / NSN2N_* / flags, an unusable ``-m`` model)
 3    input error: no DICOM, no CT/MR series to denoise, or every selected series was unusable
 4    output error: the output or work folder cannot be written (a full disk, a read-only or
      removed folder, an I/O error...)
 5    strict mode: a series could not be processed, so nothing was written
128+N stopped by signal N (143 for SIGTERM, 130 for SIGINT)
====  ===========================================================================================

What stays in the output when a run ends early. A failure of the software or of the data (codes 1, 2, 3,
5) removes every series the run wrote: the output holds nothing from such a run. A run stopped by its
environment (a full or failing disk: code 4; a stop signal: 128+N) keeps the complete derived series it
wrote before (they are correct and were each published atomically), except in strict mode, which is all
or nothing; the series in progress is never published. The last log line says how many series were written
and how many not.

Design. Data moves between operators only through their ports: one :class:`~operators.series_job.SeriesJob`
per series, and a failure that ends the run travels with the job it happened to (``SeriesJob.fatal``)
to the writer, which owns what was written and removes what must not stay (see above). What does not
travel through ports is the *final status* of the run, which Holoscan cannot return from
``Application.run()``: :class:`ExitStatus` is created by the application, written by the operators that
end a run (the loader when nothing can be read, the queue with the number of series, the writer when a
series is written, the last series is done or a failure reaches it) and read once by ``app.main`` for the
exit code and the last log line. It holds nothing else.
Operators never let an exception escape into Holoscan (which would print a stack trace): they turn it
into a :class:`RunError` with :func:`as_run_error`, and an OS error on the output or work folder into an
:class:`OutputError` with :meth:`OutputError.from_os_error`.

A stop signal is received by the application (``app/signals.py``), which sets the run's
:class:`StopRequest`; the operators ask it between and inside their long steps (the training and
inference loops, the writing of each file) and end the run with :class:`StoppedBySignal`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import traceback
from pathlib import Path

__all__ = [
    "EXIT_CONFIG",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_STRICT",
    "ExitStatus",
    "InputError",
    "ModelError",
    "OutputError",
    "RunError",
    "StopRequest",
    "StoppedBySignal",
    "StrictModeError",
    "as_run_error",
    "errno_of",
    "one_line",
    "require_folder",
    "signal_name",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_STRICT = 5


def one_line(text: str) -> str:
    """``text`` as one line without a stack trace: hosts grep the last log line, and the text of a
    third-party exception may hold newlines, or a whole stack trace (pydicom's ``save_as`` embeds one)."""
    return " ".join(text.split("Traceback (most recent call last)")[0].split()).rstrip(" :")


def errno_of(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``: its own, or that of an exception it was raised from (its cause,
    or its context unless suppressed with ``from None``).

    pydicom re-raises an ``OSError`` inside ``save_as`` as a new ``OSError`` without ``errno``; the
    original is its ``__cause__``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return current.errno
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__
    return None


class RunError(Exception):
    """A failure that ends the run with ``exit_code`` and a one-line message.

    ``keeps_written``: whether complete series written before the failure stay in the output (see the
    module docstring); never in strict mode.
    """

    exit_code = EXIT_INTERNAL
    keeps_written = False


class InputError(RunError):
    """Nothing usable in the input: no DICOM, no CT/MR series, or no selected series could be used."""

    exit_code = EXIT_INPUT


class OutputError(RunError):
    """The output or work folder cannot be written."""

    exit_code = EXIT_OUTPUT
    keeps_written = True

    @classmethod
    def from_os_error(cls, exc: BaseException, role: str, folder: Path, action: str) -> OutputError:
        """``<role> folder <folder>: cannot <action>: <error in words> (<ERRNO>)`` for an OS error.

        The error number is put in words with ``os.strerror`` (``No space left on device (ENOSPC)``); an
        exception without one keeps its own text, first line only. The full exception and its stack trace
        go to the DEBUG log.
        """
        log.debug("%s folder %s: cannot %s", role, folder, action, exc_info=exc)
        number = errno_of(exc)
        if number is not None:
            reason = f"{os.strerror(number)} ({errno.errorcode.get(number, number)})"
        else:
            reason = one_line(str(exc)) or type(exc).__name__
        return cls(f"{role} folder {folder}: cannot {action}: {reason}")


class ModelError(RunError):
    """The model given with ``-m`` cannot be used: a configuration error."""

    exit_code = EXIT_CONFIG


class StrictModeError(RunError):
    """Strict mode: a series could not be processed, so the run fails and nothing is written."""

    exit_code = EXIT_STRICT


def require_folder(folder: Path, role: str, action: str) -> None:
    """Raise :class:`OutputError` (ENOENT) when the output or work folder of the run is gone (removed
    during the run, or its file system unmounted): writing would silently create it again elsewhere."""
    if not Path(folder).is_dir():
        error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder))
        raise OutputError.from_os_error(error, role, folder, f"{action} (the folder was removed during the run)")


def signal_name(signal_number: int) -> str:
    """``SIGTERM`` for 15, ...; ``signal N`` when Python has no name for it."""
    try:
        return signal.Signals(signal_number).name
    except ValueError:
        return f"signal {signal_number}"


class StoppedBySignal(RunError):
    """The host asked the run to stop (SIGTERM from ``docker stop`` or Kubernetes, SIGINT from Ctrl-C)."""

    keeps_written = True

    def __init__(self, signal_number: int) -> None:
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
        super().__init__(f"stopped by signal {signal_name(signal_number)}")


class StopRequest:
    """Whether the run was asked to stop, and by which signal; set from the signal thread, read by the
    operators. Calling it answers "stop now?", so it is the ``should_stop`` hook of ``nsn2n`` and
    ``dicom_series`` as it is."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_number: int | None = None

    def request(self, signal_number: int) -> None:
        """Ask the run to stop (the first signal counts)."""
        if not self._event.is_set():
            self.signal_number = signal_number
            self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def error(self) -> StoppedBySignal:
        """The error that ends a run stopped by this request."""
        return StoppedBySignal(self.signal_number or signal.SIGTERM)


def as_run_error(exc: Exception, where: str) -> RunError:
    """``exc`` as the :class:`RunError` that ends the run: itself, or an internal error naming ``where``."""
    if isinstance(exc, RunError):
        return exc
    log.debug("unexpected error in %s:\n%s", where, traceback.format_exc())
    return RunError(f"internal error in {where}: {type(exc).__name__}: {one_line(str(exc))}")


class ExitStatus:
    """The final status of one run: the error that ended it, or that it finished; read for the exit code.

    It also counts the series (stacks) of the run and those whose derived series is in the output, for the
    last log line of a run that ends early.
    """

    def __init__(self) -> None:
        self.error: RunError | None = None
        self.finished = False
        self.total: int | None = None  # series (stacks) to denoise, once selected
        self.written: list[str] = []  # the series whose derived series is in the output

    def progress(self) -> str:
        """``"N series written, M not written"``, or that the input was not read to the end."""
        if self.total is None:
            return f"{len(self.written)} series written; the input was not read to the end"
        return f"{len(self.written)} series written, {self.total - len(self.written)} not written"

    def fail(self, error: RunError) -> None:
        """Record the error that ends the run (the first one counts: later ones are its consequences)."""
        if self.error is None:
            self.error = error

    def finish(self) -> None:
        """Record that the last series was handled and at least one derived series was written."""
        self.finished = True

    @property
    def exit_code(self) -> int:
        """The process exit code; a run that neither failed nor finished stopped early: an internal error."""
        if self.error is not None:
            return self.error.exit_code
        return EXIT_OK if self.finished else EXIT_INTERNAL
