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
box filter), so memory stays a few slab-sized buffers whatever the volume's size, and
the same code runs on a GPU. Offsets come in symmetric pairs (``o`` and ``-o`` share one patch distance),
so each pair is computed once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MIN_EFFECTIVE_SAMPLES", "SMALL_PATCH_RADIUS", "NonLocalMeansParams", "effective_samples", "nonlocal_means"]

#: Independent noise samples a patch must hold for :meth:`NonLocalMeansParams.for_noise` to take the
#: small patch (``SMALL_PATCH_RADIUS`` in-plane): about 27, what a 3 x 3 x 3 patch holds in white noise.
MIN_EFFECTIVE_SAMPLES = 25.0
#: In-plane radius of the small patch (:meth:`NonLocalMeansParams.for_noise`).
SMALL_PATCH_RADIUS = 1


def effective_samples(patch_radii: tuple[int, int, int], autocorrelation: np.ndarray | None) -> float:
    """How many independent noise samples the squared distance of two patches of ``patch_radii`` (z, y, x)
    averages: ``N^2 / sum_ij rho_ij^2`` over the patch's voxel pairs, ``rho`` the noise's correlation.

    Rule. The mean squared difference of two patches of the same anatomy is ``2 sigma^2`` on average
    with a relative spread of ``sqrt(2 / N_eff)``: for white noise ``N_eff`` is the voxel count ``N``;
    correlated noise (a CT reconstruction kernel) makes neighbouring squared differences move together, so
    the same patch averages fewer independent samples. ``autocorrelation``: the in-plane correlation of the
    noise, an odd square array with 1 at its centre (lags beyond it count as 0; the noise is independent
    between slices); ``None``: white noise.
    """
    pz, py, px = patch_radii
    n_plane = (2 * py + 1) * (2 * px + 1)
    n = n_plane * (2 * pz + 1)
    if autocorrelation is None:
        return float(n)
    rho = np.asarray(autocorrelation, dtype=np.float64)
    c = rho.shape[0] // 2
    if rho.ndim != 2 or rho.shape[0] != rho.shape[1] or rho.shape[0] % 2 == 0 or not rho[c, c] > 0:
        raise ValueError(f"autocorrelation must be an odd square array with a positive centre, got {rho.shape}")
    rho = rho / rho[c, c]
    # Pairs of voxels in one slice of the patch at lag (dy, dx): (2 py + 1 - |dy|) (2 px + 1 - |dx|) of them.
    total = 0.0
    for dy in range(-2 * py, 2 * py + 1):
        for dx in range(-2 * px, 2 * px + 1):
            if abs(dy) <= c and abs(dx) <= c:
                total += (2 * py + 1 - abs(dy)) * (2 * px + 1 - abs(dx)) * rho[c + dy, c + dx] ** 2
    return float(n * n_plane / total)


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
        patch_radius_z, search_radius_z: the same through the slices, ``None``: as in-plane. Thick
            slices want fewer: a patch of 5 slices 5 mm apart spans 2.5 cm of anatomy.
    """

    patch_radius: int = 2
    search_radius: int = 3
    h_factor: float = 0.8
    slab: int = 32
    patch_radius_z: int | None = None
    search_radius_z: int | None = None

    def __post_init__(self) -> None:
        if self.patch_radius < 0 or self.search_radius < 1:
            raise ValueError(
                f"need patch_radius >= 0 and search_radius >= 1, got {self.patch_radius}, {self.search_radius}"
            )
        if min(self.patch_radii[0], self.search_radii[0]) < 0:
            raise ValueError(
                f"need patch_radius_z, search_radius_z >= 0, got {self.patch_radius_z}, {self.search_radius_z}"
            )
        if not self.h_factor > 0:
            raise ValueError(f"h_factor must be positive, got {self.h_factor}")
        if self.slab < 1:
            raise ValueError(f"slab must be >= 1, got {self.slab}")

    @classmethod
    def for_spacing(cls, spacing: Sequence[float], **kwargs: float | int) -> NonLocalMeansParams:
        """The parameters for voxels of ``spacing`` (z, y, x) mm: the patch and the search box span about
        as many millimetres through the slices as in-plane.

        Rule: a z radius is the in-plane radius times the pixel spacing over the slice spacing, rounded,
        never more than the in-plane radius, and the search reaches at least the neighbouring slices.
        Reason: a patch of 5 slices 5 mm apart compares 2.5 cm of anatomy along z with 5 mm in-plane, so
        few patches match however similar the tissue; on the thick volumes of the benchmark's tuning set
        (4.5 and 5 mm slices) this rule filtered as well as or better than the isotropic cube, with
        2.3 times fewer offsets (bench/README.md, 2026-11-30). ``kwargs``: the other fields.
        """
        base = cls(**kwargs)  # type: ignore[arg-type]
        slice_mm, pixel_mm = float(spacing[0]), 0.5 * (float(spacing[1]) + float(spacing[2]))
        if not (slice_mm > 0 and pixel_mm > 0 and math.isfinite(slice_mm) and math.isfinite(pixel_mm)):
            raise ValueError(f"spacing must be positive and finite, got {tuple(spacing)}")
        ratio = min(pixel_mm / slice_mm, 1.0)
        return replace(
            base,
            patch_radius_z=int(base.patch_radius * ratio + 0.5),
            search_radius_z=max(1, int(base.search_radius * ratio + 0.5)),
        )

    @classmethod
    def for_noise(
        cls, spacing: Sequence[float], autocorrelation: np.ndarray | None, **kwargs: float | int
    ) -> NonLocalMeansParams:
        """:meth:`for_spacing` with the in-plane patch radius chosen for the noise: the small patch
        (:data:`SMALL_PATCH_RADIUS`) where it holds at least :data:`MIN_EFFECTIVE_SAMPLES` independent
        noise samples (:func:`effective_samples`), else ``patch_radius`` (default 2).

        Reason: a smaller patch matches more of the same anatomy (a 3 mm cube of brain has many twins
        along a gyrus, a 5 mm cube spans several tissues), but its distance must still tell similar
        patches from different ones through the noise. White in-plane noise and 3-slice patches (thin MR)
        give 27 samples at radius 1; correlated CT noise gives about 11 and single-slice patches (thick
        slices) 9, so those keep radius 2. On the benchmark's tuning set radius 1 raised the thin MRs' gain
        7.89 -> 8.12 and 8.93 -> 9.10 dB (weight 0.6) and lost on the thick MR (6.65 -> 6.33)
        (bench/README.md, 2026-12-01). ``kwargs``: the other fields.
        """
        small = cls.for_spacing(spacing, **{**kwargs, "patch_radius": SMALL_PATCH_RADIUS})
        if effective_samples(small.patch_radii, autocorrelation) >= MIN_EFFECTIVE_SAMPLES:
            return small
        return cls.for_spacing(spacing, **kwargs)

    @property
    def patch_radii(self) -> tuple[int, int, int]:
        """Patch radius along (z, y, x)."""
        z = self.patch_radius if self.patch_radius_z is None else self.patch_radius_z
        return (z, self.patch_radius, self.patch_radius)

    @property
    def search_radii(self) -> tuple[int, int, int]:
        """Search radius along (z, y, x)."""
        z = self.search_radius if self.search_radius_z is None else self.search_radius_z
        return (z, self.search_radius, self.search_radius)

    @property
    def reach(self) -> int:
        """Voxels along any axis that one output voxel depends on, either side (the most of the three)."""
        return max(p + s for p, s in zip(self.patch_radii, self.search_radii, strict=True))


def _box_sum(x: torch.Tensor, radii: tuple[int, int, int]) -> torch.Tensor:
    """Sum over a box of ``2 r + 1`` voxels along each axis of a (D, H, W) tensor, ``r`` the axis' radius;
    the output is ``2 r`` shorter on each axis.

    Separable, by adding shifted views: for the small radii of a patch this is several times faster on
    a CPU than differences of running sums, and exact to float32 rounding of the few terms."""
    for dim, radius in enumerate(radii):
        n = x.shape[dim] - 2 * radius
        total = x.narrow(dim, 0, n).clone()
        for k in range(1, 2 * radius + 1):
            total += x.narrow(dim, k, n)
        x = total
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


def _offsets(radii: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """One of each pair ``(o, -o)`` of non-zero offsets in the search box."""
    rz, ry, rx = radii
    every = [(dz, dy, dx) for dz in range(-rz, rz + 1) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)]
    return [o for o in every if o > (0, 0, 0)]


def nonlocal_means(
    volume: torch.Tensor,
    sigma: torch.Tensor,
    params: NonLocalMeansParams = NonLocalMeansParams(),
    slices: Sequence[int] | None = None,
    before_slab: Callable[[int, int], None] | None = None,
    compare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Non-local means of ``volume`` (D, H, W) float32 with the local noise level ``sigma`` (same shape).

    Returns the filtered slices ``slices`` (all if ``None``) as a (len(slices), H, W) float32 tensor on
    ``volume``'s device; every voxel of the volume can contribute to them. ``before_slab(done, total)``
    is called before each slab with the output slices done so far (progress, cancellation: whatever it
    raises ends the filtering). ``compare``: a map of each padded slab (slices, padded in-plane) to the
    volume whose patches are compared, of the same shape and noise level (e.g. the slab whitened in-plane
    when the noise is correlated, :meth:`nsn2n.noise_model.NoiseModel.whiten`); the averaged values are
    always the volume's own. It must treat every slice alone, so that a slice's output does not depend on
    which slab it came in.
    """
    if volume.ndim != 3 or sigma.shape != volume.shape:
        raise ValueError(f"need a (D, H, W) volume and a sigma of the same shape, got {volume.shape}, {sigma.shape}")
    depth = volume.shape[0]
    wanted = list(range(depth)) if slices is None else [int(z) for z in slices]
    if any(not 0 <= z < depth for z in wanted):
        raise ValueError(f"slices out of range 0..{depth - 1}: {wanted}")
    reach = params.reach
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
        compared = padded if compare is None else compare(padded)
        if compared.shape != padded.shape:
            raise ValueError(f"compare changed the slab's shape from {padded.shape} to {compared.shape}")
        filtered = _filter_slab(padded, compared, sigma[z0:z1].float(), reach, params)
        out[run[0] : run[-1] + 1] = filtered
    return out


def _filter_slab(
    padded: torch.Tensor, compared: torch.Tensor, sigma: torch.Tensor, r: int, params: NonLocalMeansParams
) -> torch.Tensor:
    """Filter the centre ``sigma.shape`` voxels of a slab padded by ``r`` (``params.reach``) on every side,
    comparing the patches of ``compared`` (``padded`` itself, or a map of it) and averaging ``padded``.

    Output voxel ``x`` sits at padded index ``x + r``. For an offset ``o`` the squared differences
    ``e[v] = (P[v] - P[v + o])^2``, box-summed, give the patch distance of every pair ``(u, u + o)``; the
    output needs it at ``u = x + r`` (neighbour ``x + o``) and at ``u = x + r - o`` (neighbour ``x - o``),
    so ``e`` is formed only where those patches reach: along an axis of patch radius ``p`` from
    ``r - p + min(0, -o)`` for ``n + 2 p + |o|`` voxels, every index inside the slab.
    """
    shape = sigma.shape
    radii = params.patch_radii
    centre = padded[r : r + shape[0], r : r + shape[1], r : r + shape[2]]
    total = centre.clone()
    weight_sum = torch.ones_like(centre)
    h2 = (params.h_factor * sigma).square().clamp_min(1e-12)
    # weight = exp(-max(distance / patch_size - 2 sigma^2, 0) / h^2) = exp(-max(distance * scale - bias, 0))
    patch_size = math.prod(2 * p + 1 for p in radii)
    scale = 1.0 / (patch_size * h2)
    bias = 2.0 * sigma.square() / h2
    for offset in _offsets(params.search_radii):
        axes = list(zip(offset, shape, radii, strict=True))
        low = [r - p + min(0, -o) for o, _, p in axes]
        here = compared[tuple(slice(lo, lo + n + 2 * p + abs(o)) for lo, (o, n, p) in zip(low, axes, strict=True))]
        there = compared[
            tuple(slice(lo + o, lo + o + n + 2 * p + abs(o)) for lo, (o, n, p) in zip(low, axes, strict=True))
        ]
        distance = _box_sum((here - there).square_(), radii)  # index k: the patch centred at low + k + p
        neighbours = (
            (
                tuple(slice(max(0, o), max(0, o) + n) for o, n, _ in axes),
                tuple(slice(r + o, r + o + n) for o, n, _ in axes),
            ),
            (
                tuple(slice(max(0, -o), max(0, -o) + n) for o, n, _ in axes),
                tuple(slice(r - o, r - o + n) for o, n, _ in axes),
            ),
        )
        for at, value in neighbours:
            weight = torch.addcmul(-bias, distance[at], scale).clamp_min_(0.0).neg_().exp_()
            total.addcmul_(weight, padded[value])
            weight_sum += weight
    return total / weight_sum
