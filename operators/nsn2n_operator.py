"""NS-N2N trainer/inferer: trains on each selected volume (or reuses a saved model) and denoises it.

A thin adapter around :func:`nsn2n.denoise_volume`. With ``-m MODEL_DIR`` holding a model saved by an
earlier run, the model is loaded once and applied without training (or fine-tuned for
``finetune_steps``). After training, the model goes into the work folder, never into the output folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from nsn2n import ConfigError, DenoiseConfig, TrainedModel, VolumeError, denoise_volume

from .run_outcome import EXIT_CONFIG, InputError, OutputError, RunError, RunOutcome, SeriesJob

__all__ = ["NSN2NDenoiseOperator", "series_workdir"]

log = logging.getLogger(__name__)


def series_workdir(workdir: Path, series_uid: str) -> Path:
    """Where the run record, model and montage of one source series go."""
    return Path(workdir) / "nsn2n" / series_uid


class ModelError(RunError):
    exit_code = EXIT_CONFIG


class NSN2NDenoiseOperator(Operator):
    """Input ``jobs`` (converted series), output ``jobs`` (with ``result`` set)."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        outcome: RunOutcome,
        config: DenoiseConfig,
        workdir: Path,
        model_path: Path | None = None,
        finetune_steps: int = 0,
        save_model: bool = True,
        **kwargs,
    ) -> None:
        self.outcome = outcome
        self.config = config
        self.workdir = Path(workdir)
        self.model_path = Path(model_path) if model_path else None
        self.finetune_steps = finetune_steps
        self.save_model = save_model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("jobs")
        spec.output("jobs")

    def _saved_model(self) -> TrainedModel | None:
        if self.model_path is None:
            return None
        found = TrainedModel.find(self.model_path)
        if found is None:
            log.info("no saved NS-N2N model in %s: training on each series", self.model_path)
            return None
        try:
            return TrainedModel.load(found)
        except ValueError as exc:
            raise ModelError(str(exc)) from None

    def compute(self, op_input, op_output, context) -> None:
        with self.outcome.guard(self.name):
            jobs: list[SeriesJob] = op_input.receive("jobs")
            saved = self._saved_model()
            for job in jobs:
                if job.ok:
                    self.denoise(job, saved)
            if not any(job.ok for job in jobs):
                raise InputError(
                    "no series could be denoised: " + "; ".join(f"{j.series_uid}: {j.error}" for j in jobs)
                )
            op_output.emit(jobs, "jobs")

    def denoise(self, job: SeriesJob, saved: TrainedModel | None) -> None:
        source = job.source
        log.info(
            "series %s (%s): NS-N2N %s",
            job.series_uid,
            job.label,
            "with the saved model" if saved else "training on this series",
        )
        try:
            job.result = denoise_volume(
                source.volume,
                source.spacing,
                source.modality,
                self.config,
                padding_mask=source.padding_mask,
                initial_model=saved,
                finetune_steps=self.finetune_steps if saved else 0,
            )
        except (VolumeError, FloatingPointError) as exc:
            self.outcome.fail_series(job, str(exc))
            return
        except ConfigError as exc:
            raise ModelError(str(exc)) from None
        if self.save_model and (saved is None or self.finetune_steps):
            folder = series_workdir(self.workdir, job.series_uid)
            try:
                job.record["model_saved_to"] = str(job.result.model.save(folder))
            except OSError as exc:
                raise OutputError(f"cannot save the model into the work folder {folder}: {exc.strerror}") from None
            log.info("series %s: model saved to %s", job.series_uid, job.record["model_saved_to"])
