"""The run's error and exit-code contract, and the per-series jobs that flow between operators.

Exit codes (README "Exit codes"):

====  ===========================================================================================
 0    every selected series was denoised and written (series skipped in non-strict mode are warned
      about; see the run records)
 1    internal error (a bug): the one-line message says where; details at DEBUG log level
 2    configuration or command-line error (app.yaml / NSN2N_* / flags)
 3    input error: no DICOM, no CT/MR series to denoise, or every selected series was unusable
 4    output error: the output or work folder cannot be written
 5    strict mode: a series could not be processed, so nothing was written
====  ===========================================================================================

Operators never let an exception escape into Holoscan (which would print a stack trace): they record
failures here, and ``app/__main__.py`` turns the outcome into one log line and the exit code.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_CONFIG",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_STRICT",
    "InputError",
    "OutputError",
    "RunError",
    "RunOutcome",
    "SeriesJob",
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
    exit_code = EXIT_INPUT


class OutputError(RunError):
    exit_code = EXIT_OUTPUT


class StrictModeError(RunError):
    exit_code = EXIT_STRICT


@dataclass
class SeriesJob:
    """One selected source series on its way through the pipeline.

    Attributes:
        series_uid: SeriesInstanceUID of the source series.
        label: short description for logs (modality, series number, description; no patient data).
        instances: (path, dataset) pairs of the source series as loaded.
        source: the validated volume (``dicom_series.SourceSeries``) once converted.
        result: the ``nsn2n.DenoiseResult`` once denoised.
        record: run-record fields gathered along the way.
        error: why the series was skipped, or ``None``.
        written: output folders written for this series (derived series, QA report).
    """

    series_uid: str
    label: str
    instances: list[tuple[Path | None, Any]]
    source: Any = None
    result: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunOutcome:
    """Shared by the operators of one run; read by ``__main__`` for the exit code."""

    strict: bool = False
    jobs: list[SeriesJob] = field(default_factory=list)
    fatal: RunError | None = None
    finished: bool = False

    def fail_series(self, job: SeriesJob, reason: str) -> None:
        """Mark ``job`` as skipped (non-strict) or end the run (strict)."""
        job.error = reason
        log.warning("series %s: skipped: %s", job.series_uid, reason)
        if self.strict:
            raise StrictModeError(f"strict mode: series {job.series_uid} could not be processed: {reason}")

    @contextmanager
    def guard(self, operator: str) -> Iterator[None]:
        """Run an operator's work; turn any exception into ``fatal`` instead of a Holoscan stack trace."""
        try:
            yield
        except RunError as exc:
            self.fatal = exc
        except Exception as exc:
            log.debug("unexpected error in %s:\n%s", operator, traceback.format_exc())
            error = RunError(f"internal error in {operator}: {type(exc).__name__}: {exc}")
            self.fatal = error
        if self.fatal is not None:
            self.rollback()

    def rollback(self) -> None:
        """Remove every output folder this run wrote: the output appears completely or not at all."""
        for job in self.jobs:
            for folder in job.written:
                shutil.rmtree(folder, ignore_errors=True)
                log.warning("removed %s written earlier in this run", folder)
            job.written.clear()

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return self.fatal.exit_code
        if not self.finished:
            return EXIT_INTERNAL
        return EXIT_OK
