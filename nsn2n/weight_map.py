"""Weight maps W_i: where neighbouring slices i and i+1 show the same anatomy.

NS-N2N uses slice i+1 as a Noise2Noise target for slice i only in *matched* regions. A region is
matched when the two slices agree after strong low-pass filtering, i.e. when their difference there
is explained by noise alone:

    L_k  = Median_m( Bilateral_{sigma, r * sigma_n}( x_k ) )    k in {i, i+1}, in-plane filters
    D_i  = L_i - L_{i+1}
    s_i  = noise scale of D_i  (see below)
    W_i  = 1[ |D_i| <= k * s_i ]  and both pixels not padding

Threshold rule (our decision, replacing the fixed tau = 0.015 of re-implementations, which does not
transfer between CT windows, MR and dose levels): the threshold is ``k`` standard deviations of the
*noise* in the pair's low-pass residual, so it adapts to the noise level of each volume and pair.

The low-pass guide is edge-preserving (the paper's guide is NLM + median; re-implementations found a
bilateral + median guide as good and far cheaper): a bilateral filter whose spatial sigma is
``lowpass_sigma_px`` and whose range sigma is ``guide_range_k`` times the pixel noise sigma_n, followed by
a median. Why edge-preserving: a plain (Gaussian) low-pass smears a sharp edge that moved by a pixel or
less between the slices into a small difference that passes the threshold, and the network then learns
to blur every high-contrast edge (air/tissue in CT). sigma_n is the quiet-tile MAD (below) of the raw
neighbouring-slice differences divided by sqrt(2), the median over the volume's pairs.

Estimating the noise scale of the residual is the crux. The median absolute deviation (MAD) of the whole
residual is not enough: with thick slices anatomy changes everywhere a little, so the MAD of the whole
residual counts anatomy as noise, lets anatomy differences of several noise units pass as "matched" and
the result is blurred. We therefore use the *quietest tiles*: the residual is cut into 32x32 tiles, each
tile's MAD is computed over its valid, non-zero pixels, and ``s_i`` is the 25th percentile of the tile
MADs of the pair (tiles in homogeneous tissue, air or background, where the residual is noise only).
Exactly-zero residuals (noise-free padding or air outside the reconstruction circle) are left out. With
fewer than 4 usable tiles the pair's overall MAD is used. The per-pair scales are then smoothed with a
running median over 5 pairs. ``k = 3`` keeps about 99 % of noise-only pixels and rejects anatomy changes
above about three noise units.

Everything is vectorised torch (CPU or CUDA), processed in chunks of slices to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .noise import MAD_TO_SIGMA

__all__ = [
    "WeightMaps",
    "bilateral",
    "compute_weight_maps",
    "guide_filter",
    "pixel_noise_sigma",
    "quiet_tile_scale",
    "robust_scale",
]


@dataclass
class WeightMaps:
    """Weight maps of a volume of D slices.

    Attributes:
        weights: bool tensor (D-1, H, W); ``weights[i]`` is W_i for the pair (i, i+1).
        thresholds: float tensor (D-1,), the threshold used for each pair (network units).
        matched_fraction: fraction of valid pixels marked matched, over all pairs.
        pixel_sigma: pixel noise sigma (network units) used for the guide's range kernel.
    """

    weights: torch.Tensor
    thresholds: torch.Tensor
    matched_fraction: float
    pixel_sigma: float = float("nan")


def _median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) -> (N, H, W) ``size`` x ``size`` median with reflected borders."""
    if size <= 1:
        return x
    m = size // 2
    patches = F.unfold(F.pad(x.unsqueeze(1), (m, m, m, m), mode="reflect"), kernel_size=size)
    return patches.median(dim=1).values.view_as(x)


def bilateral(slices: torch.Tensor, sigma_s: float, sigma_r: float, max_elements: int = 48_000_000) -> torch.Tensor:
    """Bilateral filter per slice, (N, H, W) -> (N, H, W) float32; window radius ``ceil(2 * sigma_s)``.

    Processed a few slices at a time so that the unfolded window stays below ``max_elements`` floats.
    """
    r = max(1, math.ceil(2.0 * sigma_s))
    offsets = torch.arange(-r, r + 1, dtype=torch.float32, device=slices.device)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    spatial = torch.exp(-(yy**2 + xx**2) / (2.0 * sigma_s**2)).reshape(1, -1, 1)
    inv_two_var = 1.0 / (2.0 * max(float(sigma_r), 1e-12) ** 2)
    n, h, w = slices.shape
    out = torch.empty((n, h, w), dtype=torch.float32, device=slices.device)
    chunk = max(1, max_elements // ((2 * r + 1) ** 2 * h * w))
    for start in range(0, n, chunk):
        x = slices[start : start + chunk].unsqueeze(1).float()
        patches = F.unfold(F.pad(x, (r, r, r, r), mode="reflect"), kernel_size=2 * r + 1)
        weights = spatial * torch.exp(-((patches - x.reshape(x.shape[0], 1, h * w)) ** 2) * inv_two_var)
        out[start : start + chunk] = ((weights * patches).sum(1) / weights.sum(1)).view(-1, h, w)
    return out


def guide_filter(slices: torch.Tensor, sigma_s: float, sigma_r: float, median_size: int) -> torch.Tensor:
    """The weight map's edge-preserving low-pass: bilateral, then median (see the module docstring)."""
    return _median_filter(bilateral(slices, sigma_s, sigma_r), median_size)


def pixel_noise_sigma(volume: torch.Tensor, valid: torch.Tensor | None, max_pairs: int = 32) -> float:
    """Pixel noise sigma from raw neighbouring-slice differences (quiet tiles, / sqrt 2), median over pairs."""
    depth = volume.shape[0]
    pairs = torch.linspace(0, depth - 2, min(max_pairs, depth - 1)).round().long().unique().tolist()
    scales = []
    for i in pairs:
        pair_valid = valid[i] & valid[i + 1] if valid is not None else torch.ones_like(volume[i], dtype=torch.bool)
        scales.append(quiet_tile_scale(volume[i].float() - volume[i + 1].float(), pair_valid))
    return float(torch.stack(scales).median()) / math.sqrt(2.0)


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
    return MAD_TO_SIGMA * (values - centre).abs().median()


def quiet_tile_scale(
    diff: torch.Tensor, valid: torch.Tensor, tile: int | None = None, quantile: float = 0.25, min_tiles: int = 4
) -> torch.Tensor:
    """Noise scale of a residual from its quietest tiles (see the module docstring); 0-d tensor.

    ``tile`` defaults to 32 pixels, 16 for slices under 128 pixels on a side.
    """
    tile = tile or (32 if min(diff.shape) >= 128 else 16)
    h, w = (diff.shape[0] // tile) * tile, (diff.shape[1] // tile) * tile
    usable = valid & (diff != 0)
    if h == 0 or w == 0:
        return robust_scale(diff, valid)
    values = diff[:h, :w].reshape(h // tile, tile, w // tile, tile).permute(0, 2, 1, 3).reshape(-1, tile * tile)
    keep = usable[:h, :w].reshape(h // tile, tile, w // tile, tile).permute(0, 2, 1, 3).reshape(-1, tile * tile)
    full = keep.float().mean(dim=1) >= 0.5
    if int(full.sum()) < min_tiles:
        return robust_scale(diff, valid)
    values = torch.where(keep, values, torch.full_like(values, float("nan")))[full]
    centre = values.nanmedian(dim=1, keepdim=True).values
    mads = MAD_TO_SIGMA * (values - centre).abs().nanmedian(dim=1).values
    return torch.quantile(mads, quantile)


def _running_median(values: torch.Tensor, width: int = 5) -> torch.Tensor:
    if values.numel() < 3:
        return values
    r = width // 2
    padded = torch.cat([values[:1].repeat(r), values, values[-1:].repeat(r)])
    return padded.unfold(0, 2 * r + 1, 1).median(dim=1).values


def compute_weight_maps(
    volume: torch.Tensor,
    valid: torch.Tensor | None,
    *,
    sigma: float,
    median_size: int,
    threshold_k: float,
    range_k: float = 2.0,
    chunk: int = 16,
) -> WeightMaps:
    """Weight maps for every neighbouring pair of ``volume`` (D, H, W), normalised intensities.

    Args:
        volume: (D, H, W) float tensor, D >= 2.
        valid: (D, H, W) bool tensor, False for padding; ``None`` = all valid.
        sigma: spatial sigma of the bilateral guide, pixels.
        median_size: odd median filter size (1 = none).
        range_k: range sigma of the bilateral guide in units of the pixel noise sigma.
        threshold_k: threshold in robust standard deviations of each pair's low-pass residual.
        chunk: slices filtered at once (the bilateral filter further bounds its own memory).
    """
    depth = volume.shape[0]
    if depth < 2:
        raise ValueError("weight maps need at least two slices")
    pixel_sigma = pixel_noise_sigma(volume, valid)
    sigma_r = range_k * pixel_sigma
    filtered = torch.empty_like(volume, dtype=torch.float32)
    for start in range(0, depth, chunk):
        filtered[start : start + chunk] = guide_filter(volume[start : start + chunk], sigma, sigma_r, median_size)
    pair_valid = valid[:-1] & valid[1:] if valid is not None else torch.ones_like(filtered[:-1], dtype=torch.bool)
    scales = torch.stack([quiet_tile_scale(filtered[i] - filtered[i + 1], pair_valid[i]) for i in range(depth - 1)])
    thresholds = threshold_k * _running_median(scales)
    weights = torch.empty((depth - 1, *volume.shape[1:]), dtype=torch.bool, device=volume.device)
    for i in range(depth - 1):
        weights[i] = ((filtered[i] - filtered[i + 1]).abs() <= thresholds[i]) & pair_valid[i]
    matched = int(weights.sum())
    total = int(pair_valid.sum())
    return WeightMaps(
        weights=weights, thresholds=thresholds, matched_fraction=matched / max(total, 1), pixel_sigma=pixel_sigma
    )
