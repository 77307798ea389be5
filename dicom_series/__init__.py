"""Holoscan-free DICOM I/O for nsn2n-denoise: read a single-frame CT/MR series, build the derived
(denoised) series and an Encapsulated PDF report, and write them atomically.

Depends only on pydicom, highdicom and numpy, so it can be tested without MONAI Deploy; the
application's operators are thin adapters around it.
"""

from dicom_series.derived import (
    IMPLEMENTATION_CLASS_UID,
    SOFTWARE_NAME,
    DerivedSeriesOptions,
    EncapsulatedPdfOptions,
    build_derived_series,
    build_encapsulated_pdf,
)
from dicom_series.reader import (
    DicomReadError,
    SeriesError,
    SourceSeries,
    group_series,
    load_series,
    read_dicom_folder,
    rescale_parameters,
    stored_value_range,
)
from dicom_series.writer import OutputError, write_series_atomically

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "SOFTWARE_NAME",
    "DerivedSeriesOptions",
    "DicomReadError",
    "EncapsulatedPdfOptions",
    "OutputError",
    "SeriesError",
    "SourceSeries",
    "build_derived_series",
    "build_encapsulated_pdf",
    "group_series",
    "load_series",
    "read_dicom_folder",
    "rescale_parameters",
    "stored_value_range",
    "write_series_atomically",
]
