"""Denoising quality benchmark: one markdown table per case, every method scored by the same code.

Run from the repository root (``nice -n 10`` on a shared machine):

    python -m bench.quality                                   # report set, 3 seeds, all but no-mask/oracle
    python -m bench.quality --split tuning                    # the tuning set (choose defaults here only)
    python -m bench.quality --quick --seeds 1                 # smoke run: 8-slice slabs, 5 steps
    python -m bench.quality --cases ct-thin,lung1 --methods noisy,nsn2n,nlm3d --steps 300
    python -m bench.quality --methods nsn2n --budgets 60,300,900   # NS-N2N at wall-clock budgets
    python -m bench.quality --split tuning --methods nsn2n --set residual_clip_k=null --set unet_width=16
    python -m bench.quality --full --device cuda              # full-size slabs (GPU)
    python -m bench.quality --out bench/results/quality-report-cpu.md   # + quality-report-cpu.log

Cases and splits: :mod:`bench.cases`. Methods and the tuned baseline parameters: :mod:`bench.methods`
(``bench/tuned.json``, written by ``python -m bench.tune_baselines``). Metrics: :func:`bench.metrics.score`.
Noisy volumes and method outputs are cached in ``bench/.cache/`` (``--fresh`` recomputes the outputs).
Progress goes to stderr (and ``FILE.log`` beside ``--out FILE.md``), tables to stdout (and ``--out``).

Timings: torch on 2 cores shared with other busy processes runs 5-20x slower; quote the seconds column
only from a run on an otherwise idle machine. The scores do not depend on the load (seeded,
deterministic), except for NS-N2N under a wall-clock ``--budgets`` (fewer steps when the machine is busy).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench import baselines, cases, noise
from bench.methods import LEARNED, METHODS, Context, Outcome, load_tuned, log, run_method
from bench.metrics import reduction, relative_error, score, true_noise_figures
from bench.report import fmt_spread, log_beside, machine_header, write_lines

#: Training steps of learned methods per preset when neither --steps nor --budgets is given.
DEFAULT_STEPS: dict[str, int | None] = {"default": 100, "quick": 5, "full": None}

COLUMNS = [
    ("psnr", "PSNR", 2),
    ("ssim", "SSIM", 4),
    ("psnr_w400", "PSNR W400", 2),
    ("ssim_w400", "SSIM W400", 4),
    ("psnr_body", "PSNR body", 2),
    ("psnr_edge", "PSNR edge", 2),
    ("ssim_edge", "SSIM edge", 4),
    ("removed_edge_corr", "removed-edge corr", 3),
    ("removed_structure_index", "RSI", 2),
    ("seconds", "seconds", 1),
]


def _fmt(values: list[float], digits: int) -> str:
    return fmt_spread(values, digits)


def row_label(method: str, steps: int | None, budget: float | None, several: bool) -> str:
    """Table label of a method; learned methods carry their step count or budget when several are compared."""
    label = METHODS[method]
    if budget is not None and method in ("nsn2n", "nomask"):
        return f"{label}, {budget:g} s budget"
    return f"{label}, {steps} steps" if several and method in LEARNED else label


def format_table(rows: dict[str, list[dict]], notes: dict[str, str]) -> list[str]:
    """Markdown table: one row per label, mean ± std over noise seeds when there are several."""
    head = "| method | " + " | ".join(c[1] for c in COLUMNS) + " | device |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for label, results in rows.items():
        if not results:
            lines.append(f"| {label} | {notes.get(label, 'skipped')} |" + " |" * len(COLUMNS))
            continue
        cells = [_fmt([r.get(key, float("nan")) for r in results], digits) for key, _, digits in COLUMNS]
        extra = f" ({notes[label]})" if notes.get(label) else ""
        lines.append(f"| {label}{extra} | " + " | ".join(cells) + f" | {results[0]['device']} |")
    return lines


def case_notes(c: cases.Case, vol, noisy: np.ndarray, sigma_hat: float, plan_note: str) -> list[str]:
    """Lines under a table's title: data, the reference's own noise, injected noise, σ̂, training budget."""
    stats = noise.noise_stats(noisy - vol.clean, vol.mask)
    unit = "HU" if vol.modality == "CT" else f"(template units; reference intensity = {vol.ref_scale:g})"
    mask = "body mask (clean HU > −500, holes filled, eroded 3 px)" if vol.modality == "CT" else "brain mask"
    own = cases.reference_own_noise(vol)
    own_txt = (
        f"the clean reference's own noise in flat soft tissue ≈ {own:.1f} HU (a floor for every method)"
        if np.isfinite(own)
        else "the clean reference is a noise-free template"
    )
    return [
        f"- data: {vol.description}; {own_txt}",
        f"- injected noise in the {mask}: σ = {stats['std']:.1f} {unit}, lag-1 correlation in-plane "
        f"{stats['lag1_inplane']:.2f}, between slices {stats.get('lag1_slice', float('nan')):.2f}; "
        f"flat-ROI estimate on the noisy volume σ̂ = {sigma_hat:.1f} (first seed; given to NLM/BM4D)",
        *([f"- learned methods: {plan_note}"] if plan_note else []),
    ]


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{what}: expected integers like 300 or 100,300: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what}: expected positive integers, got {text!r}")
    return values


def _parse_steps(text: str) -> list[int]:
    return _parse_ints(text, "--steps")


def _parse_budgets(text: str) -> list[float]:
    return [float(v) for v in _parse_ints(text, "--budgets")]


def _parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set: expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="8-slice slabs and 5 steps: smoke run")
    size.add_argument("--full", action="store_true", help="full-size slabs (meant for a GPU)")
    p.add_argument("--split", default="report", choices=cases.SPLITS, help="tuning or report set (default report)")
    p.add_argument("--cases", default=None, help="comma list of cases (default: every case of the split)")
    p.add_argument(
        "--methods",
        default="noisy,nsn2n,nlm3d,bm4d,bm4d-white,zsn2n,mean3,gauss",
        help=f"comma list of {', '.join(METHODS)} (default: all but nomask and oracle)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=_parse_steps,
        default=None,
        help="training steps of every learned method; a comma list gives one row per value; default per "
        f"preset {DEFAULT_STEPS} (None: DenoiseConfig's max_steps)",
    )
    budget.add_argument(
        "--budgets",
        type=_parse_budgets,
        default=None,
        help="wall-clock training budgets (s) of NS-N2N / no-mask, one row each (other learned methods: 300 steps)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="nsn2n.DenoiseConfig override for NS-N2N, no-mask and oracle (repeatable), e.g. --set unet_width=16",
    )
    p.add_argument(
        "--reference",
        default="as-is",
        choices=cases.REFERENCES,
        help="as-is (default) or precleaned: CT references denoised first, so that the truth of the "
        "noise-figure rows has no noise of its own (bench.cases)",
    )
    p.add_argument("--seeds", type=int, default=None, help="use the first N seeds of the split (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for learned methods")
    p.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for the sinogram noise simulation"
    )
    p.add_argument("--fresh", action="store_true", help="recompute method outputs instead of reusing bench/.cache")
    p.add_argument("--no-structure", action="store_true", help="leave out the edge-band / removed-structure columns")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file (+ .log)")
    args = p.parse_args(argv)
    known = {**cases.CASES[args.split], **cases.EXTRA[args.split]}
    chosen = args.cases.split(",") if args.cases else list(cases.CASES[args.split])
    bad = [x for x in chosen if x not in known]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {list(known)}")
    bad = [x for x in args.methods.split(",") if x not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    args.case_names = chosen
    return args


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def plan_rows(
    methods: list[str], steps: list[int], budgets: list[float] | None
) -> list[tuple[str, int | None, float | None]]:
    """(method, steps, budget) of every row: learned methods once per step count or budget."""
    plan: list[tuple[str, int | None, float | None]] = []
    for m in methods:
        if budgets is not None and m in ("nsn2n", "nomask"):
            plan += [(m, None, b) for b in budgets]
        elif m in LEARNED:
            plan += [(m, s, None) for s in steps]
        else:
            plan.append((m, None, None))
    return plan


def run_case(
    split: str,
    name: str,
    store: cases.CaseStore,
    methods: list[str],
    seeds: tuple[int, ...],
    steps: list[int],
    budgets: list[float] | None,
    device: str,
    base_config: object,
    *,
    fresh: bool = False,
    structure: bool = True,
    tuned: dict | None = None,
) -> tuple[list[str], dict[str, list[dict]]]:
    """Run every method on one case (all seeds, all budgets); return its markdown section and raw rows."""
    c = cases.case(split, name)
    vol = store.clean(c)
    plan = plan_rows(methods, steps, budgets)
    several = len(steps) > 1
    labels = {k: row_label(k[0], k[1], k[2], several) for k in plan}
    rows: dict[str, list[dict]] = {labels[k]: [] for k in plan}
    notes: dict[str, str] = {}
    reported: dict[str, list[dict[str, float]]] = {}
    header: list[str] = []
    tuned = load_tuned() if tuned is None else tuned
    for seed in seeds:
        noisy = store.noisy(split, c, seed)
        sigma_hat = baselines.estimate_sigma(noisy, vol.modality)
        if not header:
            plan_note = (
                f"NS-N2N at wall-clock budgets {', '.join(f'{b:g} s' for b in budgets)}, others 300 steps"
                if budgets
                else f"{', '.join(map(str, steps))} training steps each"
            )
            plan_note = plan_note if any(m in LEARNED for m in methods) else ""
            header = case_notes(c, vol, noisy, sigma_hat, plan_note)
        ref = "" if store.reference == "as-is" else f"-{store.reference}"
        tag = f"{name}-{split}-{store.preset}{ref}-s{seed}"
        for key in plan:
            method, n_steps, budget = key
            label = labels[key]
            log(f"{name} ({split}) seed {seed}: {label} ...")
            ctx = Context(
                vol,
                noisy,
                n_steps or (300 if budgets else None),
                budget,
                device,
                base_config,
                store.preset,
                sigma_hat,
                tuned,
            )
            out: Outcome = run_method(method, ctx, cache_tag=tag, fresh=fresh)
            if out.denoised is None:
                notes[label] = out.note
                log(f"{name}: {label}: {out.note}")
                continue
            metrics = score(vol.modality, vol.clean, noisy, out.denoised, vol.mask, vol.ref_scale, structure=structure)
            rows[label].append(
                {**metrics, "seconds": out.seconds, "device": out.device, "seed": seed, "note": out.note}
            )
            if out.reported_noise is not None:
                described = described_pixels(noisy, vol.modality)
                reported.setdefault(label, []).append(reported_noise_row(noisy, out, vol, described))
            if budget is not None and out.note:
                notes[label] = (notes.get(label, "") + ("; " if label in notes else "") + out.note).strip("; ")
            log(
                f"{name} seed {seed}: {label}: PSNR body {metrics['psnr_body']:.2f} W400 {metrics['psnr_w400']:.2f} "
                f"edge {metrics.get('psnr_edge', float('nan')):.2f} RSI "
                f"{metrics.get('removed_structure_index', float('nan')):.2f} in {out.seconds:.1f}s"
            )
    seeds_txt = (
        f"mean ± std over noise seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"noise seed {seeds[0]}"
    )
    section = [f"### {name} ({split} set): {c.title} ({seeds_txt})", "", *header, "", *format_table(rows, notes), ""]
    section += format_reported_noise(reported)
    return section, rows


def described_pixels(noisy: np.ndarray, modality: str) -> np.ndarray:
    """(D, H, W) bool: the pixels NS-N2N's noise figures describe, recomputed from the noisy volume as the
    run computes them: its foreground (:func:`nsn2n.api.run_foreground`) on the evaluated slices
    (:func:`nsn2n.error_estimate.evaluation_slices`)."""
    import torch

    from nsn2n import api
    from nsn2n.error_estimate import evaluation_slices

    valid, normalizer, normalised = api.prepare_volume(noisy, None, modality.upper(), None)
    foreground = api.run_foreground(torch.from_numpy(normalised), torch.from_numpy(valid), normalizer, modality.upper())
    out = np.zeros_like(foreground)
    slices = evaluation_slices(foreground, foreground.shape[0])
    out[slices] = foreground[slices]
    return out


def reported_noise_row(
    noisy: np.ndarray, out: Outcome, vol, described: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """The noise figures a method reported against the truth (input units), per pixel set.

    True before: std of ``noisy - clean``; true after: RMS of ``denoised - clean``; reduction =
    ``1 - after / before`` (:mod:`bench.metrics`). Two pixel sets: ``"evaluation mask"`` (the case's CT
    body / MR brain, what the quality columns score) and, when ``described`` is given, ``"pixels it
    describes"`` (:func:`described_pixels`: the same pixels as the reported figures, so the difference is
    the estimator's error alone). On the real CT cases the clean reference carries its own noise, which
    the truth counts as error and the method as noise (``--reference precleaned`` removes it). A run that
    reported no "after" (its estimate was not usable) gives NaN for it and for the reduction.
    """
    before, after = out.reported_noise
    reported_reduction = reduction(before, after)
    masks = {"evaluation mask": vol.mask.astype(bool)}
    if described is not None:
        masks["pixels it describes"] = described
    rows = {}
    for name, mask in masks.items():
        true_before, true_after = true_noise_figures(vol.clean, noisy, out.denoised, mask)
        true_reduction = reduction(true_before, true_after)
        rows[name] = {
            "before": before,
            "after": float("nan") if after is None else after,
            "true_before": true_before,
            "true_after": true_after,
            "reduction": 100 * reported_reduction,
            "true_reduction": 100 * true_reduction,
            "relative_error": 100 * relative_error(reported_reduction, true_reduction),
        }
    return rows


def format_reported_noise(reported: dict[str, list[dict[str, dict[str, float]]]]) -> list[str]:
    """A table of the noise figures each method reported, against the truth (see :func:`reported_noise_row`)."""
    if not reported:
        return []
    keys = [
        ("before", "reported before"),
        ("true_before", "true before"),
        ("after", "reported after"),
        ("true_after", "true after"),
        ("reduction", "reported reduction %"),
        ("true_reduction", "true reduction %"),
        ("relative_error", "relative error of the reduction %"),
    ]
    lines = [
        "Noise figures the method reported (its run report: noise-model level before, SURE after, over its "
        "foreground on up to 16 evenly spaced slices) against the truth, in the evaluation mask and over the "
        "pixels the figures describe:",
        "",
        "| method | truth over | " + " | ".join(title for _, title in keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for label, items in reported.items():
        for pixels in items[0]:
            cells = [_fmt([item[pixels][key] for item in items], 1) for key, _ in keys]
            lines.append(f"| {label} | {pixels} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def footer() -> list[str]:
    """Method and metric definitions printed under the tables."""
    return [
        "Metrics (`bench.metrics.score`, the same for every method): CT HU clipped to [−1024, 3071] → [0, 1]; "
        "W400 = soft-tissue window [−160, 240] → [0, 1]; MR intensity / 99.9th percentile of the clean "
        "template, clipped to [0, 1]; data_range = 1 always. PSNR from the global MSE over the volume (or the "
        "mask: CT body / MR brain); SSIM 2-D (Gaussian σ 1.5, population covariance) averaged over slices. "
        "Edge band = top 15 % clean in-plane gradient (CT on W400, MR on [0, 1]) inside the mask, dilated "
        "1 px; PSNR edge / SSIM edge on that scale in the band. Removed-edge corr = Pearson correlation of "
        "the local |input − output| with the clean gradient magnitude over the mask (0: only noise removed). "
        "RSI = the no-reference removed-structure index of `qa_report.residual_structure` (input and output "
        "only; > threshold: anatomy in the difference image). Seconds = wall time of the method on this "
        "machine (training + inference).",
        "",
        "Methods: NS-N2N = `nsn2n.denoise_volume` with the default `DenoiseConfig` except the step count or "
        "time budget (and `seed=0`, plus any `--set` overrides listed above); no-mask = the same with "
        "`use_weight_map=False`; oracle = `bench.oracle.fit_supervised_oracle` (same network and steps, clean "
        "target: the ceiling); ZS-N2N = Mansour & Heckel's 2-conv 48-channel net and loss, ONE network "
        "shared by all slices trained on random 96² crops; NLM 3-D = skimage `denoise_nl_means` (fast mode, "
        "h = factor × σ̂, σ̂ from flat ROIs of the noisy volume); BM4D = PyPI `bm4d` 4.2.5 in its own venv "
        "(non-commercial licence, not a project dependency) with the noise PSD estimated from flat tiles of "
        "the noisy volume, or white noise of σ̂; NLM and BM4D parameters per modality from "
        "`bench/tuned.json`, chosen on the tuning set by `python -m bench.tune_baselines`. The 3-slice mean "
        "and the Gaussian are reference points, not competitors.",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        return _main(args, argv)


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    import nsn2n
    from bench.methods import nsn2n_source_digest

    nsn2n_source_digest()  # the sources as imported, before a long run (bench.methods)
    preset = "quick" if args.quick else "full" if args.full else "default"
    overrides = dict(args.overrides)
    base_config = nsn2n.DenoiseConfig.from_mapping(overrides, source="--set")
    steps = args.steps or [DEFAULT_STEPS[preset] or base_config.max_steps]
    methods = args.methods.split(",")
    seeds = cases.SEEDS[args.split][: args.seeds] if args.seeds else cases.SEEDS[args.split]
    device = resolve_device(args.device)
    t_start = time.time()
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none (defaults)"
    lines = [
        f"## Denoising quality benchmark: {args.split} set",
        "",
        *machine_header("bench.quality", argv, device),
        f"- nsn2n {nsn2n.__version__} (sources sha256 {nsn2n_source_digest()}); DenoiseConfig overrides "
        f"besides the steps/budget: {changed}",
        f"- baseline parameters: bench/tuned.json {load_tuned() or '(not tuned yet: dataclass defaults)'}",
        *(
            [f"- reference: {args.reference} (CT references denoised before the noise is injected; bench.cases)"]
            if args.reference != "as-is"
            else []
        ),
        "",
    ]
    print("\n".join(lines), flush=True)
    store = cases.CaseStore(preset, args.workers, reference=args.reference)
    for name in args.case_names:
        section, _ = run_case(
            args.split,
            name,
            store,
            methods,
            seeds,
            steps,
            args.budgets,
            device,
            base_config,
            fresh=args.fresh,
            structure=not args.no_structure,
        )
        print("\n".join(section), flush=True)
        lines += section
        if args.out:
            write_lines(args.out, [*lines, f"(partial: {time.time() - t_start:.0f} s so far)"])
    tail = [*footer(), "", f"Total wall time: {time.time() - t_start:.0f} s ({preset} preset)."]
    lines += tail
    print("\n".join(tail), flush=True)
    if args.out:
        write_lines(args.out, lines)
        log(f"wrote {args.out} and {args.out.with_suffix('.log')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
