"""Removed-anatomy check: how much structure the denoiser took out, from its input and output alone.

A denoiser should remove noise, and noise does not know where the anatomy's edges are. So the energy of
the difference image ``d = input - output`` should be the same on the edges of the output as right
beside them, where the local noise level is the same. A denoiser that blurs or erases anatomy moves the
edges into ``d``: the difference energy on edges then exceeds the energy beside them. The index is

    index = sum over edge pixels of d^2  /  sum over edge pixels of E_beside - 1

* edges: the pixels whose in-plane gradient magnitude of the Gaussian-smoothed output (sigma
  ``smooth_px``) is in the top ``edge_fraction`` of the volume (per slice, in-plane only, since slices may
  be thick);
* ``E_beside(x)``: the local mean of d^2 over "beside" pixels: between ``near_px`` and ``far_px`` from an
  edge, in the flatter half of the output (gradient below the median), averaged with a Gaussian window of
  ``window_px``. Comparing with the immediate neighbourhood cancels non-stationary noise (CT noise is
  higher behind dense anatomy and in the middle of the body; MR magnitude noise differs between tissue
  and background) that a global comparison would mistake for structure.

Known answers: pure noise removed (any amount, any local level) gives an index near 0; a denoiser that
leaves more noise on edges than beside them (non-local means, BM4D: they average fewer similar patches
at edges) gives a negative index; removed edges give a positive index, 1 meaning the difference image
holds twice as much energy on edges as beside them. The index is dimensionless and does not depend on
the intensity unit or the noise level. :data:`DEFAULT_THRESHOLD` is where the check fires; its value is
chosen on the benchmark's tuning set (``bench/residual_flag.py``), not on the report set.

Imports numpy and scipy only (no torch, no Holoscan).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_THRESHOLD", "ResidualStructure", "removed_structure_index"]

#: Index above which the difference image is taken to contain anatomy (chosen on the benchmark's tuning set).
DEFAULT_THRESHOLD = 1.0


@dataclass(frozen=True)
class ResidualStructure:
    """Result of :func:`removed_structure_index`.

    Attributes:
        index: edge-to-beside difference-energy ratio minus 1 (0: noise only; > 0: edges removed).
        edge_energy: mean d^2 over the edge pixels (input units squared).
        beside_energy: mean over the same pixels of the local d^2 beside the edges.
        edge_pixels: number of edge pixels that entered the index.
        threshold: the threshold :attr:`fires` compares with.
    """

    index: float
    edge_energy: float
    beside_energy: float
    edge_pixels: int
    threshold: float = DEFAULT_THRESHOLD

    @property
    def fires(self) -> bool:
        """True when the difference image holds anatomy by this measure (index above the threshold)."""
        return bool(np.isfinite(self.index) and self.index > self.threshold)


def _inplane(size: float) -> tuple[float, float, float]:
    return (0.0, size, size)


def _dilate_inplane(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0:
        return mask
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(mask, st, iterations=iterations)


def removed_structure_index(
    original: np.ndarray,
    denoised: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    edge_fraction: float = 0.1,
    smooth_px: float = 1.5,
    near_px: int = 3,
    far_px: int = 7,
    window_px: float = 6.0,
    threshold: float = DEFAULT_THRESHOLD,
) -> ResidualStructure:
    """Removed-structure index of a denoising, from its input and output only (see the module docstring).

    Args:
        original: (D, H, W) or (H, W) input of the denoiser.
        denoised: its output, same shape.
        valid: optional bool mask of pixels to consider (e.g. not padding); default all.
        edge_fraction: fraction of the valid pixels taken as edges (highest output gradient).
        smooth_px: Gaussian sigma (pixels) applied to the output before its gradient.
        near_px, far_px: the "beside" ring lies between these distances (pixels, in-plane) from an edge.
        window_px: Gaussian sigma (pixels) of the local average of the beside energy.
        threshold: stored in the result for :attr:`ResidualStructure.fires`.

    Returns:
        :class:`ResidualStructure`; ``index`` is NaN when there are no edges or no beside pixels.
    """
    x = np.asarray(original, dtype=np.float64)
    y = np.asarray(denoised, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"original {x.shape} and denoised {y.shape} differ in shape")
    if x.ndim == 2:
        x, y = x[None], y[None]
        valid = None if valid is None else np.asarray(valid, bool)[None]
    if x.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D volume, got {x.ndim} dimensions")
    valid = np.ones(x.shape, bool) if valid is None else np.asarray(valid, bool).reshape(x.shape)
    energy = np.where(valid, (x - y) ** 2, 0.0)

    smooth = ndimage.gaussian_filter(y, _inplane(smooth_px))
    grad = np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=2))
    values = grad[valid]
    if values.size == 0:
        return ResidualStructure(float("nan"), float("nan"), float("nan"), 0, threshold)
    edges = valid & (grad >= np.quantile(values, 1.0 - edge_fraction)) & (grad > 0)
    beside = _dilate_inplane(edges, far_px) & ~_dilate_inplane(edges, near_px - 1)
    beside &= valid & (grad < np.median(values))

    weight = ndimage.gaussian_filter(beside.astype(np.float64), _inplane(window_px))
    local = ndimage.gaussian_filter(np.where(beside, energy, 0.0), _inplane(window_px))
    use = edges & (weight > 1e-3)
    n = int(use.sum())
    if n == 0:
        return ResidualStructure(float("nan"), float("nan"), float("nan"), 0, threshold)
    edge_energy = float(energy[use].mean())
    beside_energy = float((local[use] / weight[use]).mean())
    # No difference beside the edges: 0 when there is none on them either, else unbounded.
    ratio = edge_energy / beside_energy if beside_energy > 0 else (1.0 if edge_energy <= 0 else float("inf"))
    index = ratio - 1.0
    return ResidualStructure(index, edge_energy, beside_energy, n, threshold)
