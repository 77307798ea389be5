"""The message that carries one series through the pipeline, one operator tick at a time.

The series queue creates a :class:`SeriesJob` for every selected series and emits them one by one; the
series-to-volume, denoise and writer operators each fill in their part and pass it on, and the writer
sends the series UID back to the queue when the series is done, which releases the next job. So one
series at a time is in memory (its volume, the denoised volume, the network) and each derived series is
written before the next one is loaded.

A job that could not be processed is still passed on, with ``error`` set (it is skipped, and the writer
records why in its run record), or with ``fatal`` set (the run ends: the writer removes what must not
stay and records the error for the exit code).

A series with several images per position (echoes, b-values, phases, orientations) becomes one job per
3-D stack (``dicom_series.stacks``): each job is then loaded, denoised and written on its own, with its
own derived series and its own run record in ``<work>/nsn2n/<source SeriesInstanceUID>/<stack key>/``.
In logs a job is named ``<SeriesInstanceUID> [<stack label>]`` (:attr:`SeriesJob.name`).

Once denoised, a job is checked for removed anatomy (:meth:`SeriesJob.check_removed_structure`, the
rule: ``qa_report/residual_structure.py``) while its input and output are both in memory; the writer
puts the result into the run record and the QA report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.deploy.core import Operator, OperatorSpec

from qa_report.residual_structure import DEFAULT_MAX_SLICES, ResidualStructure, removed_structure_index

from .exit_status import RunError, StopRequest, StrictModeError, as_run_error

if TYPE_CHECKING:
    from dicom_series import SourceSeries, Stack
    from nsn2n import DenoiseResult

__all__ = ["SeriesJob", "SeriesStepOperator", "series_workdir"]

log = logging.getLogger(__name__)


def series_workdir(workdir: Path, series_uid: str, stack_key: str = "") -> Path:
    """Where the run record, model and montage of one source series (or of one of its stacks) go."""
    folder = Path(workdir) / "nsn2n" / series_uid
    return folder / stack_key if stack_key else folder


@dataclass(eq=False)
class SeriesJob:
    """One selected source series on its way through the pipeline.

    Attributes:
        series_uid: SeriesInstanceUID of the source series (``None`` only for a job that carries a
            failure of the queue itself).
        label: short description for logs (modality, series number, description; no patient data).
        instances: (path, dataset) pairs of the source series as loaded.
        position: 1-based place of this series in the run.
        total: number of series in the run.
        source: the validated volume once converted.
        load_s: seconds to convert the series to a volume.
        result: the denoising result once denoised.
        model_saved_to: where the trained model was saved, or ``None``.
        error: why the series is skipped, or ``None``.
        skipped_in: the stage that skipped it (``"load"``, ``"denoise"``, ``"write"``).
        fatal: the error that ends the run, or ``None``.
        stack: the 3-D stack of the series this job is, or ``None`` when the series is not split.
        removed_structure: the removed-anatomy check of the denoised volume once done.
    """

    series_uid: str | None
    label: str
    instances: list[tuple[Path | None, Any]]
    position: int
    total: int
    source: SourceSeries | None = None
    load_s: float | None = None
    result: DenoiseResult | None = None
    model_saved_to: str | None = None
    error: str | None = None
    skipped_in: str | None = None
    fatal: RunError | None = None
    stack: Stack | None = None
    removed_structure: ResidualStructure | None = None

    @classmethod
    def run_failure(cls, error: RunError) -> SeriesJob:
        """A job that carries only a failure of the run (no series) to the writer."""
        return cls(series_uid=None, label="", instances=[], position=0, total=0, fatal=error)

    @property
    def name(self) -> str:
        """The series UID, with the stack label when the series is split: how logs name this job."""
        return f"{self.series_uid} [{self.stack.label}]" if self.stack is not None else str(self.series_uid)

    def workdir(self, workdir: Path) -> Path:
        """This job's folder in the work folder (run record, model, montage)."""
        return series_workdir(workdir, str(self.series_uid), self.stack.key if self.stack is not None else "")

    @property
    def ok(self) -> bool:
        """Neither skipped nor failed so far."""
        return self.error is None and self.fatal is None

    @property
    def last(self) -> bool:
        """The last series of the run."""
        return self.position == self.total

    def skip(self, stage: str, reason: str, *, strict: bool) -> None:
        """Skip this series (non-strict), or end the run with :class:`StrictModeError` (strict)."""
        self.error = reason
        self.skipped_in = stage
        log.warning("series %s: skipped: %s", self.name, reason)
        if strict:
            self.fatal = StrictModeError(f"strict mode: series {self.name} could not be processed: {reason}")

    @contextmanager
    def failures_end_the_run(self, operator: str) -> Iterator[None]:
        """Run an operator's work on this job; any exception becomes ``fatal`` instead of a stack trace."""
        try:
            yield
        except Exception as exc:
            self.fatal = as_run_error(exc, operator)

    def check_removed_structure(
        self, threshold: float, max_slices: int | None = DEFAULT_MAX_SLICES
    ) -> ResidualStructure:
        """Measure how much anatomy the denoiser removed (``removed_structure``), from the input and output.

        Padding pixels (Pixel Padding Value) are left out. At most ``max_slices`` evenly spaced slices are
        evaluated, so the check's time and memory do not grow with the number of slices. When the check
        fires, its one-line warning is logged here; the writer adds it to the run record's warnings.
        """
        started = time.monotonic()
        check = removed_structure_index(
            self.source.volume,
            self.result.denoised,
            ~self.source.padding_mask,
            threshold=threshold,
            max_slices=max_slices,
        )
        self.removed_structure = check
        log.info(
            "series %s: removed-structure index %s (threshold %g; %d edge pixels on %d slices; %.1f s)",
            self.name,
            f"{check.index:.2f}" if check.edge_pixels else "n/a (no edges)",
            check.threshold,
            check.edge_pixels,
            check.slices,
            time.monotonic() - started,
        )
        if check.warning is not None:
            log.warning("series %s: %s", self.name, check.warning)
        return check

    def release(self) -> None:
        """Drop the volumes and the network once the series is written: the next series needs the memory."""
        self.source = None
        self.result = None


class SeriesStepOperator(Operator):
    """Base of the per-series steps between the queue and the writer: input ``job``, output ``job``.

    A job that is still ok is handed to :meth:`process`; a skipped or failed one is passed on untouched,
    so that the writer records it and the queue learns the series is done. When the run was asked to stop
    (``stop``), an ok job is not processed: it carries :class:`~operators.exit_status.StoppedBySignal` on.
    """

    def __init__(self, fragment, *args, stop: StopRequest, **kwargs) -> None:
        self.stop = stop
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        spec.output("job")

    def compute(self, op_input, op_output, context) -> None:
        job: SeriesJob = op_input.receive("job")
        if job.ok and self.stop.requested:
            job.fatal = self.stop.error()
        if job.ok:
            with job.failures_end_the_run(self.name):
                self.process(job)
        op_output.emit(job, "job")

    def process(self, job: SeriesJob) -> None:
        """This step's work on ``job``; raise to end the run, or call ``job.skip`` to skip the series."""
        raise NotImplementedError
