"""The bundled real MR series (tests/data/volume: GE Signa, 20 oblique slices, Pixel Padding Value 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_series import DerivedSeriesOptions, SourceSeries, build_derived_series, load_series, read_dicom_folder
from dicom_series import write_series_atomically as write
from tests.dicom_factory import dicom_tools_available, new_dciodvfy_errors, run_dcentvfy

DATA = Path(__file__).parent / "data" / "volume"


@pytest.fixture(scope="module")
def mr() -> SourceSeries:
    return load_series(read_dicom_folder(DATA))


def test_loads_sorted_with_spacing_from_positions(mr: SourceSeries) -> None:
    assert len(mr) == 20 and mr.shape == (20, 256, 256)
    assert mr.modality == "MR"
    assert mr.spacing[0] == pytest.approx(6.97, abs=0.05)  # not SliceThickness (5) nor SpacingBetweenSlices
    assert mr.spacing[1:] == pytest.approx((0.859375, 0.859375))
    assert np.all(np.diff(mr.slice_positions) > 0)
    iop = np.asarray([float(v) for v in mr.datasets[0].ImageOrientationPatient])
    assert abs(iop[5]) > 0.1  # oblique
    assert 0.05 < mr.padding_mask.mean() < 0.9  # stored 0 = Pixel Padding Value
    assert all("non-uniform" in w for w in mr.warnings)  # gaps 6.96..7.07 mm


def test_derived_series_passes_dciodvfy_with_no_new_errors(mr: SourceSeries, tmp_path: Path) -> None:
    options = DerivedSeriesOptions("DENOISED FSE PD research use", None, "0.1.0")
    derived = build_derived_series(mr, mr.volume, options)
    out = write(derived, tmp_path, "mr")
    files = sorted(out.iterdir())
    for z, (src, path) in enumerate(zip(mr.datasets, files, strict=True)):
        ds = pydicom.dcmread(path)
        assert np.array_equal(ds.pixel_array, src.pixel_array)  # identity denoiser is lossless
        assert ds.ImagePositionPatient == src.ImagePositionPatient
        assert ds.ImageOrientationPatient == src.ImageOrientationPatient
        assert ds.InstanceNumber == z + 1 and ds.SeriesNumber == int(src.SeriesNumber) + 1000
    if not dicom_tools_available():
        pytest.skip("dciodvfy/dcentvfy (Debian package dicom3tools) not installed")
    for z in (0, 9, 19):
        assert new_dciodvfy_errors(mr.paths[z], files[z]) == []
    assert run_dcentvfy(files) == []
