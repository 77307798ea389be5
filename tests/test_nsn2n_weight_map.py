"""Weight maps: moved anatomy is unmatched, flat noisy regions are matched, threshold follows the noise."""

import numpy as np
import pytest
import torch

from nsn2n.weight_map import compute_weight_maps, guide_filter, pixel_noise_sigma, robust_scale


def _pair(noise_sigma: float, shift: int, seed: int = 0) -> torch.Tensor:
    """Two 64x64 slices: a bright square whose right edge moves by ``shift`` pixels, plus white noise."""
    rng = np.random.default_rng(seed)
    slices = np.zeros((2, 64, 64), np.float32)
    slices[0, 20:44, 16:40] = 1.0
    slices[1, 20:44, 16 : 40 + shift] = 1.0
    slices += rng.normal(0, noise_sigma, slices.shape).astype(np.float32)
    return torch.from_numpy(slices)


def _maps(volume: torch.Tensor, k: float = 3.0):
    return compute_weight_maps(volume, None, sigma=2.0, median_size=5, threshold_k=k)


def test_moved_edge_is_unmatched_and_flat_noise_is_matched():
    maps = _maps(_pair(noise_sigma=0.1, shift=8))
    w = maps.weights[0].numpy()
    # the strip the edge moved across (columns 40..47, well inside the square's rows) is unmatched
    assert w[24:40, 41:47].mean() < 0.05
    # flat background far from any edge and the untouched inside of the square are matched (the
    # edge-preserving guide averages fewer pixels next to an edge, so stay a few pixels away from it)
    assert w[2:14, 2:62].mean() > 0.95
    assert w[26:38, 23:33].mean() > 0.9


def test_threshold_scales_with_noise_level():
    low = _maps(_pair(noise_sigma=0.02, shift=0)).thresholds[0].item()
    high = _maps(_pair(noise_sigma=0.2, shift=0)).thresholds[0].item()
    assert high == pytest.approx(10 * low, rel=0.25)


def test_same_fraction_matched_whatever_the_units():
    """Scaling the intensities (another CT window, MR units) must not change the map."""
    volume = _pair(noise_sigma=0.1, shift=6)
    a = _maps(volume).weights
    b = _maps(volume * 250.0 + 1000.0).weights
    assert (a == b).float().mean() > 0.995


def test_padding_is_never_matched():
    volume = _pair(noise_sigma=0.1, shift=0)
    valid = torch.ones_like(volume, dtype=torch.bool)
    valid[1, :, :10] = False
    maps = compute_weight_maps(volume, valid, sigma=2.0, median_size=5, threshold_k=3.0)
    assert not maps.weights[0, :, :10].any()


def test_robust_scale_ignores_exact_zero_residuals():
    diff = torch.zeros(100, 100)
    diff[:, :30] = torch.randn(100, 30, generator=torch.Generator().manual_seed(0))
    scale = robust_scale(diff, torch.ones_like(diff, dtype=torch.bool))
    assert 0.8 < scale.item() < 1.2


def test_guide_preserves_constant_and_shape():
    x = torch.full((3, 40, 50), 7.0)
    y = guide_filter(x, sigma_s=2.0, sigma_r=0.1, median_size=5)
    assert y.shape == x.shape
    assert torch.allclose(y, x)


def test_guide_smooths_noise_but_keeps_a_sharp_edge():
    rng = np.random.default_rng(1)
    clean = np.zeros((2, 64, 64), np.float32)
    clean[:, :, 32:] = 1.0
    noisy = torch.from_numpy(clean + rng.normal(0, 0.05, clean.shape).astype(np.float32))
    sigma_n = pixel_noise_sigma(noisy, None)
    assert 0.035 < sigma_n < 0.07
    guide = guide_filter(noisy, sigma_s=2.0, sigma_r=2 * sigma_n, median_size=5).numpy()
    assert guide[:, 8:56, 4:24].std() < 0.4 * 0.05  # flat region smoothed
    step = guide[:, 8:56, 33].mean() - guide[:, 8:56, 30].mean()
    assert step > 0.9  # the edge keeps its full height within a pixel or two


def test_subpixel_edge_shift_is_unmatched():
    """A high-contrast edge that moves by one pixel between slices must not be a Noise2Noise target."""
    rng = np.random.default_rng(2)
    clean = np.zeros((2, 64, 64), np.float32)
    clean[0, :, 30:] = 1.0
    clean[1, :, 31:] = 1.0
    noisy = torch.from_numpy(clean + rng.normal(0, 0.03, clean.shape).astype(np.float32))
    maps = _maps(noisy)
    assert maps.weights[0, 8:56, 30].float().mean() < 0.1
    assert maps.weights[0, 8:56, 5:20].float().mean() > 0.95
