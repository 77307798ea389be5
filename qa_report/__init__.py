"""QA report of a denoised series: display windows, before/after montage (PNG), A4 PDF report and the
per-series run record (JSON + schema).

Deliberately light: imports only numpy, Pillow, matplotlib, pypdf (tests) and jsonschema; never
holoscan, MONAI or torch, so it can be used and tested without the application runtime.
"""

from .montage import montage_size, render_montage, render_montage_image, save_montage
from .notice import NOTICE
from .pdf import format_noise, format_reduction, render_report_pdf
from .run_record import (
    SCHEMA_VERSION,
    DerivedSeriesInfo,
    QaReportFiles,
    RunRecord,
    RunRecordError,
    SourceSeriesInfo,
    StageSeconds,
    VolumeInfo,
    downsample_loss_history,
    make_run_record,
    noise_reduction_percent,
    validate_run_record,
    write_run_record,
)
from .windows import CT_SOFT_TISSUE_WINDOW, difference_window, display_window

__all__ = [
    "CT_SOFT_TISSUE_WINDOW",
    "NOTICE",
    "SCHEMA_VERSION",
    "DerivedSeriesInfo",
    "QaReportFiles",
    "RunRecord",
    "RunRecordError",
    "SourceSeriesInfo",
    "StageSeconds",
    "VolumeInfo",
    "difference_window",
    "display_window",
    "downsample_loss_history",
    "format_noise",
    "format_reduction",
    "make_run_record",
    "montage_size",
    "noise_reduction_percent",
    "render_montage",
    "render_montage_image",
    "render_report_pdf",
    "save_montage",
    "validate_run_record",
    "write_run_record",
]
