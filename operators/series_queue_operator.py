"""Series queue: turns the selected series into jobs and releases them one at a time.

Why one at a time: a study often holds several reconstructions of several hundred slices each. Held
together, their volumes, normalised copies and denoised outputs multiply the memory, and the first
derived series would reach the archive only after the last one is trained. So the queue emits one
:class:`~operators.series_job.SeriesJob`, and the next only when the writer reports the previous one
done on the ``series_done`` port (a feedback edge of the graph): load, denoise, write, release, then the
next series. The working memory (volumes, weight maps, network) is that of the largest series; the
loaded DICOM datasets of the whole input stay in memory from the loader on.

Holoscan scheduling (SDK 4.0.0 / Holoscan 4.2): the three inputs are OR-combined
(``OperatorSpec.or_combine_port_conditions``), so the operator runs when the study list, the selection
or a ``series_done`` message arrives, and never polls. When nothing is emitted any more (every series is
done, or a failure ended the run) no operator is ready and the scheduler stops.

Selection: every series the SDK's selector chose, once, except localizers (see :func:`localizer_reason`),
in the selector's order. A series with several images per position is split into its 3-D stacks
(``dicom_series.split_stacks``: echoes, b-values, phases, orientations), one job each.

Stop: when the run was asked to stop (a signal), the next job is not emitted, so the pipeline runs dry
after the series in progress and the run ends.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dicom_series import split_stacks
from nsn2n import MIN_SLICES

from .exit_status import ExitStatus, InputError, StopRequest, as_run_error
from .series_job import SeriesJob

__all__ = ["SeriesQueueOperator", "localizer_reason"]

log = logging.getLogger(__name__)


def series_label(series) -> str:
    """Modality, series number and description: enough for an operator, no patient data."""
    parts = [str(getattr(series, "Modality", "") or "?")]
    number = getattr(series, "SeriesNumber", None)
    if number not in (None, ""):
        parts.append(f"#{number}")
    description = getattr(series, "SeriesDescription", None)
    if description:
        parts.append(f"'{description}'")
    return " ".join(parts)


def localizer_reason(datasets) -> str | None:
    """Why a selected series is a localizer (scout) that is left out, or ``None`` to denoise it.

    Design decision: nearly every CT/MR study holds localizer (scout, survey) series, so they are neither
    denoised nor failures, in strict mode too: they are left out with a warning naming the reason. A
    series is a localizer when its Image Type (0008,0008) contains ``LOCALIZER`` (PS3.3 C.8.2.1.1.1 CT,
    C.8.3.1.1.1 MR), or when its instances hold fewer than ``MIN_SLICES`` (3) frames in total (NS-N2N
    needs a slice and two neighbours). A multi-frame object is counted by its frames, so that an
    enhanced multi-frame series reaches ``load_series`` and is rejected there with its own message.
    If every selected series is left out, the run ends with exit code 3 and these reasons.
    """
    if not datasets:
        return "no instances"
    value = datasets[0].get("ImageType") or []
    image_type = [str(v).upper() for v in ([value] if isinstance(value, str) else value)]
    if "LOCALIZER" in image_type:
        return "localizer/scout (Image Type " + "\\".join(image_type) + ")"
    frames = 0
    for ds in datasets:
        try:
            frames += max(int(ds.get("NumberOfFrames") or 1), 1)
        except (TypeError, ValueError):
            frames += 1
    if frames < MIN_SLICES:
        return f"only {frames} slice(s); at least {MIN_SLICES} are needed for denoising (a localizer/scout?)"
    return None


class SeriesQueueOperator(Operator):
    """Inputs ``study_selected_series_list`` (selector), ``dicom_study_list`` (loader, for the "nothing
    selected" message) and ``series_done`` (writer); output ``job``, one :class:`SeriesJob` a time."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        modalities: tuple[str, ...],
        status: ExitStatus,
        stop: StopRequest,
        **kwargs,
    ) -> None:
        self.modalities = modalities
        self.status = status
        self.stop = stop
        self._selected = None
        self._studies = None
        self._pending: deque[SeriesJob] | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.input("dicom_study_list")
        spec.input("series_done")
        spec.or_combine_port_conditions(("study_selected_series_list", "dicom_study_list", "series_done"))
        spec.output("job")

    def compute(self, op_input, op_output, context) -> None:
        selected = op_input.receive("study_selected_series_list")
        studies = op_input.receive("dicom_study_list")
        op_input.receive("series_done")  # only a signal: the previous series is written and released
        try:
            if self._pending is None:
                self._selected = selected if selected is not None else self._selected
                self._studies = studies if studies is not None else self._studies
                if self._selected is None or self._studies is None:
                    return  # the other list has not arrived yet
                self._pending = deque(self.jobs(self._selected, self._studies))
                self.status.total = len(self._pending)
                self._selected = self._studies = None
            if self._pending and self.stop.requested:  # nothing more is emitted: the run ends here
                log.warning("not started: series %s", ", ".join(job.name for job in self._pending))
                self._pending.clear()
            if self._pending:
                op_output.emit(self._pending.popleft(), "job")
        except Exception as exc:  # reported by the writer, which owns the output written so far
            self._pending = deque()
            op_output.emit(SeriesJob.run_failure(as_run_error(exc, self.name)), "job")

    def jobs(self, selected, studies) -> list[SeriesJob]:
        """One job per 3-D stack of each selected series that is not a localizer (one per series that is
        not split); :class:`InputError` when there is none."""
        seen: set[str] = set()
        chosen, left_out = [], []
        for study_selection in selected or []:
            for selection in study_selection.selected_series:
                series = selection.series
                if series.SeriesInstanceUID in seen:
                    continue
                seen.add(series.SeriesInstanceUID)
                instances = [
                    (Path(ds.filename) if getattr(ds, "filename", None) else None, ds)
                    for ds in (sop.get_native_sop_instance() for sop in series.get_sop_instances())
                ]
                reason = localizer_reason([ds for _, ds in instances])
                if reason is None:
                    chosen.append((series, instances))
                    continue
                uid, label = series.SeriesInstanceUID, series_label(series)
                log.warning("series %s (%s): not denoised: %s", uid, label, reason)
                left_out.append(f"series {uid} ({label}): {reason}")
        if not chosen:
            if left_out:
                raise InputError("no series to denoise: " + "; ".join(left_out))
            raise InputError(self._nothing_selected(studies or []))
        stacked = [(series, stack) for series, instances in chosen for stack in self.stacks(series, instances)]
        return [
            SeriesJob(
                series.SeriesInstanceUID,
                series_label(series),
                stack.items,
                position,
                len(stacked),
                stack=stack if stack.values else None,
            )
            for position, (series, stack) in enumerate(stacked, start=1)
        ]

    @staticmethod
    def stacks(series, instances):
        """The 3-D stacks of one series (one, the whole series, when it is not split); a split is logged."""
        stacks = split_stacks(instances, min_slices=MIN_SLICES)
        if len(stacks) > 1:
            keywords = dict.fromkeys(keyword for stack in stacks for keyword, _ in stack.values)
            log.info(
                "series %s (%s): several images per position; split by %s into %d stacks: %s",
                series.SeriesInstanceUID,
                series_label(series),
                " and ".join(keywords),
                len(stacks),
                ", ".join(f"{stack.label} ({len(stack.items)} images)" for stack in stacks),
            )
        return stacks

    def _nothing_selected(self, studies) -> str:
        found = []
        for study in studies:
            for series in study.get_all_series():
                sops = series.get_sop_instances()
                image_type = sops[0].get_native_sop_instance().get("ImageType", []) if sops else []
                derived = any(str(v).upper() in ("DERIVED", "SECONDARY") for v in image_type)
                found.append(
                    f"{getattr(series, 'Modality', '?')}{' DERIVED' if derived else ''} ({len(sops)} instance(s))"
                )
        return (
            f"no {'/'.join(self.modalities)} series to denoise that is not DERIVED/SECONDARY; "
            f"found {len(found)} series: {', '.join(found) or 'none'}"
        )
