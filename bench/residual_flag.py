"""Does the removed-anatomy flag fire where it should? One table per split.

    nice -n 10 python -m bench.residual_flag --split tuning --out bench/results/residual-flag-tuning-cpu.md
    nice -n 10 python -m bench.residual_flag --split report --out bench/results/residual-flag-report-cpu.md

For every case and method output (from the output cache that ``bench.quality`` fills, or computed), it
prints the no-reference removed-structure index of :mod:`qa_report.residual_structure` (input and output
only) with the verdict at :data:`~qa_report.residual_structure.DEFAULT_THRESHOLD`, next to the
with-reference structure measures (removed-edge correlation, PSNR in the edge band) that say whether
anatomy really was removed. Controls: the strong Gaussian (removes edges: must fire), the 3-slice mean
(blurs anatomy that changes between slices), and ``edges-removed``, an output built as the input minus
the clean volume's high-pass part (its difference image is anatomy only: must fire). The threshold is
chosen on the tuning split: above every tuned NLM-3D/BM4D output, below every control.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench import baselines, cases
from bench.methods import METHODS, Context, load_tuned, log, run_method
from bench.metrics import score
from bench.quality import resolve_device
from bench.report import log_beside, machine_header, write_lines
from qa_report.residual_structure import DEFAULT_THRESHOLD, removed_structure_index

EDGES_REMOVED = "edges-removed"


def edges_removed(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Input minus the clean volume's in-plane high-pass (clean − Gaussian 2 px): noise kept, edges gone."""
    clean = clean.astype(np.float64)
    return (noisy - (clean - ndimage.gaussian_filter(clean, (0, 2, 2)))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.residual_flag", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="tuning", choices=cases.SPLITS)
    p.add_argument("--cases", default=None)
    p.add_argument("--methods", default="nlm3d,bm4d,bm4d-white,nsn2n,mean3,gauss")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the split's first)")
    p.add_argument("--steps", type=int, default=100, help="NS-N2N training steps (default 100)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cached-only", action="store_true", help="use only outputs bench.quality already cached")
    p.add_argument("--out", type=Path, default=None, help="markdown table (+ .log beside it)")
    args = p.parse_args(argv)
    cached_only = args.cached_only
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        import nsn2n

        t0 = time.time()
        names = args.cases.split(",") if args.cases else list(cases.CASES[args.split])
        seed = cases.SEEDS[args.split][0] if args.seed is None else args.seed
        device = resolve_device(args.device)
        store = cases.CaseStore("default", 2)
        methods = [*args.methods.split(","), EDGES_REMOVED]
        label = {**METHODS, EDGES_REMOVED: "input − clean high-pass (edges removed, noise kept)"}
        lines = [
            f"## Removed-anatomy flag: {args.split} set, noise seed {seed}",
            "",
            *machine_header("bench.residual_flag", argv, device),
            f"- threshold {args.threshold:g} (RSI above it: flag fires, marked **FIRES**); NS-N2N {args.steps} steps",
            "",
            "| case | method | RSI (no reference) | verdict | removed-edge corr | PSNR edge | PSNR body |",
            "|---|---|---|---|---|---|---|",
        ]
        tuned = load_tuned()
        for name in names:
            c = cases.case(args.split, name)
            vol = store.clean(c)
            noisy = store.noisy(args.split, c, seed)
            sigma_hat = baselines.estimate_sigma(noisy, vol.modality)
            for method in methods:
                if method == EDGES_REMOVED:
                    out = edges_removed(noisy, vol.clean)
                else:
                    ctx = Context(
                        vol, noisy, args.steps, None, device, nsn2n.DenoiseConfig(), "default", sigma_hat, tuned
                    )
                    tag = f"{name}-{args.split}-default-s{seed}"
                    result = run_method(method, ctx, cache_tag=tag, cached_only=cached_only)
                    if result.denoised is None:
                        lines.append(f"| {name} | {label[method]} | {result.note} | | | | |")
                        continue
                    out = result.denoised
                rsi = removed_structure_index(noisy, out, threshold=args.threshold)
                s = score(vol.modality, vol.clean, noisy, out, vol.mask, vol.ref_scale, ssim=False)
                verdict = "**FIRES**" if rsi.fires else "quiet"
                lines.append(
                    f"| {name} | {label[method]} | {rsi.index:.2f} | {verdict} | {s['removed_edge_corr']:.3f} "
                    f"| {s['psnr_edge']:.2f} | {s['psnr_body']:.2f} |"
                )
                log(f"{name} {method}: RSI {rsi.index:.2f} ({verdict})")
            if args.out:
                write_lines(args.out, lines)
        lines += [
            "",
            "RSI = removed-structure index (`qa_report.residual_structure`): difference-image energy on the "
            "output's edges over the energy right beside them, minus 1 (0: noise only). Removed-edge corr and "
            "PSNR edge use the clean reference (`bench.metrics`).",
            "",
            f"Total wall time: {time.time() - t0:.0f} s.",
        ]
        print("\n".join(lines), flush=True)
        if args.out:
            write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
