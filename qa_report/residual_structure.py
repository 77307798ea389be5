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

Every term is in-plane except the output's gradient, whose Sobel kernel also smooths over the two
neighbouring slices. So the index can be evaluated on a subset of the slices (``max_slices``: evenly
spaced, each with its real neighbours for the gradient) and then equals the index of the whole volume
restricted to those slices; the edge and "flat half" quantiles are then taken over those slices. The
application evaluates at most :data:`DEFAULT_MAX_SLICES` slices, so that the check's time and memory do
not grow with the number of slices of a series; the benchmark evaluates every slice.

Imports numpy and scipy only (no torch, no Holoscan).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_MAX_SLICES",
    "DEFAULT_THRESHOLD",
    "REMOVED_STRUCTURE_WARNING",
    "ResidualStructure",
    "evenly_spaced_slices",
    "removed_structure_index",
]

#: Index above which the difference image is taken to contain anatomy (chosen on the benchmark's tuning set).
DEFAULT_THRESHOLD = 1.0
#: Slices the application evaluates (evenly spaced; every slice of a series with fewer), about as many as the
#: benchmark volumes the threshold was chosen on hold (``bench/cases.py``).
DEFAULT_MAX_SLICES = 32

#: What a fired check means for the reader, one line (run record warnings, log, QA report).
REMOVED_STRUCTURE_WARNING = (
    "removed-structure check fired (index {index:.2f} > threshold {threshold:g}): the difference image "
    "(input - denoised) holds anatomical edges, so the denoiser removed structure as well as noise; "
    "review the QA montage's difference column before using this series"
)


@dataclass(frozen=True)
class ResidualStructure:
    """Result of :func:`removed_structure_index`.

    Attributes:
        index: edge-to-beside difference-energy ratio minus 1 (0: noise only; > 0: edges removed).
        edge_energy: mean d^2 over the edge pixels (input units squared).
        beside_energy: mean over the same pixels of the local d^2 beside the edges.
        edge_pixels: number of edge pixels that entered the index.
        threshold: the threshold :attr:`fires` compares with.
        slices: number of slices evaluated (``None``: not recorded).
    """

    index: float
    edge_energy: float
    beside_energy: float
    edge_pixels: int
    threshold: float = DEFAULT_THRESHOLD
    slices: int | None = None

    @property
    def fires(self) -> bool:
        """True when the difference image holds anatomy by this measure (index above the threshold)."""
        return bool(np.isfinite(self.index) and self.index > self.threshold)

    @property
    def warning(self) -> str | None:
        """The one-line warning when the check fires (what it means for the reader), else ``None``."""
        return REMOVED_STRUCTURE_WARNING.format(index=self.index, threshold=self.threshold) if self.fires else None

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """The run record's ``removed_structure`` section (JSON-native; a NaN index becomes ``None``)."""
        return {
            "index": float(self.index) if np.isfinite(self.index) else None,
            "threshold": float(self.threshold),
            "edge_pixels": int(self.edge_pixels),
            "slices": self.slices,
            "fired": self.fires,
        }


def _inplane(size: float) -> tuple[float, float, float]:
    return (0.0, size, size)


def _dilate_inplane(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0:
        return mask
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(mask, st, iterations=iterations)


def evenly_spaced_slices(depth: int, max_slices: int | None) -> np.ndarray:
    """Indices of at most ``max_slices`` slices spread evenly over ``depth``, first and last included;
    every slice when ``max_slices`` is ``None`` or not below ``depth``."""
    if max_slices is None or depth <= max_slices:
        return np.arange(depth)
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices}")
    if max_slices == 1:
        return np.array([depth // 2])
    return np.unique(np.round(np.linspace(0, depth - 1, max_slices)).astype(int))


def _output_gradient(y: np.ndarray, zs: np.ndarray, smooth_px: float) -> np.ndarray:
    """In-plane gradient magnitude of the smoothed output at slices ``zs``, as the whole volume's would be.

    ``ndimage.sobel`` smooths over the neighbouring slices too (``[1, 2, 1]`` along z, ``reflect`` at the
    ends), so each slice is taken with its two neighbours (mirrored at the ends, as ``reflect`` does).
    """
    depth = y.shape[0]
    if len(zs) == depth:
        smooth = ndimage.gaussian_filter(np.asarray(y, dtype=np.float64), _inplane(smooth_px))
        return np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=2))
    triplets = np.stack([np.maximum(zs - 1, 0), zs, np.minimum(zs + 1, depth - 1)], axis=1)
    needed, where = np.unique(triplets, return_inverse=True)
    smooth = ndimage.gaussian_filter(np.asarray(y[needed], dtype=np.float64), _inplane(smooth_px))
    grad = np.empty((len(zs), *y.shape[1:]))
    for i, slab in enumerate(where.reshape(triplets.shape)):
        three = smooth[slab]
        grad[i] = np.hypot(ndimage.sobel(three, axis=1), ndimage.sobel(three, axis=2))[1]
    return grad


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
    max_slices: int | None = None,
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
        max_slices: evaluate at most this many evenly spaced slices (:func:`evenly_spaced_slices`);
            ``None``: every slice. The result is the index of the volume restricted to those slices.

    Returns:
        :class:`ResidualStructure`; ``index`` is NaN when there are no edges or no beside pixels.
    """
    x = np.asarray(original)
    y = np.asarray(denoised)
    if x.shape != y.shape:
        raise ValueError(f"original {x.shape} and denoised {y.shape} differ in shape")
    if x.ndim == 2:
        x, y = x[None], y[None]
        valid = None if valid is None else np.asarray(valid, bool)[None]
    if x.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D volume, got {x.ndim} dimensions")
    valid = np.ones(x.shape, bool) if valid is None else np.asarray(valid, bool).reshape(x.shape)
    zs = evenly_spaced_slices(x.shape[0], max_slices)
    grad = _output_gradient(y, zs, smooth_px)
    x, y, valid = x[zs].astype(np.float64), y[zs].astype(np.float64), valid[zs]
    energy = np.where(valid, (x - y) ** 2, 0.0)
    nan = float("nan")

    values = grad[valid]
    if values.size == 0:
        return ResidualStructure(nan, nan, nan, 0, threshold, len(zs))
    edges = valid & (grad >= np.quantile(values, 1.0 - edge_fraction)) & (grad > 0)
    beside = _dilate_inplane(edges, far_px) & ~_dilate_inplane(edges, near_px - 1)
    beside &= valid & (grad < np.median(values))

    weight = ndimage.gaussian_filter(beside.astype(np.float64), _inplane(window_px))
    local = ndimage.gaussian_filter(np.where(beside, energy, 0.0), _inplane(window_px))
    use = edges & (weight > 1e-3)
    n = int(use.sum())
    if n == 0:
        return ResidualStructure(nan, nan, nan, 0, threshold, len(zs))
    edge_energy = float(energy[use].mean())
    beside_energy = float((local[use] / weight[use]).mean())
    # No difference beside the edges: 0 when there is none on them either, else unbounded.
    ratio = edge_energy / beside_energy if beside_energy > 0 else (1.0 if edge_energy <= 0 else float("inf"))
    index = ratio - 1.0
    return ResidualStructure(index, edge_energy, beside_energy, n, threshold, len(zs))
