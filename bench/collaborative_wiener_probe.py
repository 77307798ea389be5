"""Probe the collaborative Wiener stage after NS-N2N's blend: each case with and without it.

    python -m bench.collaborative_wiener_probe --split report --seeds 0 \\
        --cases ct-thin,ct-thick,lung1,mr-thin-r5,mr-thin-r9,mr-thick-r5 --out FILE

The stage (:mod:`nsn2n.collaborative_wiener`; in the pipeline by default on thick MR,
:attr:`nsn2n.DenoiseConfig.collaborative_wiener`) is the second step of BM3D with the output so far as
the pilot: for every reference block (8 x 8 pixels, every 3rd pixel, every
slice), the 16 blocks of the pilot most alike it within 15 x 15 pixels on its own slice and the
neighbouring ones are grouped, and the same blocks of the noisy input are shrunk jointly by the empirical
Wiener gain in a 3-D transform (the module's docstring has the rule and the reference).

Why it might help: the 3-D non-local means of the blend compares single-slice patches on thick slices
and searches a 7 x 7 window; a group of blocks from a wider window, shrunk jointly in a transform, is the
stronger prior that BM4D brings (where NS-N2N trails it: thick slices).

One NS-N2N training per case and seed with the stage on; inference runs once more without it, so the two
outputs share the network. Scores are :func:`bench.metrics.score`'s, the quality tables' scale.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from bench import cases
from bench.metrics import score
from bench.report import log_beside, machine_header, write_lines
from nsn2n.collaborative_wiener import CollaborativeWienerParams

PARAMS = CollaborativeWienerParams()


def probe(split: str, name: str, seed: int, store: cases.CaseStore) -> tuple[dict, dict, float]:
    """``(scores without the stage, scores with it, the stage's seconds)`` of one case and seed."""
    c = cases.case(split, name)
    vol = store.clean(c)
    noisy = store.noisy(split, c, seed)
    without, with_stage, seconds = with_and_without_stage(noisy, vol.spacing, vol.modality)
    mask = vol.mask.astype(bool)

    def scores(test: np.ndarray) -> dict:
        return score(vol.modality, vol.clean, noisy, test, mask, vol.ref_scale)

    return scores(without), scores(with_stage), seconds


def with_and_without_stage(
    noisy: np.ndarray, spacing: tuple[float, float, float], modality: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(the output without the stage, with it, the stage's seconds)`` of one training.

    The run has the stage (``collaborative_wiener: true``); its inference runs once more without it."""
    import nsn2n
    from nsn2n import api

    infer = api._infer
    captured: dict = {}

    def infer_twice(run, network, maps, config, keep, rician=None, blend=None, wiener=None):
        if wiener is None:
            raise RuntimeError("the run has no collaborative Wiener stage (no usable noise level)")
        without = infer(run, network, maps, config, keep, rician, blend, None)
        result = infer(run, network, maps, config, keep, rician, blend, wiener)
        captured["without"], captured["seconds"] = without.denoised, result.seconds - without.seconds
        return result

    api._infer = infer_twice
    try:
        config = nsn2n.DenoiseConfig(num_threads=1, log_every_s=600, collaborative_wiener=True)
        result = nsn2n.denoise_volume(noisy, spacing, modality, config)
    finally:
        api._infer = infer
    return captured["without"], result.denoised, captured["seconds"]


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
            f"Stage: {PARAMS.block} x {PARAMS.block} blocks every {PARAMS.stride} px, groups of {PARAMS.group} from "
            f"a {2 * PARAMS.search_radius + 1} x {2 * PARAMS.search_radius + 1} window on the slice and "
            f"{PARAMS.slice_radius} on either side; the product's output (blend, "
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
