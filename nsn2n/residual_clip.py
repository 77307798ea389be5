"""Residual clip: how far the denoiser may move a pixel, in units of the local noise level.

A correct denoiser changes each pixel by about the noise in it: the residual ``x - f(x)`` looks like the
noise, and a change of more than three noise standard deviations is rare (0.3 % of pixels for Gaussian
noise). Both formulations can carry a neighbour's anatomy into the slice where the two differ (edges that
shift, vessels that appear), by much more than the noise: the paper's because its target, the
neighbouring slice, is biased there; the default (recorrupted) one because the network reads the
neighbours as context and may lean on them where they do not match (the clip mattered most on thick
slices; ``bench/results/tuning-probe-clip-*`` measures it on each tuning case). The clip bounds that:

    |x - f(x)|  <=  k(c) * sigma_local(x, y)

* ``sigma_local`` is the local noise standard deviation measured from the data itself: the mean
  absolute difference of the neighbouring slices over the pixels the weight maps mark as matched
  (same anatomy, so the difference is noise of variance 2 sigma^2), accumulated in 8x8 blocks,
  Gaussian-smoothed over about 12 px, divided by sqrt(2) and converted with sqrt(pi/2) (mean absolute
  deviation to standard deviation for Gaussian noise). It follows the non-stationary noise of CT (more
  noise behind dense anatomy and in the middle of the body than in air) and of MR magnitude images,
  which a single volume-wide sigma does not: a volume-wide sigma sits below the noise in the body, so a
  clip on it would stop the denoiser from removing the noise there. Where a block has no matched pixels
  nearby, the volume-wide paired-slice sigma is used.
* ``c`` is how many of its two neighbours a pixel matches (the end slices count their one pair twice).
  Pixels matched on both sides get ``k = residual_clip_k`` (default 3: the change may be as large as the
  noise, only hallucination-sized moves are cut); the others get ``k = residual_clip_unmatched_k``,
  where the neighbour (target or context) showed other anatomy. Its default is 3 as well: a tighter
  limit there (1.5 until 2026-12-01) also stops the network from removing the noise at every edge and
  on thick slices, and since the output is blended with non-local means (which the clip does not
  bound) it lowered the result on every MR tuning case by 0.08 to 0.10 dB and changed no CT case by
  more than 0.01 dB (bench/README.md). Either can be set lower where a tighter safeguard is wanted.

This safeguard is our own decision, not part of the NS-N2N paper (docs/method.md); ``bench/clip_sweep.py``
compares clip rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage

from .noise import MEAN_ABS_TO_SIGMA, matched_pair_difference

__all__ = [
    "BLOCK_PX",
    "clip_change",
    "clip_residual_per_pixel",
    "local_noise_sigma",
    "matched_neighbours",
    "residual_limits",
]

#: Block size of the local noise estimate (pixels) and the Gaussian smoothing in blocks.
BLOCK_PX = 8
SMOOTH_BLOCKS = 1.5
_MIN_SUPPORT = 16.0  # matched pixels (after smoothing) below which a block uses the global sigma


def matched_neighbours(weights: np.ndarray) -> np.ndarray:
    """(D-1, H, W) bool weight maps -> (D, H, W) int8: how many neighbours (0, 1, 2) each pixel matches.

    The first and last slices have one neighbour; their single pair counts twice.
    """
    weights = np.asarray(weights, dtype=bool)
    count = np.zeros((weights.shape[0] + 1, *weights.shape[1:]), np.int8)
    count[:-1] += weights
    count[1:] += weights
    count[0] = 2 * weights[0]
    count[-1] = 2 * weights[-1]
    return count


def _as_numpy(weights: np.ndarray | torch.Tensor) -> np.ndarray:
    return weights.cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, dtype=bool)


def _block_sums(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    hb, wb = -(-h // BLOCK_PX), -(-w // BLOCK_PX)
    padded = np.zeros((hb * BLOCK_PX, wb * BLOCK_PX), np.float64)
    padded[:h, :w] = image
    return padded.reshape(hb, BLOCK_PX, wb, BLOCK_PX).sum(axis=(1, 3))


def _pair_sums(volume: np.ndarray, weights: np.ndarray, valid: np.ndarray | None, i: int):
    diff, mask = matched_pair_difference(volume, weights[i], valid, i)
    return _block_sums(np.where(mask, np.abs(diff), 0.0)), _block_sums(mask.astype(np.float64))


def local_noise_sigma(
    volume: np.ndarray, weights: np.ndarray, valid: np.ndarray | None = None, *, default_sigma: float = float("nan")
) -> Iterator[np.ndarray]:
    """Yield, slice by slice, the (H, W) float32 local noise standard deviation (see the module docstring).

    Args:
        volume: (D, H, W) in any units (the result has the same units).
        weights: (D-1, H, W) bool weight maps (numpy or torch).
        valid: (D, H, W) bool, False for padding (left out of the estimate).
        default_sigma: used everywhere when no pixel of the volume is matched (nothing to measure).
    """
    volume = np.asarray(volume)
    weights = _as_numpy(weights)
    depth, h, w = volume.shape
    sums = {i: _pair_sums(volume, weights, valid, i) for i in range(depth - 1)}  # block sums: small
    total = sum(den.sum() for _, den in sums.values())
    # Where no matched pixel is near: the volume-wide paired-slice estimate.
    fallback = (
        MEAN_ABS_TO_SIGMA * sum(num.sum() for num, _ in sums.values()) / total / math.sqrt(2.0)
        if total >= _MIN_SUPPORT
        else default_sigma
    )
    for z in range(depth):
        pairs = [sums[i] for i in (z - 1, z) if i in sums]
        num = ndimage.gaussian_filter(sum(p[0] for p in pairs), SMOOTH_BLOCKS, mode="nearest")
        den = ndimage.gaussian_filter(sum(p[1] for p in pairs), SMOOTH_BLOCKS, mode="nearest")
        sigma_blocks = np.where(
            den >= _MIN_SUPPORT, MEAN_ABS_TO_SIGMA * num / np.maximum(den, 1.0) / math.sqrt(2.0), fallback
        )
        zoom = (h / sigma_blocks.shape[0], w / sigma_blocks.shape[1])
        sigma = ndimage.zoom(sigma_blocks, zoom, order=1, mode="nearest", grid_mode=True)
        yield sigma[:h, :w].astype(np.float32)


def clip_residual_per_pixel(
    noisy: np.ndarray,
    denoised: np.ndarray,
    weights: np.ndarray,
    *,
    k_matched: float | None,
    k_unmatched: float | None,
    valid: np.ndarray | None = None,
    default_sigma: float = float("nan"),
) -> np.ndarray:
    """``noisy - clip(noisy - denoised, -limit, limit)`` with ``limit = k(c) * sigma_local``, in place.

    ``k_matched`` applies to pixels matching both neighbours, ``k_unmatched`` to the others; ``None``
    leaves that class unclipped. ``default_sigma`` is the noise sigma used when no pixel is matched.
    Returns ``denoised`` (modified).
    """
    limits = residual_limits(
        noisy, weights, k_matched=k_matched, k_unmatched=k_unmatched, valid=valid, default_sigma=default_sigma
    )
    for z, limit in enumerate(limits):
        denoised[z] = clip_change(noisy[z], denoised[z], limit)
    return denoised


def clip_change(noisy: np.ndarray, denoised: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """``noisy - clip(noisy - denoised, -limit, limit)``: ``denoised`` with its change bounded by ``limit``."""
    return noisy - np.clip(noisy - denoised, -limit, limit)


def residual_limits(
    noisy: np.ndarray,
    weights: np.ndarray,
    *,
    k_matched: float | None,
    k_unmatched: float | None,
    valid: np.ndarray | None = None,
    default_sigma: float = float("nan"),
) -> Iterator[np.ndarray]:
    """Per slice, the (H, W) float32 limit of the clip (``inf`` where that class is unclipped); nothing at
    all (and no noise map computed) when neither class is clipped."""
    if k_matched is None and k_unmatched is None:
        return
    weights = _as_numpy(weights)  # once: a (D-1, H, W) map may live on the GPU
    count = matched_neighbours(weights)
    k_both = np.float32(np.inf if k_matched is None else k_matched)
    k_other = np.float32(np.inf if k_unmatched is None else k_unmatched)
    for z, sigma in enumerate(local_noise_sigma(noisy, weights, valid, default_sigma=default_sigma)):
        yield np.where(count[z] == 2, k_both, k_other) * sigma
