"""NS-N2N trainer/inferer: trains on each series (or reuses a saved model) and denoises it.

A thin adapter around :func:`nsn2n.denoise_volume`. With ``-m MODEL_DIR`` holding a model saved by an
earlier run, the model is loaded once (with the first series) and applied without training (or
fine-tuned for ``finetune_steps``). After training, the model goes into the work folder, never into the
output folder. Each denoised series is then checked for removed anatomy
(:meth:`~operators.series_job.SeriesJob.check_removed_structure`) while its input is still at hand.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment

from nsn2n import ConfigError, DenoiseConfig, StopRequested, TrainedModel, VolumeError, denoise_volume

from .exit_status import ModelError, OutputError, require_folder
from .series_job import SeriesJob, SeriesStepOperator

__all__ = ["NSN2NDenoiseOperator"]

log = logging.getLogger(__name__)

_NOT_LOADED = object()


class NSN2NDenoiseOperator(SeriesStepOperator):
    """Input ``job`` (a converted series), output ``job`` (with ``result`` set, or skipped)."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        config: DenoiseConfig,
        workdir: Path,
        strict: bool,
        removed_structure_threshold: float,
        model_path: Path | None = None,
        finetune_steps: int = 0,
        save_model: bool = True,
        **kwargs,
    ) -> None:
        self.config = config
        self.removed_structure_threshold = removed_structure_threshold
        self.workdir = Path(workdir)
        self.strict = strict
        self.model_path = Path(model_path) if model_path else None
        self.finetune_steps = finetune_steps
        self.save_model = save_model
        self._saved = _NOT_LOADED
        super().__init__(fragment, *args, **kwargs)

    def process(self, job: SeriesJob) -> None:
        """Denoise the series (``job.result``) and save the model; skip it when it cannot be denoised."""
        self.denoise(job, self.saved_model())

    def saved_model(self) -> TrainedModel | None:
        """The model given with ``-m`` (loaded on first use), or ``None`` to train on each series."""
        if self._saved is _NOT_LOADED:
            self._saved = self._load_saved_model()
        return self._saved

    def _load_saved_model(self) -> TrainedModel | None:
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

    def denoise(self, job: SeriesJob, saved: TrainedModel | None) -> None:
        source = job.source
        log.info(
            "series %s (%s): NS-N2N %s",
            job.name,
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
                should_stop=self.stop,
            )
        except StopRequested:
            job.fatal = self.stop.error()
            return
        except (VolumeError, FloatingPointError) as exc:
            job.skip("denoise", str(exc), strict=self.strict)
            return
        except ConfigError as exc:
            raise ModelError(str(exc)) from None
        job.check_removed_structure(self.removed_structure_threshold)
        if self.save_model and (saved is None or self.finetune_steps):
            folder = job.workdir(self.workdir)
            require_folder(self.workdir, "work", f"save the model into {folder}")
            try:
                job.model_saved_to = str(job.result.model.save(folder))
            except OSError as exc:
                raise OutputError.from_os_error(exc, "work", self.workdir, f"save the model into {folder}") from None
            log.info("series %s: model saved to %s", job.name, job.model_saved_to)
