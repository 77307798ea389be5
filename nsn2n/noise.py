"""Paired-slice noise level estimates and the constants the noise measurements share.

Differences of neighbouring slices carry the noise (independent between slices, the premise of NS-N2N)
and, where the anatomy matches, no anatomy:

* :func:`paired_slice_noise_sigma` (here): one robust number per volume over the matched pixels. The run
  no longer reports it (its "after" figure measured what the paper's regional-consistency loss drives
  down; the run reports :mod:`nsn2n.noise_model`'s level and :mod:`nsn2n.error_estimate`'s SURE); the
  benchmark keeps it as a comparison (``bench/noise_truth.py`` as ``paired-slice``).
* :func:`nsn2n.weight_map.pixel_noise_sigma` and ``quiet_tile_scale``: the noise scale the weight maps'
  guide and threshold are set in; from the quietest tiles, since a whole-slice MAD counts anatomy that
  changes between slices as noise.
* :func:`nsn2n.residual_clip.local_noise_sigma`: a per-pixel map, because CT noise is not stationary and
  the residual clip must follow it.
* :func:`inplane_noise_sigma` (here): one in-plane number over the foreground, from the finest diagonal
  wavelet detail; the bound the Rician correction caps its level at (:mod:`nsn2n.rician`).

The paired-slice estimator ("paired-slice difference in matched regions"): with d = x_i - x_{i+1} over the
pixels that the weight maps mark as matched (same anatomy) and that are not padding,

    sigma = MAD_TO_SIGMA * median(|d - median(d)|) / sqrt(2)

No in-plane smoothing or flatness assumption is made, so in-plane correlated CT noise is not
under-estimated the way white-noise estimators (wavelet MAD, Laplacian residual) under-estimate it. Two
biases remain: residual anatomy differences inside matched regions raise it, and choosing matched pixels
by the low-pass difference favours pixels where in-plane correlated noise happens to be low, which
lowers it. It is a median over the whole field of view, so on CT, whose noise is not stationary, it sits
between the air/lung and the tissue noise: use it to compare before with after (the same pixels are
used for both), not as a tissue measurement. Units are those of the volume (HU for CT).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "MAD_TO_SIGMA",
    "MEAN_ABS_TO_SIGMA",
    "inplane_noise_sigma",
    "matched_pair_difference",
    "paired_slice_noise_sigma",
]

#: Median absolute deviation -> standard deviation, for Gaussian noise (1 / Phi^-1(3/4)).
MAD_TO_SIGMA = 1.4826
#: Mean absolute deviation -> standard deviation, for Gaussian noise (sqrt(pi / 2)).
MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2.0)


def matched_pair_difference(
    volume: np.ndarray, weight: np.ndarray, valid: np.ndarray | None, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x_i - x_{i+1}, mask)`` for pair ``i``: float32 difference and the pixels it measures noise on.

    ``weight`` is the pair's (H, W) bool weight map; the mask is it, minus padding in either slice. This
    is the one definition shared by the noise estimate here and the local sigma of the residual clip.
    """
    mask = weight if valid is None else weight & valid[i] & valid[i + 1]
    return volume[i].astype(np.float32) - volume[i + 1].astype(np.float32), mask


def paired_slice_noise_sigma(
    volume: np.ndarray, weights: torch.Tensor, valid: np.ndarray | None = None, max_samples: int = 2_000_000
) -> float:
    """Robust noise standard deviation of ``volume`` (D, H, W) using ``weights`` (D-1, H, W) bool."""
    step = max(1, int(weights.numel() // max_samples))
    samples = []
    for i in range(volume.shape[0] - 1):
        diff, mask = matched_pair_difference(volume, weights[i].cpu().numpy(), valid, i)
        samples.append(diff[mask][::step])
    diffs = np.concatenate(samples) if samples else np.empty(0, np.float32)
    if diffs.size == 0:
        return float("nan")
    centre = np.median(diffs)
    return float(MAD_TO_SIGMA * np.median(np.abs(diffs - centre)) / np.sqrt(2.0))


def inplane_noise_sigma(volume: np.ndarray, foreground: np.ndarray) -> float:
    """Noise sigma from each slice alone: the MAD of the finest diagonal Haar detail over the foreground.

    ``(x[2i, 2j] - x[2i+1, 2j] - x[2i, 2j+1] + x[2i+1, 2j+1]) / 2`` over the 2 x 2 blocks wholly in
    ``foreground`` (D, H, W) bool, times :data:`MAD_TO_SIGMA` (Donoho & Johnstone's wavelet MAD,
    Biometrika 81(3), 1994). For noise that is white in-plane (MR) it is the noise sigma plus what
    texture adds, and anatomy that changes between slices cannot enter it, which is what raises the
    paired-slice estimates on thick slices; in-plane correlated noise (CT, interpolated MR) has little
    power at the finest scale, so there it reads low. Either way no more than the noise plus texture: a
    bound, not the level. NaN when no block is wholly in the foreground.
    """
    x = volume.astype(np.float32, copy=False)
    detail = (x[:, :-1:2, :-1:2] - x[:, 1::2, :-1:2] - x[:, :-1:2, 1::2] + x[:, 1::2, 1::2]) / 2
    inside = foreground[:, :-1:2, :-1:2] & foreground[:, 1::2, :-1:2] & foreground[:, :-1:2, 1::2]
    inside &= foreground[:, 1::2, 1::2]
    if not inside.any():
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(detail[inside])))
