"""Collaborative Wiener filtering with a pilot estimate: the second step of BM3D, on groups of 2-D blocks.

Rule (Dabov, Foi, Katkovnik & Egiazarian, "Image denoising by sparse 3-D transform-domain collaborative
filtering", IEEE TIP 16(8), 2007, section 3.2). For each reference block of ``block`` x ``block`` pixels
(every ``stride`` pixels of every slice), the ``group`` blocks of the pilot most alike it (squared
distance) within ``search_radius`` pixels in-plane, on its slice and on ``slice_radius`` slices either
side, form a group; the reference block is always in it (where the search offers fewer blocks, e.g. on
the first slice of a thin volume, the group holds them all). The same blocks of the noisy volume are
transformed (orthonormal 2-D DCT of each block, then an orthonormal DCT along the group), each coefficient
is multiplied by the empirical Wiener gain ``P^2 / (P^2 + s^2)`` (``P``: the pilot's coefficient, ``s^2``:
the noise's variance in that coefficient), and transformed back. Every block of every group is put back
at its place with the weight ``1 / sum(gain^2 s^2)`` of its group (the inverse of the group's residual
noise variance), and the output is the weighted mean of the blocks over each pixel.

The noise variance of a coefficient is the group's mean local level squared times the variance the
in-plane correlation gives that 2-D coefficient (:func:`coefficient_variance`; 1 everywhere for white
noise). The transform along the group treats the group's blocks as carrying independent noise, which
holds for white noise and for blocks from different slices; blocks near each other in one slice of
in-plane correlated noise (CT) share some of theirs.

Why: a pilot that is already close to the signal tells the filter which transform coefficients of a group
hold anatomy, and a group of alike blocks from a wide window averages more noise away than a filter that
weights single voxels (measurements in bench/README.md, 2026-12-01).

Slices: the output of slice ``z`` gathers blocks of groups referenced on slices ``z - slice_radius`` to
``z + slice_radius``, whose blocks reach ``slice_radius`` further; :func:`collaborative_wiener` computes
only what the wanted slices need, and computing a subset gives the same values as the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CollaborativeWienerParams", "coefficient_variance", "collaborative_wiener", "dct_matrix"]


@dataclass(frozen=True)
class CollaborativeWienerParams:
    """Parameters of :func:`collaborative_wiener`.

    Attributes:
        block: side of the square blocks, pixels.
        group: blocks per group (the reference block and the most alike others).
        search_radius: in-plane reach of the search for alike blocks, pixels either way.
        stride: spacing of the reference blocks, pixels (the last row and column are always included).
        slice_radius: slices on either side searched too (0: within the slice only).
    """

    block: int = 8
    group: int = 16
    search_radius: int = 7
    stride: int = 3
    slice_radius: int = 1

    def __post_init__(self) -> None:
        if self.block < 2 or self.group < 1 or self.search_radius < 0 or self.slice_radius < 0:
            raise ValueError(
                "need block >= 2, group >= 1, search_radius >= 0 and slice_radius >= 0, got "
                f"{self.block}, {self.group}, {self.search_radius}, {self.slice_radius}"
            )
        if not 1 <= self.stride <= self.block:
            raise ValueError(f"stride must be in [1, block = {self.block}], got {self.stride}")
        candidates = (2 * self.search_radius + 1) ** 2 * (2 * self.slice_radius + 1)
        if self.group > candidates:
            raise ValueError(f"group {self.group} is larger than the {candidates} blocks a search can offer")


def dct_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, n)`` float32 orthonormal DCT-II matrix (rows: frequencies)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return torch.tensor(m, dtype=torch.float32, device=device)


def coefficient_variance(autocorrelation: np.ndarray | None, block: int) -> torch.Tensor:
    """``(block, block)`` float32 variance of each 2-D DCT coefficient of a block of unit-variance noise.

    ``autocorrelation``: the noise's in-plane autocorrelation, an odd square array with 1 at its centre
    (:attr:`nsn2n.noise_model.NoiseModel.autocorrelation`); lags beyond it count as uncorrelated.
    ``None``: white noise, every coefficient 1. The variances sum to ``block^2`` (the transform is
    orthonormal and each pixel has unit variance).
    """
    if autocorrelation is None:
        return torch.ones((block, block))
    rho = np.asarray(autocorrelation, np.float64)
    c = rho.shape[0] // 2
    idx = np.arange(block)
    dy = idx[:, None, None, None] - idx[None, None, :, None]
    dx = idx[None, :, None, None] - idx[None, None, None, :]
    inside = (np.abs(dy) <= c) & (np.abs(dx) <= c)
    cov = np.where(inside, rho[np.clip(c + dy, 0, 2 * c), np.clip(c + dx, 0, 2 * c)] / rho[c, c], 0.0)
    d = dct_matrix(block).numpy().astype(np.float64)
    t = np.kron(d, d)
    variance = np.diag(t @ cov.reshape(block * block, block * block) @ t.T)
    return torch.tensor(variance.reshape(block, block), dtype=torch.float32)


def _window_sums(image: torch.Tensor, size: int) -> torch.Tensor:
    """Sums of ``image`` (H, W) over ``size`` x ``size`` windows, indexed by their top-left pixel."""
    c = torch.nn.functional.pad(image, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]


def _positions(n: int, block: int, stride: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(0, n - block + 1, stride, device=device)
    if int(pos[-1]) != n - block:
        pos = torch.cat([pos, torch.tensor([n - block], device=device)])
    return pos


def _match(
    p: torch.Tensor, r: int, ry: torch.Tensor, rx: torch.Tensor, params: CollaborativeWienerParams
) -> torch.Tensor:
    """The groups of the reference blocks at ``(ry, rx)`` of slice ``r``: (references, size, 3) long
    (slice, dy, dx) of the blocks of the pilot ``p`` most alike each, itself first."""
    depth, h, w = p.shape
    b, sr, zr = params.block, params.search_radius, params.slice_radius
    candidates = [
        (zz, oy, ox)
        for zz in range(max(0, r - zr), min(depth, r + zr + 1))
        for oy in range(-sr, sr + 1)
        for ox in range(-sr, sr + 1)
    ]
    dists = torch.empty((ry.numel(), len(candidates)), device=p.device)
    for i, (zz, oy, ox) in enumerate(candidates):
        sq = torch.zeros((h, w), device=p.device)
        y0, y1, x0, x1 = max(0, -oy), min(h, h - oy), max(0, -ox), min(w, w - ox)
        sq[y0:y1, x0:x1] = (p[r, y0:y1, x0:x1] - p[zz, y0 + oy : y1 + oy, x0 + ox : x1 + ox]) ** 2
        dist = _window_sums(sq, b)[ry, rx]  # reference positions are valid top-left corners
        inside = (ry + oy >= 0) & (ry + oy <= h - b) & (rx + ox >= 0) & (rx + ox <= w - b)
        dists[:, i] = torch.where(inside, dist, math.inf)
        if zz == r and oy == 0 and ox == 0:
            dists[:, i] = -1.0  # the reference block itself, always in its group
    table = torch.tensor(candidates, device=p.device)  # (candidates, 3): slice, dy, dx
    size = min(params.group, len(candidates))  # the first and last slices have fewer neighbours to search
    return table[torch.topk(dists, size, dim=1, largest=False).indices]


def collaborative_wiener(
    noisy: torch.Tensor,
    pilot: torch.Tensor,
    sigma: torch.Tensor,
    autocorrelation: np.ndarray | None = None,
    params: CollaborativeWienerParams | None = None,
    slices: Sequence[int] | None = None,
    before_slice: Callable[[int, int], None] | None = None,
    groups: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The Wiener stage of ``noisy`` with ``pilot`` (module docstring): ``(len(slices), H, W)`` float32.

    Args:
        noisy: (D, H, W) the noisy volume.
        pilot: (D, H, W) an estimate of the signal (every slice the wanted ones' groups can reach).
        sigma: (D, H, W) local noise level, same units.
        autocorrelation: the noise's in-plane autocorrelation (:func:`coefficient_variance`); ``None``: white.
        params: the filter's parameters (default :class:`CollaborativeWienerParams`).
        slices: the slices wanted, ``None`` = all, in order; the result follows that order.
        before_slice: called as ``before_slice(done, total)`` before the groups of each reference slice
            (progress, cancellation: whatever it raises ends the filtering).
        groups: the block matching to hold, per reference slice: a slice found in it uses the groups
            stored there, one not found is matched on the pilot and stored (int16 tensors, references x
            group x (slice, dy, dx)). A caller that probes the filter with small changes of its input
            (:mod:`nsn2n.error_estimate`) holds the matching of the unchanged input this way: the choice
            of the nearest blocks is a step function of the pilot, which a finite difference cannot
            differentiate.

    Slices narrower or shorter than a block are returned as the pilot.
    """
    params = params or CollaborativeWienerParams()
    if noisy.shape != pilot.shape or noisy.shape != sigma.shape or noisy.ndim != 3:
        raise ValueError(
            f"noisy, pilot and sigma must be equal (D, H, W), got {noisy.shape}, {pilot.shape}, {sigma.shape}"
        )
    depth, h, w = noisy.shape
    wanted = list(range(depth)) if slices is None else [int(z) for z in slices]
    device = noisy.device
    b, zr = params.block, params.slice_radius
    x, p = noisy.float(), pilot.float()
    if h < b or w < b:
        return p[wanted].clone()
    var = sigma.float() ** 2
    d_block = dct_matrix(b, device)
    coeff_var = coefficient_variance(autocorrelation, b).to(device)
    keep = torch.zeros(depth, dtype=torch.bool, device=device)
    keep[wanted] = True
    out, weights = torch.zeros_like(x), torch.zeros_like(x)
    ry, rx = (
        t.ravel()
        for t in torch.meshgrid(
            _positions(h, b, params.stride, device), _positions(w, b, params.stride, device), indexing="ij"
        )
    )
    offsets = torch.arange(b, device=device)
    references = sorted({r for z in wanted for r in range(max(0, z - zr), min(depth, z + zr + 1))})
    for done, r in enumerate(references):
        if before_slice is not None:
            before_slice(done, len(references))
        if groups is not None and r in groups:
            nearest = groups[r].to(device=device, dtype=torch.long)
        else:
            nearest = _match(p, r, ry, rx, params)
            if groups is not None:
                groups[r] = nearest.to(torch.int16)
        size = nearest.shape[1]
        d_group = dct_matrix(size, device)
        # A candidate outside the slice (infinite distance) joins only a group with too few inside; it
        # stands at the nearest valid position then.
        gz = nearest[..., 0]
        gy = (ry[:, None] + nearest[..., 1]).clamp(0, h - b)
        gx = (rx[:, None] + nearest[..., 2]).clamp(0, w - b)
        yy = (gy[..., None, None] + offsets[:, None]).expand(-1, -1, b, b)
        xx = (gx[..., None, None] + offsets[None, :]).expand(-1, -1, b, b)
        zz_ = gz[..., None, None].expand(-1, -1, b, b)
        spectrum_p = torch.einsum("kl,rlij->rkij", d_group, d_block @ p[zz_, yy, xx] @ d_block.T)
        spectrum_x = torch.einsum("kl,rlij->rkij", d_group, d_block @ x[zz_, yy, xx] @ d_block.T)
        level = var[zz_, yy, xx].mean(dim=(1, 2, 3)).clamp_min(1e-12)
        noise_var = level[:, None, None, None] * coeff_var
        gain = spectrum_p**2 / (spectrum_p**2 + noise_var)
        estimate = d_block.T @ torch.einsum("lk,rlij->rkij", d_group, gain * spectrum_x) @ d_block
        # 1 / (residual noise variance of the group); the floor keeps an all-zero gain finite.
        group_weight = 1.0 / ((gain**2 * noise_var).sum(dim=(1, 2, 3)) + 1e-3 * level)
        block_weight = group_weight[:, None, None, None].expand_as(estimate) * keep[zz_]
        index = (zz_.reshape(-1), yy.reshape(-1), xx.reshape(-1))
        out.index_put_(index, (estimate * block_weight).reshape(-1), accumulate=True)
        weights.index_put_(index, block_weight.reshape(-1), accumulate=True)
    result = torch.where(weights > 0, out / weights.clamp_min(1e-30), p)
    return result[wanted]
