"""Probe a candidate stage: a collaborative Wiener filter after NS-N2N's blend (not in the product yet).

    python -m bench.collaborative_wiener_probe --split report --seeds 0 \\
        --cases ct-thin,ct-thick,lung1,mr-thin-r5,mr-thin-r9,mr-thick-r5 --out FILE

The stage (:mod:`nsn2n.collaborative_wiener`, not in the pipeline yet) is the second step of BM3D with
the product's output as the pilot: for every reference block (8 x 8 pixels, every 3rd pixel, every
slice), the 16 blocks of the pilot most alike it within 15 x 15 pixels on its own slice and the
neighbouring ones are grouped, and the same blocks of the noisy input are shrunk jointly by the empirical
Wiener gain in a 3-D transform (the module's docstring has the rule and the reference).

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
from nsn2n.collaborative_wiener import CollaborativeWienerParams, collaborative_wiener

PARAMS = CollaborativeWienerParams()


class _WithStage:
    """The run's blend followed by the collaborative Wiener stage (whole volumes only)."""

    def __init__(self, blend, autocorrelation: np.ndarray, seconds: list[float]) -> None:
        self.blend, self.autocorrelation, self.seconds = blend, autocorrelation, seconds

    def __call__(self, volume, network_out, slices, should_stop=None, log_every_s=None):
        pilot = self.blend(volume, network_out, slices, should_stop, log_every_s)
        t = time.monotonic()
        volume_t, pilot_t = (torch.from_numpy(np.ascontiguousarray(v, np.float32)) for v in (volume, pilot))
        out = collaborative_wiener(volume_t, pilot_t, self.blend.sigma.cpu(), self.autocorrelation, PARAMS).numpy()
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
