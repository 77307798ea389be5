"""The nsn2n-denoise MONAI Deploy application: DICOM study in, denoised derived DICOM series out.

Pipeline (one operator a file in ``operators/``)::

    StudyLoaderOperator (SDK DICOMDataLoaderOperator, robust reading)
      -> DICOMSeriesSelectorOperator (SDK; CT/MR, never DERIVED/SECONDARY, every matching series)
      -> SeriesQueueOperator  (one series at a time)  <------------------------------+
      -> SeriesToVolumeOperator -> NSN2NDenoiseOperator -> DerivedSeriesWriterOperator
                                                              series_done (feedback) -+

Each series is loaded, denoised, written and released before the queue emits the next one (see
``operators/series_queue_operator.py``). The run's exit status and its stop request (set by a signal,
``app/signals.py``) are the objects the operators share (``operators/exit_status.py``); everything else
moves through the ports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators import DICOMSeriesSelectorOperator

from app.paths import DEFAULT_WORKDIR
from app.settings import AppSettings, load_settings
from operators.derived_series_writer_operator import DerivedSeriesWriterOperator
from operators.dicom_loader_operator import StudyLoaderOperator
from operators.exit_status import ExitStatus, StopRequest
from operators.nsn2n_operator import NSN2NDenoiseOperator
from operators.series_queue_operator import SeriesQueueOperator
from operators.series_to_volume_operator import SeriesToVolumeOperator

__all__ = ["NSN2NDenoiseApp", "selection_rules"]

log = logging.getLogger(__name__)


def selection_rules(modalities: tuple[str, ...]) -> str:
    """Selector rules: the given modalities, never DERIVED/SECONDARY (so our own output is never re-processed)."""
    pattern = "(?i)^(" + "|".join(modalities) + ")$"
    return json.dumps(
        {
            "selections": [
                {
                    "name": "original CT/MR image series",
                    "conditions": {"Modality": pattern, "ImageType": ["!derived", "!secondary"]},
                }
            ]
        }
    )


class NSN2NDenoiseApp(Application):
    """Trains NS-N2N on each selected series and writes a derived denoised series beside it.

    Args:
        argv: command line (``[python, app, -i IN, -o OUT, ...]``); Holoscan drops ``argv[0]``.
        settings: validated settings; ``None`` reads app.yaml and ``NSN2N_*`` environment variables.
        stop: the run's stop request (``app.main`` sets it from a signal); ``None``: a fresh one.
        status: where the run's outcome is recorded; ``None``: a fresh one (``self.status``).
    """

    def __init__(
        self,
        *args,
        settings: AppSettings | None = None,
        stop: StopRequest | None = None,
        status: ExitStatus | None = None,
        **kwargs,
    ) -> None:
        self.settings = settings
        self.status = status or ExitStatus()
        self.stop = stop or StopRequest()
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        settings = self.settings or load_settings()
        context: AppContext = Application.init_app_context(self.argv)
        input_path = Path(context.input_path)
        output_path = Path(context.output_path)
        workdir = Path(context.workdir) if context.workdir else Path.cwd() / DEFAULT_WORKDIR
        model_path = Path(context.model_path) if context.model_path else None
        log.info(
            "nsn2n-denoise: input %s, output %s, workdir %s, models %s",
            input_path,
            output_path,
            workdir,
            model_path or "-",
        )
        log.info("parameters: %s", json.dumps(settings.as_dict(), sort_keys=True))

        loader = StudyLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_path, status=self.status, name="dicom_loader"
        )
        selector = DICOMSeriesSelectorOperator(
            self, rules=selection_rules(settings.modalities), all_matched=True, name="series_selector"
        )
        queue = SeriesQueueOperator(
            self, modalities=settings.modalities, status=self.status, stop=self.stop, name="series_queue"
        )
        to_volume = SeriesToVolumeOperator(self, strict=settings.strict, stop=self.stop, name="series_to_volume")
        denoiser = NSN2NDenoiseOperator(
            self,
            stop=self.stop,
            config=settings.algorithm,
            workdir=workdir,
            strict=settings.strict,
            model_path=model_path,
            finetune_steps=settings.finetune_steps,
            save_model=settings.save_model,
            removed_structure_threshold=settings.removed_structure_threshold,
            name="nsn2n_denoise",
        )
        writer = DerivedSeriesWriterOperator(
            self,
            status=self.status,
            stop=self.stop,
            output_folder=output_path,
            workdir=workdir,
            series_description=settings.series_description,
            series_number_offset=settings.series_number_offset,
            qa_report=settings.qa_report,
            parameters=settings.as_dict(),
            strict=settings.strict,
            name="derived_series_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, queue, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, queue, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(queue, to_volume, {("job", "job")})
        self.add_flow(to_volume, denoiser, {("job", "job")})
        self.add_flow(denoiser, writer, {("job", "job")})
        self.add_flow(writer, queue, {("series_done", "series_done")})
