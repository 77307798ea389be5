"""Quality against wall-clock time, every method on the same machine, NS-N2N at several time budgets.

    nice -n 10 python -m bench.tradeoff --out bench/results/tradeoff-report-cpu.md        # (+ .log)
    python -m bench.tradeoff --budgets 60,300,900 --cases ct-thin --seeds 1
    python -m bench.tradeoff --split tuning --set unet_width=16      # a core variant, tuning set

Runs :func:`bench.quality.run_case` (same cases, cache, metrics) with NS-N2N at each wall-clock training
budget (``DenoiseConfig.time_budget_s``, as the app runs) and every other method once, then prints per
case one table sorted by wall time: what each second of computing buys. Seconds are only comparable
within one run on one otherwise idle machine; cached outputs keep the seconds of the run that made them
(``--fresh`` recomputes everything).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from bench import cases, quality
from bench.methods import METHODS, log, nsn2n_source_digest
from bench.report import fmt_spread, log_beside, machine_header, write_lines

DEFAULT_METHODS = "noisy,nsn2n,nlm3d,bm4d,bm4d-white,zsn2n,mean3"
TRADEOFF_COLUMNS = [
    ("psnr_body", "PSNR body", 2),
    ("psnr_w400", "PSNR W400", 2),
    ("ssim_w400", "SSIM W400", 4),
    ("psnr_edge", "PSNR edge", 2),
    ("removed_edge_corr", "removed-edge corr", 3),
]


def tradeoff_table(rows: dict[str, list[dict]]) -> list[str]:
    """Rows sorted by mean wall time: seconds, then the quality columns (mean ± std over seeds)."""
    head = "| method | seconds | " + " | ".join(c[1] for c in TRADEOFF_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(TRADEOFF_COLUMNS) + 2)]
    done = [(label, r) for label, r in rows.items() if r]
    for label, results in sorted(done, key=lambda kv: float(np.mean([r["seconds"] for r in kv[1]]))):
        cells = [fmt_spread([r.get(k, float("nan")) for r in results], d) for k, _, d in TRADEOFF_COLUMNS]
        reached = [r["note"] for r in results if r.get("note")]
        if reached:
            label = f"{label} ({', '.join(reached)})"
        lines.append(f"| {label} | {fmt_spread([r['seconds'] for r in results], 0)} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.tradeoff", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="report", choices=cases.SPLITS)
    p.add_argument("--cases", default=None)
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--budgets", type=quality._parse_budgets, default=[60.0, 180.0, 300.0], help="NS-N2N budgets (s)")
    p.add_argument("--set", dest="overrides", type=quality._parse_override, action="append", default=[])
    p.add_argument("--seeds", type=int, default=None, help="first N seeds of the split (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="markdown (+ .log beside it)")
    args = p.parse_args(argv)
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        import nsn2n

        t0 = time.time()
        device = quality.resolve_device(args.device)
        overrides = dict(args.overrides)
        base_config = nsn2n.DenoiseConfig.from_mapping(overrides, source="--set")
        names = args.cases.split(",") if args.cases else list(cases.CASES[args.split])
        seeds = cases.SEEDS[args.split][: args.seeds] if args.seeds else cases.SEEDS[args.split]
        store = cases.CaseStore("default", 2)
        lines = [
            f"## Quality against wall-clock time: {args.split} set",
            "",
            *machine_header("bench.tradeoff", argv, device),
            f"- nsn2n sources sha256 {nsn2n_source_digest()}; DenoiseConfig overrides: "
            f"{', '.join(f'{k}={v}' for k, v in overrides.items()) or 'none (defaults)'}",
            "",
        ]
        for name in names:
            section, rows = quality.run_case(
                args.split,
                name,
                store,
                args.methods.split(","),
                seeds,
                [300],
                args.budgets,
                device,
                base_config,
                fresh=args.fresh,
            )
            title, notes = section[0], [line for line in section[1:] if line.startswith("- ")]
            part = [title, "", *notes, "", *tradeoff_table(rows), ""]
            print("\n".join(part), flush=True)
            lines += part
            if args.out:
                write_lines(args.out, lines)
        lines += [
            "Columns as in `bench.quality` (same metrics code); rows sorted by wall time. NS-N2N rows are "
            "trained for the stated wall-clock budget; the steps each seed reached follow the label.",
            "",
            f"Total wall time: {time.time() - t0:.0f} s.",
        ]
        if args.out:
            write_lines(args.out, lines)
            log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
