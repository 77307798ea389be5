"""Non-local means in 3-D with a local noise level: the classical estimate the network's output is blended with.

Rule. Each voxel becomes the weighted mean of the voxels in a ``(2 s + 1)^3`` search cube around it, a
neighbour's weight falling with the mean squared difference ``d^2`` of the ``(2 p + 1)^3`` patches around
the two voxels: ``w = exp(-max(d^2 - 2 sigma^2, 0) / h^2)`` with ``h = h_factor * sigma`` and ``sigma`` the
noise level at the voxel (Buades, Coll & Morel 2005; the 3-D, noise-adapted form of Coupe et al., IEEE
TMI 27(4), 2008; the same weight as scikit-image's ``denoise_nl_means`` in its fast mode). Two patches of
the same anatomy differ by the noise alone, ``E[d^2] = 2 sigma^2``, so subtracting it gives such pairs full
weight whatever the noise level. The level is given per voxel (the caller decides: the run uses the
noise model's local level on CT, whose noise varies across the body, and one level on MR), and the voxel
itself is a neighbour of weight 1.

Why a classical filter beside the network: non-local means averages many similar voxels across
neighbouring slices, the network maps a few slices through a learned function; their errors are far
from identical, and on every benchmark case the blend of the two was better than either
(:attr:`nsn2n.config.DenoiseConfig.nonlocal_weight`; measurements in bench/README.md).

Implementation: one pass per search offset over a slab of slices (the patch distances by a separable
box filter of running sums), so memory stays a few slab-sized buffers whatever the volume's size, and
the same code runs on a GPU. Offsets come in symmetric pairs (``o`` and ``-o`` share one patch distance),
so each pair is computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["NonLocalMeansParams", "nonlocal_means"]


@dataclass(frozen=True)
class NonLocalMeansParams:
    """Parameters of :func:`nonlocal_means`.

    Attributes:
        patch_radius: ``p``: patches of ``(2 p + 1)^3`` voxels.
        search_radius: ``s``: neighbours within ``s`` voxels along each axis.
        h_factor: the weight's width ``h`` in units of the local noise sigma (the run passes
            :attr:`nsn2n.config.DenoiseConfig.nonlocal_h_factor`; the same 0.8 here).
        slab: output slices computed per pass (memory: about ten float32 buffers of
            ``slab + 2 (p + s)`` slices).
    """

    patch_radius: int = 2
    search_radius: int = 3
    h_factor: float = 0.8
    slab: int = 32

    def __post_init__(self) -> None:
        if self.patch_radius < 0 or self.search_radius < 1:
            raise ValueError(
                f"need patch_radius >= 0 and search_radius >= 1, got {self.patch_radius}, {self.search_radius}"
            )
        if not self.h_factor > 0:
            raise ValueError(f"h_factor must be positive, got {self.h_factor}")
        if self.slab < 1:
            raise ValueError(f"slab must be >= 1, got {self.slab}")

    @property
    def reach(self) -> int:
        """Voxels along each axis that one output voxel depends on, either side."""
        return self.patch_radius + self.search_radius


def _box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a ``(2 r + 1)^3`` cube of a (D, H, W) tensor; the output is ``2 r`` shorter on each axis."""
    if radius == 0:
        return x
    for dim in range(3):
        total = torch.cumsum(x, dim)
        total = torch.cat([torch.zeros_like(total.narrow(dim, 0, 1)), total], dim)
        n = x.shape[dim] - 2 * radius
        x = total.narrow(dim, 2 * radius + 1, n) - total.narrow(dim, 0, n)
    return x


def _padded_slab(volume: torch.Tensor, z0: int, z1: int, reach: int) -> torch.Tensor:
    """Slices ``z0 - reach .. z1 + reach`` of ``volume`` with ``reach`` voxels added on every side, as if
    the whole volume had been mirrored at its faces (replicated where an axis is too short to mirror):
    only the slab is copied, so filtering a few slices does not copy the whole volume."""
    d, h, w = volume.shape
    mirror = min(d, h, w) > reach
    rows = torch.arange(z0 - reach, z1 + reach, device=volume.device)
    if mirror:
        rows = torch.where(rows < 0, -rows, rows)
        rows = torch.where(rows > d - 1, 2 * (d - 1) - rows, rows)
    else:
        rows = rows.clamp(0, d - 1)
    slab = volume.index_select(0, rows).float()
    return F.pad(slab[None], (reach,) * 4, mode="reflect" if mirror else "replicate")[0]


def _offsets(radius: int) -> list[tuple[int, int, int]]:
    """One of each pair ``(o, -o)`` of non-zero offsets in the search cube."""
    span = range(-radius, radius + 1)
    every = [(dz, dy, dx) for dz in span for dy in span for dx in span]
    return [o for o in every if o > (0, 0, 0)]


def nonlocal_means(
    volume: torch.Tensor,
    sigma: torch.Tensor,
    params: NonLocalMeansParams = NonLocalMeansParams(),
    slices: Sequence[int] | None = None,
    before_slab: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Non-local means of ``volume`` (D, H, W) float32 with the local noise level ``sigma`` (same shape).

    Returns the filtered slices ``slices`` (all if ``None``) as a (len(slices), H, W) float32 tensor on
    ``volume``'s device; every voxel of the volume can contribute to them. ``before_slab(done, total)``
    is called before each slab with the output slices done so far (progress, cancellation: whatever it
    raises ends the filtering).
    """
    if volume.ndim != 3 or sigma.shape != volume.shape:
        raise ValueError(f"need a (D, H, W) volume and a sigma of the same shape, got {volume.shape}, {sigma.shape}")
    depth = volume.shape[0]
    wanted = list(range(depth)) if slices is None else [int(z) for z in slices]
    if any(not 0 <= z < depth for z in wanted):
        raise ValueError(f"slices out of range 0..{depth - 1}: {wanted}")
    reach, p, s = params.reach, params.patch_radius, params.search_radius
    out = torch.empty((len(wanted), *volume.shape[1:]), dtype=torch.float32, device=volume.device)
    # Runs of consecutive wanted slices, cut into slabs.
    runs: list[list[int]] = []
    for index, z in enumerate(wanted):
        if runs and z == wanted[runs[-1][-1]] + 1 and len(runs[-1]) < params.slab:
            runs[-1].append(index)
        else:
            runs.append([index])
    for run in runs:
        if before_slab is not None:
            before_slab(run[0], len(wanted))
        z0, z1 = wanted[run[0]], wanted[run[-1]] + 1
        padded = _padded_slab(volume, z0, z1, reach)
        filtered = _filter_slab(padded, sigma[z0:z1].float(), p, s, params.h_factor)
        out[run[0] : run[-1] + 1] = filtered
    return out


def _filter_slab(padded: torch.Tensor, sigma: torch.Tensor, p: int, s: int, h_factor: float) -> torch.Tensor:
    """Filter the centre ``sigma.shape`` voxels of a slab padded by ``r = p + s`` on every side.

    Output voxel ``x`` sits at padded index ``x + r``. For an offset ``o`` the squared differences
    ``e[v] = (P[v] - P[v + o])^2``, box-summed, give the patch distance of every pair ``(u, u + o)``; the
    output reads it at ``u = x + r`` (neighbour ``x + o``) and at ``u = x + r - o`` (neighbour ``x - o``).
    Every index read stays inside the slab, so the wrap-around of the shift is never seen.
    """
    d, h, w = sigma.shape
    r = p + s
    centre = padded[r : r + d, r : r + h, r : r + w]
    total = centre.clone()
    weight_sum = torch.ones_like(centre)
    twice_var = 2.0 * sigma.square()
    h2 = (h_factor * sigma).square().clamp_min(1e-12)
    patch_size = float((2 * p + 1) ** 3)
    for dz, dy, dx in _offsets(s):
        shifted = padded.roll(shifts=(-dz, -dy, -dx), dims=(0, 1, 2))
        distance = _box_sum((padded - shifted).square_(), p)  # index k: the patch centred at k + p
        pairs = (
            (
                distance[s : s + d, s : s + h, s : s + w],
                padded[r + dz : r + dz + d, r + dy : r + dy + h, r + dx : r + dx + w],
            ),
            (
                distance[s - dz : s - dz + d, s - dy : s - dy + h, s - dx : s - dx + w],
                padded[r - dz : r - dz + d, r - dy : r - dy + h, r - dx : r - dx + w],
            ),
        )
        for patch_distance, value in pairs:
            weight = torch.exp_(-(patch_distance / patch_size - twice_var).clamp_min_(0.0) / h2)
            total += weight * value
            weight_sum += weight
    return total / weight_sum
