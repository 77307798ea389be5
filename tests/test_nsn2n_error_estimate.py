"""The Monte-Carlo SURE error estimate against known answers on small synthetic volumes.

Every test builds a smooth phantom ``s``, adds Gaussian noise of a known level (white or in-plane
correlated), and compares the estimated RMS error of a denoiser's output with the true RMS error
``||f(y) - s||`` that the known clean volume gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from nsn2n.error_estimate import ErrorEstimate, estimate_error, evaluation_slices
from nsn2n.noise_model import BLOCK_PX, NoiseModel

SHAPE = (12, 96, 96)
SIGMA = 0.1


def phantom(shape=SHAPE) -> np.ndarray:
    """Smooth blobs and one sharp-edged disc (so that a smoothing filter has both noise and bias to lose)."""
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    s = 0.6 + 0.3 * np.sin(2 * np.pi * x / 70.0) * np.cos(2 * np.pi * y / 55.0) + 0.02 * z
    s += 0.4 * ((y - h / 2) ** 2 + (x - w / 3) ** 2 < (h / 6) ** 2)
    return s.astype(np.float32)


def disc_rim(shape, half_width: float) -> np.ndarray:
    """Pixels within ``half_width`` of the phantom disc's edge."""
    d, h, w = shape
    _, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    return np.abs(np.hypot(y - h / 2, x - w / 3) - h / 6) < half_width


def noise_model(sigma: float, kernel: np.ndarray, shape=SHAPE) -> NoiseModel:
    d, h, w = shape
    blocks = np.full((d, -(-h // BLOCK_PX), -(-w // BLOCK_PX)), sigma, np.float32)
    return NoiseModel(blocks, kernel.astype(np.float32), shape, float("nan"), "test")


WHITE = np.ones((1, 1), np.float32)


def blur_kernel() -> np.ndarray:
    """A 5x5 shaping kernel of unit energy: noise like a smooth CT reconstruction kernel's."""
    k = np.outer(*(2 * [np.array([1.0, 3.0, 4.0, 3.0, 1.0])]))
    return (k / np.sqrt((k**2).sum())).astype(np.float32)


def make_noise(kernel: np.ndarray, sigma: float, seed: int, shape=SHAPE) -> np.ndarray:
    """Gaussian noise of std ``sigma`` per pixel, correlated in-plane by ``kernel``, independent between slices."""
    white = np.random.default_rng(seed).standard_normal(shape)
    return (sigma * np.stack([ndimage.correlate(s, kernel, mode="wrap") for s in white])).astype(np.float32)


def inplane_gauss(width: float):
    def denoise(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(volume[slices].astype(np.float64), (0, width, width))

    return denoise


def true_rmse(denoise, noisy, clean, mask, slices=None) -> float:
    slices = np.arange(noisy.shape[0]) if slices is None else np.asarray(slices)
    out = denoise(noisy, slices)
    return float(np.sqrt(np.mean((out - clean[slices])[mask[slices]] ** 2)))


def test_identity_denoiser_reports_no_reduction():
    clean = phantom()
    noisy = clean + make_noise(WHITE, SIGMA, seed=1)
    est = estimate_error(lambda v, z: v[z].copy(), noisy, noise_model(SIGMA, WHITE))
    assert isinstance(est, ErrorEstimate)
    assert est.rmse_before == pytest.approx(SIGMA, rel=1e-5)
    assert est.mean_change_sq == 0.0
    assert est.rmse_after == pytest.approx(est.rmse_before, rel=0.03)
    assert abs(est.reduction) < 0.03
    assert not est.clamped


@pytest.mark.parametrize("width", [0.8, 2.0])
def test_white_noise_gaussian_filter_matches_true_error(width):
    clean = phantom()
    noisy = clean + make_noise(WHITE, SIGMA, seed=2)
    denoise = inplane_gauss(width)
    est = estimate_error(denoise, noisy, noise_model(SIGMA, WHITE))
    truth = true_rmse(denoise, noisy, clean, np.ones(SHAPE, bool))
    assert truth < 0.8 * SIGMA  # the filter really removes noise: the check is not trivial
    assert est.rmse_after == pytest.approx(truth, rel=0.10)


def test_correlated_noise_needs_the_correlated_probe():
    """With blotchy noise a smoothing filter removes much less than white-noise SURE claims."""
    clean = phantom()
    kernel = blur_kernel()
    noisy = clean + make_noise(kernel, SIGMA, seed=3)
    denoise = inplane_gauss(1.5)
    truth = true_rmse(denoise, noisy, clean, np.ones(SHAPE, bool))
    ours = estimate_error(denoise, noisy, noise_model(SIGMA, kernel))
    white = estimate_error(denoise, noisy, noise_model(SIGMA, WHITE))
    true_reduction = 1 - truth / SIGMA
    assert ours.rmse_after == pytest.approx(truth, rel=0.10)
    assert abs(ours.reduction - true_reduction) < 0.15 * abs(true_reduction)
    # The white-noise version under-charges the pass-through noise: error too low, reduction overclaimed.
    assert white.rmse_after < 0.7 * truth
    assert white.reduction - true_reduction > 0.25 * abs(true_reduction)


def test_mask_restricts_the_estimate_to_its_pixels():
    """The edge region (the disc's rim) has a larger error than the flat region; each mask gets its own."""
    clean = phantom()
    noisy = clean + make_noise(WHITE, SIGMA, seed=4)
    denoise = inplane_gauss(1.5)
    rim = disc_rim(SHAPE, 3.0)
    flat = ~ndimage.binary_dilation(rim, iterations=4)
    est_rim = estimate_error(denoise, noisy, noise_model(SIGMA, WHITE), rim)
    est_flat = estimate_error(denoise, noisy, noise_model(SIGMA, WHITE), flat)
    true_rim = true_rmse(denoise, noisy, clean, rim)
    true_flat = true_rmse(denoise, noisy, clean, flat)
    assert true_rim > 3 * true_flat
    assert est_rim.rmse_after == pytest.approx(true_rim, rel=0.10)
    assert est_flat.rmse_after == pytest.approx(true_flat, rel=0.12)
    assert est_rim.pixels == int(rim.sum()) and est_flat.pixels == int(flat.sum())


def test_slice_subset_and_3d_context():
    """A through-slice denoiser reading unperturbed neighbours: the subset estimate matches the truth there."""
    shape = (30, 96, 96)
    clean = phantom(shape)
    noisy = clean + make_noise(WHITE, SIGMA, seed=5, shape=shape)
    calls = []

    def mean3(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
        calls.append(slices.copy())
        padded = np.concatenate([volume[:1], volume, volume[-1:]]).astype(np.float64)
        return (padded[slices] + padded[slices + 1] + padded[slices + 2]) / 3.0

    est = estimate_error(mean3, noisy, noise_model(SIGMA, WHITE, shape), max_slices=6, probes=2)
    assert len(est.slices) == 6 and est.slices[0] == 0 and est.slices[-1] == shape[0] - 1
    assert all(np.array_equal(c, np.array(est.slices)) for c in calls) and len(calls) == 3
    assert est.pixels == 6 * 96 * 96
    truth = true_rmse(mean3, noisy, clean, np.ones(shape, bool), est.slices)
    assert truth < 0.7 * SIGMA
    assert est.rmse_after == pytest.approx(truth, rel=0.10)


def test_evaluation_slices_skip_empty_slices_and_are_evenly_spaced():
    mask = np.zeros((40, 4, 4), bool)
    mask[10:30, 1, 1] = True
    picked = evaluation_slices(mask, 40, max_slices=5)
    assert picked.tolist() == [10, 15, 20, 24, 29]
    assert evaluation_slices(None, 3, max_slices=16).tolist() == [0, 1, 2]


def test_input_is_left_unchanged_and_the_estimate_is_reproducible():
    clean = phantom()
    noisy = clean + make_noise(WHITE, SIGMA, seed=6)
    before = noisy.copy()
    model = noise_model(SIGMA, WHITE)
    a = estimate_error(inplane_gauss(1.0), noisy, model, max_slices=4)
    b = estimate_error(inplane_gauss(1.0), noisy, model, max_slices=4, perturb_in_place=True)
    assert np.array_equal(noisy, before)
    assert a == b


def test_overestimated_noise_is_clamped_and_flagged():
    clean = phantom()
    noisy = clean + make_noise(WHITE, SIGMA, seed=7)
    est = estimate_error(inplane_gauss(3.0), noisy, noise_model(3 * SIGMA, WHITE))
    assert est.clamped and est.mse_after_raw < 0 and est.rmse_after == 0.0


def test_bad_inputs_are_refused():
    noisy = phantom()
    model = noise_model(SIGMA, WHITE)
    with pytest.raises(ValueError, match="shape"):
        estimate_error(lambda v, z: v[z][:, :5], noisy, model)
    with pytest.raises(ValueError, match="no pixel"):
        estimate_error(lambda v, z: v[z], noisy, model, np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="noise model"):
        estimate_error(lambda v, z: v[z], noisy[:5], model)
    assert math.isnan(ErrorEstimate(0.0, 0.0, 0.0, 0.0, 0.0, False, (), 0, 1, 0.1).ratio)
