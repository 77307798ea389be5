"""DICOM loader: the SDK's ``DICOMDataLoaderOperator`` with our file reading.

Why wrap it (SDK 4.0.0 behaviour that is wrong for an unattended MAP):

* it catches only ``InvalidDicomError`` per file, so one truncated or corrupt file ends the run with a
  stack trace; we skip such a file with a warning naming it (its series then reports the gap);
* it silently drops all but one instance at a repeated ImagePositionPatient; we keep them all so the
  series-to-volume step can reject the series with a clear "duplicate slice position" message;
* an empty or non-DICOM input raises ``ItemNotExistsError``; we report an input error (exit code 3)
  that says what was found.

The output is the SDK's ``List[DICOMStudy]``, so the SDK's series selector works unchanged. When
nothing can be read, the run ends here: the error is recorded in the run's
:class:`~operators.exit_status.ExitStatus` and nothing is emitted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators import DICOMDataLoaderOperator

from dicom_series import DicomReadError, group_series, read_dicom_folder

from .exit_status import ExitStatus, InputError, as_run_error

__all__ = ["StudyLoaderOperator"]

log = logging.getLogger(__name__)


class StudyLoaderOperator(DICOMDataLoaderOperator):
    """Reads every DICOM file under the input folder into SDK ``DICOMStudy`` objects (read-only)."""

    def __init__(self, fragment, *args, input_folder: Path, status: ExitStatus, **kwargs) -> None:
        self.status = status
        super().__init__(fragment, *args, input_folder=Path(input_folder), must_load=False, **kwargs)

    def compute(self, op_input, op_output, context) -> None:
        try:
            studies = self.load_data_to_studies(Path(self.input_path))
        except Exception as exc:  # nothing is written yet: the run ends here
            self.status.fail(as_run_error(exc, self.name))
            return
        op_output.emit(studies, self.output_name)

    def load_data_to_studies(self, input_path: Path) -> list[DICOMStudy]:
        if not input_path.is_dir():
            raise InputError(f"input folder does not exist or is not a folder: {input_path}")
        try:
            instances = read_dicom_folder(input_path, skip_unreadable=True)
        except (DicomReadError, OSError) as exc:
            raise InputError(str(exc)) from None
        if not instances:
            n_files = sum(1 for p in input_path.rglob("*") if p.is_file())
            raise InputError(f"no DICOM image instances in {input_path} ({n_files} file(s) examined)")
        studies: dict[str, DICOMStudy] = {}
        groups = group_series(instances)  # skips, with a warning, instances without study or series UID
        for (study_uid, series_uid), members in groups.items():
            first = members[0][1]
            if study_uid not in studies:
                studies[study_uid] = DICOMStudy(study_uid)
                self.populate_study_attributes(studies[study_uid], first)
            series = DICOMSeries(series_uid)
            self.populate_series_attributes(series, first)
            studies[study_uid].add_series(series)
            for path, ds in members:
                ds.filename = str(path)
                series.add_sop_instance(ds)
        log.info(
            "loaded %d instance(s) in %d series of %d study(ies) from %s",
            len(instances),
            len(groups),
            len(studies),
            input_path,
        )
        return list(studies.values())
