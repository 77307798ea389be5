"""Weight maps W_i: where neighbouring slices i and i+1 show the same anatomy.

NS-N2N uses slice i+1 as a Noise2Noise target for slice i only in *matched* regions. A region is
matched when the two slices agree after strong low-pass filtering, i.e. when their difference there
is explained by noise alone:

    L_k  = Median_m( Gauss_sigma( x_k ) )                     k in {i, i+1}, in-plane filters
    D_i  = L_i - L_{i+1}
    s_i  = 1.4826 * median( | D_i - median(D_i) | )            robust noise scale of D_i (MAD)
    W_i  = 1[ |D_i| <= k * s_i ]  and both pixels not padding

Threshold rule (our decision, replacing the fixed tau = 0.015 of re-implementations, which does not
transfer between CT windows, MR and dose levels): the threshold is ``k`` robust standard deviations of
the pair's own low-pass residual. Most of a pair is matched anatomy, so the median absolute deviation
of D_i measures the low-pass-filtered noise of that pair (robust to up to half the pixels being real
changes) and adapts per pair to the noise level, including tube-current modulation along z. Pixels
whose residual is exactly zero (noise-free padding or air outside the reconstruction circle) are left
out of the scale estimate so they cannot drive it to zero. ``k = 3`` keeps 99.7 % of noise-only
pixels (Gaussian residual) and rejects anatomy changes larger than three noise units.

Everything is vectorised torch (CPU or CUDA), processed in chunks of slices to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["WeightMaps", "compute_weight_maps", "lowpass", "robust_scale"]

_MAD_TO_SIGMA = 1.4826


@dataclass
class WeightMaps:
    """Weight maps of a volume of D slices.

    Attributes:
        weights: bool tensor (D-1, H, W); ``weights[i]`` is W_i for the pair (i, i+1).
        thresholds: float tensor (D-1,), the threshold used for each pair (network units).
        matched_fraction: fraction of valid pixels marked matched, over all pairs.
    """

    weights: torch.Tensor
    thresholds: torch.Tensor
    matched_fraction: float


def gaussian_kernel1d(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def lowpass(slices: torch.Tensor, sigma: float, median_size: int) -> torch.Tensor:
    """Separable Gaussian then ``median_size`` x ``median_size`` median, per slice; (N, H, W) -> (N, H, W).

    Borders are reflected so edges are not darkened.
    """
    x = slices.unsqueeze(1).float()
    k = gaussian_kernel1d(sigma, x.device)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    if median_size > 1:
        m = median_size // 2
        patches = F.unfold(F.pad(x, (m, m, m, m), mode="reflect"), kernel_size=median_size)
        x = patches.median(dim=1).values.view_as(x[:, 0]).unsqueeze(1)
    return x[:, 0]


def robust_scale(diff: torch.Tensor, valid: torch.Tensor, max_samples: int = 1_000_000) -> torch.Tensor:
    """MAD-based standard deviation of ``diff`` over ``valid`` pixels with a non-zero residual.

    Returns a 0-d tensor; 0 when there is nothing to measure.
    """
    values = diff[valid & (diff != 0)]
    if values.numel() == 0:
        return torch.zeros((), device=diff.device)
    if values.numel() > max_samples:
        values = values[:: values.numel() // max_samples + 1]
    centre = values.median()
    return _MAD_TO_SIGMA * (values - centre).abs().median()


def compute_weight_maps(
    volume: torch.Tensor,
    valid: torch.Tensor | None,
    *,
    sigma: float,
    median_size: int,
    threshold_k: float,
    chunk: int = 16,
) -> WeightMaps:
    """Weight maps for every neighbouring pair of ``volume`` (D, H, W), normalised intensities.

    Args:
        volume: (D, H, W) float tensor, D >= 2.
        valid: (D, H, W) bool tensor, False for padding; ``None`` = all valid.
        sigma: in-plane Gaussian sigma in pixels.
        median_size: odd median filter size (1 = none).
        threshold_k: threshold in robust standard deviations of each pair's low-pass residual.
        chunk: slices filtered at once (memory bound: about ``chunk * median_size**2 * H * W`` floats).
    """
    depth = volume.shape[0]
    if depth < 2:
        raise ValueError("weight maps need at least two slices")
    weights = torch.zeros((depth - 1, *volume.shape[1:]), dtype=torch.bool, device=volume.device)
    thresholds = torch.zeros(depth - 1, dtype=torch.float32, device=volume.device)
    previous = None
    matched = 0
    total = 0
    for start in range(0, depth, chunk):
        filtered = lowpass(volume[start : start + chunk], sigma, median_size)
        if previous is not None:
            filtered = torch.cat([previous, filtered], dim=0)
            first = start - 1
        else:
            first = start
        for j in range(filtered.shape[0] - 1):
            i = first + j
            diff = filtered[j] - filtered[j + 1]
            pair_valid = valid[i] & valid[i + 1] if valid is not None else torch.ones_like(diff, dtype=torch.bool)
            scale = robust_scale(diff, pair_valid)
            tau = threshold_k * scale
            w = (diff.abs() <= tau) & pair_valid
            weights[i] = w
            thresholds[i] = tau
            matched += int(w.sum())
            total += int(pair_valid.sum())
        previous = filtered[-1:]
    return WeightMaps(weights=weights, thresholds=thresholds, matched_fraction=matched / max(total, 1))
