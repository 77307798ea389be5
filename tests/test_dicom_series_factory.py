"""tests/dicom_factory.py itself: the phantom, the noise and dciodvfy-clean files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from tests.dicom_factory import (
    OBLIQUE,
    add_correlated_noise,
    dicom_tools_available,
    make_phantom,
    run_dcentvfy,
    run_dciodvfy,
    write_ct_series,
    write_mr_series,
)


def test_phantom_and_noise() -> None:
    clean = make_phantom((6, 64, 64), seed=0)
    assert clean.dtype == np.float32 and clean.shape == (6, 64, 64)
    assert clean[0, 0, 0] == -1000.0
    for value in (-1000.0, -850.0, -100.0, 30.0, 40.0, 60.0, 700.0):
        assert np.any(clean == value), value
    neighbours = np.mean(clean[1:] != clean[:-1])
    assert neighbours < 0.1  # neighbouring slices are similar
    assert not np.array_equal(make_phantom((6, 64, 64), seed=1), clean)

    noisy = add_correlated_noise(clean, sigma_hu=20.0, seed=4)
    noise = noisy - clean
    assert noise.std() == pytest.approx(20.0, rel=0.02)
    lag1 = np.mean(noise[:, :, 1:] * noise[:, :, :-1]) / noise.var()
    between_slices = np.mean(noise[1:] * noise[:-1]) / noise.var()
    assert lag1 > 0.5 and abs(between_slices) < 0.05  # correlated in-plane, independent across slices
    assert np.array_equal(add_correlated_noise(clean, 20.0, seed=4), noisy)


@pytest.mark.skipif(not dicom_tools_available(), reason="dciodvfy/dcentvfy not installed")
def test_factory_files_pass_dciodvfy(tmp_path: Path) -> None:
    hu = add_correlated_noise(make_phantom((3, 16, 16)), 10.0, seed=1)
    series = [
        write_ct_series(tmp_path / "ct", hu, padding_value=-2000, orientation=OBLIQUE),
        write_ct_series(tmp_path / "rle", hu, dtype="uint16", bits_stored=12, transfer_syntax=RLELossless),
        write_mr_series(tmp_path / "mr", np.abs(hu + 1000.0), transfer_syntax=ImplicitVRLittleEndian),
    ]
    for paths in series:
        report = run_dciodvfy(paths[0])
        assert report.errors == [] and report.warnings == [], (paths[0], report)
        assert run_dcentvfy(paths) == []
