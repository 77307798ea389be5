"""Probe a candidate stage: a collaborative Wiener filter after NS-N2N's blend (not in the product yet).

    python -m bench.collaborative_wiener_probe --split report --seeds 0 \\
        --cases ct-thin,ct-thick,lung1,mr-thin-r5,mr-thin-r9,mr-thick-r5 --out FILE

The stage is the second step of BM3D (Dabov, Foi, Katkovnik & Egiazarian, "Image denoising by sparse 3-D
transform-domain collaborative filtering", IEEE TIP 16(8), 2007) with the product's output as the pilot:
for every reference block (8 x 8 pixels, every 3rd pixel, every slice), the 16 blocks of the pilot most
alike it within 15 x 15 pixels on its own slice and the neighbouring ones are grouped; the same blocks of
the noisy input are transformed (2-D DCT of each block, then a DCT along the group), each coefficient is
scaled by the empirical Wiener gain ``P^2 / (P^2 + s^2)`` (``P``: the pilot's coefficient, ``s^2``: the
noise's variance in that coefficient, from the run's noise level and in-plane correlation), transformed
back, and the blocks are put back with weights ``1 / sum(gain^2 s^2)``.

Why it might help: the 3-D non-local means of the blend compares single-slice patches on thick slices
and searches a 7 x 7 window; a group of blocks from a wider window, shrunk jointly in a transform, is the
stronger prior that BM4D brings (where NS-N2N trails it: thick slices).

One NS-N2N training per case and seed; inference runs twice, once as the product does and once with the
stage after the blend (before the Rician correction and the return to input units, as the blend), so the
two outputs share the network. Scores are :func:`bench.metrics.score`'s, the quality tables' scale.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import cases
from bench.metrics import score
from bench.report import log_beside, machine_header, write_lines

BLOCK = 8
GROUP = 16
SEARCH = 7
STRIDE = 3
SLICE_RADIUS = 1


def _dct_matrix(n: int) -> torch.Tensor:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return torch.tensor(m, dtype=torch.float32)


def _coefficient_variance(autocorrelation: np.ndarray, block: int) -> torch.Tensor:
    """Variance of each 2-D DCT coefficient of a block of unit-variance noise with this autocorrelation."""
    c = autocorrelation.shape[0] // 2
    idx = np.arange(block)
    dy = idx[:, None, None, None] - idx[None, None, :, None]
    dx = idx[None, :, None, None] - idx[None, None, None, :]
    lag_ok = (np.abs(dy) <= c) & (np.abs(dx) <= c)
    cov = np.where(lag_ok, autocorrelation[np.clip(c + dy, 0, 2 * c), np.clip(c + dx, 0, 2 * c)], 0.0)
    cov = cov.reshape(block * block, block * block)
    d = _dct_matrix(block).numpy().astype(np.float64)
    t = np.kron(d, d)
    return torch.tensor(np.diag(t @ cov @ t.T).reshape(block, block), dtype=torch.float32)


def _window_sums(image: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over ``size`` x ``size`` windows, indexed by their top-left pixel."""
    c = torch.nn.functional.pad(image, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    return c[..., size:, size:] - c[..., :-size, size:] - c[..., size:, :-size] + c[..., :-size, :-size]


def _positions(n: int) -> torch.Tensor:
    pos = torch.arange(0, n - BLOCK + 1, STRIDE)
    return pos if pos[-1] == n - BLOCK else torch.cat([pos, torch.tensor([n - BLOCK])])


def collaborative_wiener(
    noisy: np.ndarray, pilot: np.ndarray, sigma: np.ndarray, autocorrelation: np.ndarray
) -> np.ndarray:
    """(D, H, W) float32: the Wiener stage of ``noisy`` with ``pilot``; ``sigma``: (D, H, W) noise level."""
    depth, h, w = noisy.shape
    if h < BLOCK or w < BLOCK:
        return pilot.astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(noisy, np.float32))
    p = torch.from_numpy(np.ascontiguousarray(pilot, np.float32))
    var = torch.from_numpy(np.ascontiguousarray(sigma, np.float32)) ** 2
    d_block, d_group = _dct_matrix(BLOCK), _dct_matrix(GROUP)
    coeff_var = _coefficient_variance(autocorrelation, BLOCK)
    out, weights = torch.zeros_like(x), torch.zeros_like(x)
    ry, rx = (t.ravel() for t in torch.meshgrid(_positions(h), _positions(w), indexing="ij"))
    offsets = torch.arange(BLOCK)
    for z in range(depth):
        dists, cz, cy, cx = [], [], [], []
        for zz in range(max(0, z - SLICE_RADIUS), min(depth, z + SLICE_RADIUS + 1)):
            for oy in range(-SEARCH, SEARCH + 1):
                for ox in range(-SEARCH, SEARCH + 1):
                    ty, tx = ry + oy, rx + ox
                    inside = (ty >= 0) & (ty <= h - BLOCK) & (tx >= 0) & (tx <= w - BLOCK)
                    sq = torch.zeros(h, w)
                    y0, y1, x0, x1 = max(0, -oy), min(h, h - oy), max(0, -ox), min(w, w - ox)
                    sq[y0:y1, x0:x1] = (p[z, y0:y1, x0:x1] - p[zz, y0 + oy : y1 + oy, x0 + ox : x1 + ox]) ** 2
                    dist = _window_sums(sq, BLOCK)[ry, rx]
                    dist = torch.where(inside, dist, torch.full_like(dist, math.inf))
                    if zz == z and oy == 0 and ox == 0:
                        dist = torch.full_like(dist, -1.0)  # the reference block itself, always first
                    dists.append(dist)
                    cz.append(torch.full_like(ry, zz))
                    cy.append(ty.clamp(0, h - BLOCK))
                    cx.append(tx.clamp(0, w - BLOCK))
        nearest = torch.topk(torch.stack(dists, 1), GROUP, dim=1, largest=False).indices
        gz, gy, gx = (torch.stack(t, 1).gather(1, nearest) for t in (cz, cy, cx))
        yy = (gy[..., None, None] + offsets[:, None]).expand(-1, -1, BLOCK, BLOCK)
        xx = (gx[..., None, None] + offsets[None, :]).expand(-1, -1, BLOCK, BLOCK)
        zz_ = gz[..., None, None].expand(-1, -1, BLOCK, BLOCK)
        spectrum_p = torch.einsum("kl,rlij->rkij", d_group, d_block @ p[zz_, yy, xx] @ d_block.T)
        spectrum_x = torch.einsum("kl,rlij->rkij", d_group, d_block @ x[zz_, yy, xx] @ d_block.T)
        noise_var = var[zz_, yy, xx].mean(dim=(1, 2, 3))[:, None, None, None].clamp_min(1e-12) * coeff_var
        gain = spectrum_p**2 / (spectrum_p**2 + noise_var)
        estimate = d_block.T @ torch.einsum("lk,rlij->rkij", d_group, gain * spectrum_x) @ d_block
        weight = 1.0 / ((gain**2 * noise_var).sum(dim=(1, 2, 3)) + 1e-3 * noise_var.mean(dim=(1, 2, 3)))
        w_blocks = weight[:, None, None, None].expand_as(estimate)
        index = (zz_.reshape(-1), yy.reshape(-1), xx.reshape(-1))
        out.index_put_(index, (estimate * w_blocks).reshape(-1), accumulate=True)
        weights.index_put_(index, w_blocks.reshape(-1), accumulate=True)
    return torch.where(weights > 0, out / weights.clamp_min(1e-20), p).numpy()


class _WithStage:
    """The run's blend followed by the collaborative Wiener stage (whole volumes only)."""

    def __init__(self, blend, autocorrelation: np.ndarray, seconds: list[float]) -> None:
        self.blend, self.autocorrelation, self.seconds = blend, autocorrelation, seconds

    def __call__(self, volume, network_out, slices, should_stop=None, log_every_s=None):
        pilot = self.blend(volume, network_out, slices, should_stop, log_every_s)
        t = time.monotonic()
        out = collaborative_wiener(volume, pilot, self.blend.sigma.cpu().numpy(), self.autocorrelation)
        self.seconds.append(time.monotonic() - t)
        return out


def probe(split: str, name: str, seed: int, store: cases.CaseStore) -> tuple[dict, dict, float]:
    """``(scores as the product, scores with the stage, the stage's seconds)`` of one case and seed."""
    import nsn2n
    from nsn2n import api

    captured: dict = {}
    make_blend, infer = api._nonlocal_blend, api._infer

    def nonlocal_blend(run, noise_model, capped, config):
        captured["autocorrelation"] = noise_model.autocorrelation
        return make_blend(run, noise_model, capped, config)

    def infer_twice(run, network, maps, config, keep, rician=None, blend=None):
        result = infer(run, network, maps, config, keep, rician, blend)
        if blend is not None:
            staged = _WithStage(blend, captured["autocorrelation"], captured.setdefault("seconds", []))
            captured["stage"] = infer(run, network, maps, config, keep, rician, staged)[0]
        return result

    c = cases.case(split, name)
    vol = store.clean(c)
    noisy = store.noisy(split, c, seed)
    api._nonlocal_blend, api._infer = nonlocal_blend, infer_twice
    try:
        config = nsn2n.DenoiseConfig(num_threads=1, log_every_s=600)
        result = nsn2n.denoise_volume(noisy, vol.spacing, vol.modality, config)
    finally:
        api._nonlocal_blend, api._infer = make_blend, infer
    if "stage" not in captured:
        raise RuntimeError(f"{name}: the run did not blend, so there is no pilot for the stage")
    mask = vol.mask.astype(bool)

    def scores(test: np.ndarray) -> dict:
        return score(vol.modality, vol.clean, noisy, test, mask, vol.ref_scale)

    return scores(result.denoised), scores(captured["stage"]), sum(captured["seconds"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.collaborative_wiener_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=("tuning", "report"), default="tuning")
    p.add_argument("--cases", default="ct-thin,ct-thick,lung1,mr-thin-r5,mr-thin-r9,mr-thick-r5")
    p.add_argument("--seeds", default=None, help="comma list (default: the split's first seed)")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (+ .log)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [cases.SEEDS[args.split][0]]
    torch.set_num_threads(1)
    with log_beside(args.out):
        store = cases.CaseStore("default", 1)
        lines = [
            f"# Candidate stage: collaborative Wiener after the blend ({args.split} set)",
            "",
            *machine_header("bench.collaborative_wiener_probe", sys.argv[1:] if argv is None else argv),
            "",
            f"Stage: {BLOCK} x {BLOCK} blocks every {STRIDE} px, groups of {GROUP} from a {2 * SEARCH + 1} x "
            f"{2 * SEARCH + 1} window on the slice and {SLICE_RADIUS} on either side; the product's output (blend, "
            "before the Rician correction) as the pilot. Columns as in the quality tables: PSNR in the "
            "evaluation mask (CT body, MR brain), W400 (CT), edge band PSNR / SSIM, removed-edge correlation; "
            "each cell: the product's output -> with the stage.",
            "",
            "| case | seed | PSNR mask | PSNR W400 | PSNR edge | SSIM edge | removed-edge corr | stage s |",
            "|---|---|---|---|---|---|---|---:|",
        ]
        for name in args.cases.split(","):
            for seed in seeds:
                base, staged, seconds = probe(args.split, name, seed, store)

                def cell(key: str, digits: int) -> str:
                    a, b = base[key], staged[key]  # noqa: B023
                    return "–" if math.isnan(a) else f"{a:.{digits}f} -> {b:.{digits}f} ({b - a:+.{digits}f})"

                row = (
                    f"| {name} | {seed} | {cell('psnr_body', 2)} | {cell('psnr_w400', 2)} | {cell('psnr_edge', 2)} | "
                    f"{cell('ssim_edge', 4)} | {cell('removed_edge_corr', 3)} | {seconds:.0f} |"
                )
                print(f"[bench] {row}", file=sys.stderr, flush=True)
                lines.append(row)
        print("\n".join(lines))
        if args.out is not None:
            write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
