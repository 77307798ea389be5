"""How a run ends: the exit codes, the errors that choose them, and the one object that records the outcome.

Exit codes (README "Exit codes"):

====  ===========================================================================================
 0    every selected series was denoised and written (series skipped in non-strict mode are warned
      about; see the run records)
 1    internal error (a bug): the one-line message says where; details at DEBUG log level
 2    configuration or command-line error (app.yaml / NSN2N_* / flags, an unusable ``-m`` model)
 3    input error: no DICOM, no CT/MR series to denoise, or every selected series was unusable
 4    output error: the output or work folder cannot be written
 5    strict mode: a series could not be processed, so nothing was written
====  ===========================================================================================

Design. Data moves between operators only through their ports: one :class:`~operators.series_job.SeriesJob`
per series, and a failure that ends the run travels with the job it happened to (``SeriesJob.fatal``)
to the writer, which owns what was written and removes it (the output appears completely or not at
all). What does not travel through ports is the *final status* of the run, which Holoscan cannot
return from ``Application.run()``: :class:`ExitStatus` is created by the application, written by the
operators that end a run (the loader when nothing can be read, the writer when the last series is done
or a failure reaches it) and read once by ``app.main`` for the exit code. It holds nothing else.
Operators never let an exception escape into Holoscan (which would print a stack trace): they turn it
into a :class:`RunError` with :func:`as_run_error`.
"""

from __future__ import annotations

import logging
import traceback

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
    "StrictModeError",
    "as_run_error",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_STRICT = 5


class RunError(Exception):
    """A failure that ends the run with ``exit_code`` and a one-line message."""

    exit_code = EXIT_INTERNAL


class InputError(RunError):
    """Nothing usable in the input: no DICOM, no CT/MR series, or no selected series could be used."""

    exit_code = EXIT_INPUT


class OutputError(RunError):
    """The output or work folder cannot be written."""

    exit_code = EXIT_OUTPUT


class ModelError(RunError):
    """The model given with ``-m`` cannot be used: a configuration error."""

    exit_code = EXIT_CONFIG


class StrictModeError(RunError):
    """Strict mode: a series could not be processed, so the run fails and nothing is written."""

    exit_code = EXIT_STRICT


def as_run_error(exc: Exception, where: str) -> RunError:
    """``exc`` as the :class:`RunError` that ends the run: itself, or an internal error naming ``where``."""
    if isinstance(exc, RunError):
        return exc
    log.debug("unexpected error in %s:\n%s", where, traceback.format_exc())
    return RunError(f"internal error in {where}: {type(exc).__name__}: {exc}")


class ExitStatus:
    """The final status of one run: the error that ended it, or that it finished; read for the exit code."""

    def __init__(self) -> None:
        self.error: RunError | None = None
        self.finished = False

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
