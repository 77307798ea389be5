"""Holoscan-free DICOM I/O for nsn2n-denoise: read a single-frame CT/MR series (split into 3-D stacks
when it holds several images per position), build the derived (denoised) series and an Encapsulated PDF
report, and write them atomically.

Depends only on pydicom, highdicom and numpy, so it can be tested without MONAI Deploy; the
application's operators are thin adapters around it.
"""

from dicom_series.derived import (
    DEFAULT_SERIES_NUMBER_OFFSET,
    IMPLEMENTATION_CLASS_UID,
    SOFTWARE_NAME,
    DerivedSeriesOptions,
    EncapsulatedPdfOptions,
    build_derived_series,
    build_encapsulated_pdf,
    check_series_description,
    derived_series_number,
)
from dicom_series.reader import (
    DicomReadError,
    SeriesError,
    SourceSeries,
    group_series,
    load_series,
    padding_bounds,
    read_dicom_folder,
    rescale_parameters,
    stored_dtype,
    stored_value_range,
)
from dicom_series.stacks import STACK_ATTRIBUTES, Stack, duplicate_note, split_stacks, stack_series_description
from dicom_series.writer import OutputFolderError, WriteStopped, remove_temporary_folders, write_series_atomically

__all__ = [
    "DEFAULT_SERIES_NUMBER_OFFSET",
    "IMPLEMENTATION_CLASS_UID",
    "SOFTWARE_NAME",
    "STACK_ATTRIBUTES",
    "DerivedSeriesOptions",
    "DicomReadError",
    "EncapsulatedPdfOptions",
    "OutputFolderError",
    "SeriesError",
    "SourceSeries",
    "Stack",
    "WriteStopped",
    "build_derived_series",
    "build_encapsulated_pdf",
    "check_series_description",
    "derived_series_number",
    "duplicate_note",
    "group_series",
    "load_series",
    "padding_bounds",
    "read_dicom_folder",
    "remove_temporary_folders",
    "rescale_parameters",
    "split_stacks",
    "stack_series_description",
    "stored_dtype",
    "stored_value_range",
    "write_series_atomically",
]
