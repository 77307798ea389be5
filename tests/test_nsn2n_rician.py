"""The Rician noise floor of MR magnitude data (nsn2n.rician) and its correction in denoise_volume."""

import dataclasses
import math

import numpy as np
import pytest

from nsn2n import api, denoise_volume
from nsn2n.noise import inplane_noise_sigma
from nsn2n.rician import RAYLEIGH_MEAN, rician_mean, rician_signal
from tests.conftest import TINY

SMALL = dataclasses.replace(TINY, max_steps=300, batch_size=4, seed=1)


def _rician(signal: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imag = rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, imag).astype(np.float32)


def test_the_mean_matches_sampled_rician_magnitudes():
    sigma = 1.0
    for snr in (0.0, 0.5, 1.0, 2.0, 3.0, 6.0):
        sample = _rician(np.full(400_000, snr * sigma), sigma, seed=int(snr * 10))
        assert float(rician_mean(snr)) == pytest.approx(sample.mean(), rel=5e-3), snr


def test_the_mean_has_the_known_limits():
    assert float(rician_mean(0.0)) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-12)
    for snr in (20.0, 50.0, 200.0):  # A + sigma^2 / (2A) at high signal
        assert float(rician_mean(snr)) == pytest.approx(snr + 1 / (2 * snr), rel=1e-5)


def test_the_signal_inverts_the_mean_and_is_zero_below_the_noise_floor():
    sigma = np.float32(7.0)
    signal = np.array([0.0, 0.3, 1.0, 2.5, 4.0, 10.0, 45.0, 300.0]) * sigma
    back = rician_signal(rician_mean(signal / sigma) * sigma, sigma)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back[1:], signal[1:], rtol=2e-3)
    assert back[0] < 0.05 * sigma  # the mean is flat at zero signal: a tiny step in A
    below = rician_signal(np.array([0.0, 0.5, RAYLEIGH_MEAN * 0.999]) * sigma, sigma)
    np.testing.assert_array_equal(below, 0.0)


def test_the_signal_takes_a_sigma_map_and_rejects_a_bad_one():
    mean = np.full((2, 3), 2.0 * RAYLEIGH_MEAN, np.float32)
    sigma = np.array([[1.0, 2.5, 3.0]], np.float32)
    out = rician_signal(mean, sigma)
    assert out.shape == (2, 3)
    assert out[0, 0] > 0 and np.all(out[:, 1:] == 0)  # above one pixel's floor, below the others'
    assert out[0, 0] == pytest.approx(rician_signal(np.float32(2.0 * RAYLEIGH_MEAN), 1.0))
    with pytest.raises(ValueError, match="sigma"):
        rician_signal(mean, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        rician_signal(mean, np.nan)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _head_phantom(depth: int = 6, size: int = 48) -> np.ndarray:
    """MR-like magnitude slab: air (0), a head of 100, a dark ventricle of 15 drifting along z."""
    zz, yy, xx = np.mgrid[0:depth, 0:size, 0:size].astype(np.float32)
    c = size / 2
    vol = np.zeros((depth, size, size), np.float32)
    head = ((yy - c) / (0.4 * size)) ** 2 + ((xx - c) / (0.33 * size)) ** 2 < 1
    vol[head] = 100.0
    ventricle = ((yy - c - 0.3 * zz) / (0.1 * size)) ** 2 + ((xx - c) / (0.07 * size)) ** 2 < 1
    vol[ventricle] = 15.0
    return vol


@pytest.fixture(scope="module")
def mr_case():
    clean = _head_phantom()
    return clean, _rician(clean, 10.0, seed=5)


@pytest.fixture(scope="module")
def mr_outputs(mr_case):
    _, noisy = mr_case
    on = denoise_volume(noisy, (1.0, 1.0, 1.0), "MR", SMALL)
    off = denoise_volume(noisy, (1.0, 1.0, 1.0), "MR", dataclasses.replace(SMALL, rician_bias_correction=False))
    return on, off


def test_mr_magnitude_output_loses_the_noise_floor(mr_case, mr_outputs):
    clean, _ = mr_case
    on, off = mr_outputs
    assert on.report.rician_correction_sigma == pytest.approx(10.0, rel=0.15)
    assert off.report.rician_correction_sigma is None
    air = clean == 0
    # Without the correction the air keeps its Rayleigh mean (1.25 sigma = 12.5); with it, about half goes
    # (what the network leaves of the noise's spread in air stays partly above the floor).
    assert off.denoised[air].mean() > 10.0
    assert on.denoised[air].mean() < 0.6 * off.denoised[air].mean()
    assert _rmse(on.denoised, clean) < 0.8 * _rmse(off.denoised, clean)
    dark = clean == 15.0
    err = {k: abs(float(r.denoised[dark].mean()) - 15.0) for k, r in (("on", on), ("off", off))}
    assert err["on"] < err["off"]
    # Only the known mapping differs: same training, and bright tissue moves by about sigma^2 / (2 A) = 0.5.
    head = clean == 100.0
    assert 0.0 < float((off.denoised - on.denoised)[head].mean()) < 1.5
    assert np.all(on.denoised >= 0)


def test_ct_and_signed_mr_are_never_corrected(mr_case):
    _, noisy = mr_case
    signed = noisy - 20.0  # negative values: not magnitude data
    result = denoise_volume(signed, (1.0, 1.0, 1.0), "MR", dataclasses.replace(SMALL, max_steps=5))
    assert result.report.rician_correction_sigma is None
    ct = denoise_volume(noisy * 10 - 1000, (1.0, 1.0, 1.0), "CT", dataclasses.replace(SMALL, max_steps=5))
    assert ct.report.rician_correction_sigma is None


def test_the_inplane_bound_reads_white_noise_and_reads_correlated_noise_low():
    rng = np.random.default_rng(2)
    flat = np.full((4, 64, 64), 50.0)
    inside = np.ones(flat.shape, bool)
    white = flat + rng.normal(0.0, 3.0, flat.shape)
    assert inplane_noise_sigma(white, inside) == pytest.approx(3.0, rel=0.05)
    smooth = np.stack([np.convolve(r, np.ones(3) / 3, "same") for r in rng.normal(0.0, 3.0, (4 * 64, 64))])
    correlated = flat + smooth.reshape(flat.shape) / smooth.std() * 3.0
    assert inplane_noise_sigma(correlated, inside) < 0.8 * 3.0
    assert math.isnan(inplane_noise_sigma(white, np.zeros(flat.shape, bool)))


def test_the_correction_level_is_capped_by_the_inplane_bound(mr_case, monkeypatch):
    """A paired-slice level raised by anatomy (thick slices) must not push dark tissue to zero."""
    _, noisy = mr_case
    monkeypatch.setattr(api, "inplane_noise_sigma", lambda volume, foreground: 4.0 / 100.0)
    config = dataclasses.replace(SMALL, max_steps=5)
    result = denoise_volume(noisy, (1.0, 1.0, 1.0), "MR", config)
    scale = result.model.normalizer.scale
    assert result.report.rician_correction_sigma == pytest.approx(4.0 / 100.0 * scale, rel=1e-4)
