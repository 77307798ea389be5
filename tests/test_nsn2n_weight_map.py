"""Weight maps: moved anatomy is unmatched, flat noisy regions are matched, threshold follows the noise."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsn2n.weight_map import (
    bilateral,
    compute_weight_maps,
    guide_filter,
    median_filter,
    pixel_noise_sigma,
    robust_scale,
)


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


def _reference_median(x: torch.Tensor, size: int) -> torch.Tensor:
    """The plain definition: every window unfolded, its median taken (reflected borders)."""
    m = size // 2
    patches = F.unfold(F.pad(x.unsqueeze(1), (m, m, m, m), mode="reflect"), kernel_size=size)
    return patches.median(dim=1).values.view_as(x)


def _reference_bilateral(x: torch.Tensor, sigma_s: float, sigma_r: float) -> torch.Tensor:
    """The plain definition: every window unfolded, weighted by distance and intensity difference."""
    r = math.ceil(2.0 * sigma_s)
    n, h, w = x.shape
    offsets = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    spatial = torch.exp(-(yy**2 + xx**2) / (2.0 * sigma_s**2)).reshape(1, -1, 1)
    patches = F.unfold(F.pad(x.unsqueeze(1), (r, r, r, r), mode="reflect"), kernel_size=2 * r + 1)
    weights = spatial * torch.exp(-((patches - x.reshape(n, 1, h * w)) ** 2) / (2.0 * sigma_r**2))
    return ((weights * patches).sum(1) / weights.sum(1)).view(n, h, w)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_median_filter_equals_the_median_of_every_window(size):
    rng = np.random.default_rng(3)
    noise = torch.from_numpy(rng.normal(0, 1, (3, 23, 19)).astype(np.float32))
    ties = torch.from_numpy(rng.integers(0, 4, (2, 17, 16)).astype(np.float32))  # many equal values
    for x in (noise, ties):
        assert torch.equal(median_filter(x, size), _reference_median(x, size))


@pytest.mark.parametrize("sigma_s", [1.0, 2.0, 2.5])
def test_bilateral_equals_the_windowed_definition(sigma_s):
    rng = np.random.default_rng(4)
    clean = np.zeros((3, 40, 37), np.float32)
    clean[:, 10:30, 12:] = 1.0
    x = torch.from_numpy(clean + rng.normal(0, 0.1, clean.shape).astype(np.float32))
    got = bilateral(x, sigma_s, sigma_r=0.2)
    assert torch.allclose(got, _reference_bilateral(x, sigma_s, 0.2), rtol=0, atol=1e-5)


def test_weight_maps_do_not_depend_on_the_threads_and_restore_them():
    """Slice tasks on a thread pool give the same maps as one thread, and leave torch's thread count as it was."""
    volume = torch.cat([_pair(noise_sigma=0.1, shift=s, seed=s) for s in (0, 3, 6)])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = _maps(volume)
        torch.set_num_threads(3)
        pooled = _maps(volume)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert torch.equal(serial.weights, pooled.weights)
    assert torch.equal(serial.thresholds, pooled.thresholds)
    assert serial.pixel_sigma == pooled.pixel_sigma
