"""Output-only noise estimators against the ground truth: what a figure computed from input and output alone is worth.

    nice -n 10 python -m bench.noise_truth --out FILE.md   # (+ .log)
    python -m bench.noise_truth --estimators paired-slice,flat-roi,mypkg.mymod:my_estimator --cases ct-thin

Not the product's figures. The run reports the noise model's level before and a Monte-Carlo SURE of its
error after (``nsn2n/error_estimate.py``); SURE needs the denoiser itself, so it cannot be computed from a
cached output. Those figures are checked against the truth by ``bench/sure_check.py`` (classic denoisers,
with the product's noise model and with the true level) and by the reported-noise section of every
``bench/quality.py`` table (NS-N2N's own run report). This script compares estimators that see only the
input and one output, such as the paired-slice figure the product reported until 2026-11-30; its last
table is ``results/history/noise-truth-report-cpu.md``.

For every benchmark case and every method output (taken from the output cache that ``bench.quality``
fills, or computed), the truth is known:

* true noise before = std of ``noisy - clean`` in the evaluation mask (CT body, MR brain);
* true error after = RMS of ``denoised - clean`` in the same mask;
* true reduction = 1 - after / before.

On the real CT cases the clean reference carries its own noise (about 20-30 HU, stated in the quality
tables), so "true after" includes it and the true reduction of the injected noise is understated there;
the MR cases (noise-free template) and lung1 (about 10 HU of its own) are the cleanest checks.

An **estimator** is any function ``(noisy, denoised, *, spacing, modality) -> (before, after)`` that
sees what the product sees (never the clean volume or the mask). The table gives each estimator's
before / after / reduction and the relative error of its reduction, ``(estimated - true) / |true|``:
the figure a user reads as "X % lower". Plug a new estimator in with ``--estimators module:function``
(or add it to :data:`ESTIMATORS`).

Estimators included:

* ``paired-slice``: ``nsn2n.noise.paired_slice_noise_sigma`` on the weight maps of the noisy volume,
  applied to the input and to the output (the product's figure until 2026-11-30: its "after" measured
  what the paper's regional-consistency loss drives down).
* ``flat-roi``: the benchmark's flat-ROI standard deviation (``bench.noise.estimate_sigma_flat_roi``) on
  the input and on the output, each with its own object mask.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import baselines, cases, noise
from bench.methods import METHODS, Context, load_tuned, log, run_method
from bench.metrics import reduction, relative_error, true_noise_figures
from bench.quality import resolve_device
from bench.report import log_beside, machine_header, write_lines

Estimator = Callable[..., tuple[float, float]]


_MAPS: dict[tuple, tuple] = {}


def _weight_maps_of(noisy: np.ndarray, modality: str) -> tuple:
    """(weights, valid) of the default config for a noisy volume, computed once per volume."""
    import torch

    import nsn2n
    from nsn2n import api

    key = (modality, noisy.shape, hashlib.sha256(np.ascontiguousarray(noisy).tobytes()).hexdigest())
    if key not in _MAPS:
        valid, _, normalised = api.prepare_volume(noisy, None, modality.upper(), None)
        cfg = nsn2n.DenoiseConfig(device="cpu")
        maps = api.configured_weight_maps(torch.from_numpy(normalised), torch.from_numpy(valid), cfg)
        _MAPS.clear()
        _MAPS[key] = (maps.weights, valid)
    return _MAPS[key]


def paired_slice_estimator(noisy: np.ndarray, denoised: np.ndarray, *, spacing, modality: str) -> tuple[float, float]:
    """Paired-slice MAD on matched pixels of the noisy volume's weight maps, of the input and of the output."""
    from nsn2n.noise import paired_slice_noise_sigma

    weights, valid = _weight_maps_of(noisy, modality)
    return paired_slice_noise_sigma(noisy, weights, valid), paired_slice_noise_sigma(denoised, weights, valid)


def flat_roi_estimator(noisy: np.ndarray, denoised: np.ndarray, *, spacing, modality: str) -> tuple[float, float]:
    """Flat-ROI local standard deviation of the input and of the output (object masks from each)."""
    return baselines.estimate_sigma(noisy, modality), baselines.estimate_sigma(denoised, modality)


ESTIMATORS: dict[str, Estimator] = {"paired-slice": paired_slice_estimator, "flat-roi": flat_roi_estimator}


def resolve_estimator(name: str) -> Estimator:
    """A registered estimator name, or ``package.module:function``."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    module, sep, func = name.partition(":")
    if not sep:
        raise KeyError(f"unknown estimator {name!r}; known: {list(ESTIMATORS)} or module:function")
    return getattr(importlib.import_module(module), func)


def case_table(
    split: str,
    name: str,
    store: cases.CaseStore,
    methods: list[str],
    estimators: dict[str, Estimator],
    seed: int,
    steps: int,
    device: str,
    cached_only: bool = False,
) -> list[str]:
    """Markdown section of one case: truth and every estimator for every method output."""
    import nsn2n

    c = cases.case(split, name)
    vol = store.clean(c)
    noisy = store.noisy(split, c, seed)
    sigma_hat = baselines.estimate_sigma(noisy, vol.modality)
    tuned = load_tuned()
    unit = "HU" if vol.modality == "CT" else "template units"
    head = "| method | true before | true after | true reduction |"
    sep = "|---|---|---|---|"
    for e in estimators:
        head += f" {e}: before / after | {e}: reduction | {e}: rel. error of reduction |"
        sep += "---|---|---|"
    lines = [
        f"### {name} ({split} set, noise seed {seed}): {c.title}",
        "",
        f"- {vol.description}; truth measured in the {'body' if vol.modality == 'CT' else 'brain'} mask, {unit}",
        "",
        head,
        sep,
    ]
    for method in methods:
        ctx = Context(vol, noisy, steps, None, device, nsn2n.DenoiseConfig(), store.preset, sigma_hat, tuned)
        out = run_method(method, ctx, cache_tag=f"{name}-{split}-{store.preset}-s{seed}", cached_only=cached_only)
        if out.denoised is None:
            lines.append(f"| {METHODS[method]} | {out.note} |")
            continue
        t_before, t_after = true_noise_figures(vol.clean, noisy, out.denoised, vol.mask)
        t_red = reduction(t_before, t_after)
        row = f"| {METHODS[method]} | {t_before:.2f} | {t_after:.2f} | {100 * t_red:.0f} % |"
        for e, fn in estimators.items():
            e_before, e_after = fn(noisy, out.denoised, spacing=vol.spacing, modality=vol.modality)
            e_red = reduction(e_before, e_after)
            rel = relative_error(e_red, t_red)
            row += f" {e_before:.2f} / {e_after:.2f} | {100 * e_red:.0f} % | {100 * rel:+.0f} % |"
            log(f"{name} {method} {e}: est {100 * e_red:.0f} % vs true {100 * t_red:.0f} %")
        lines.append(row)
    noise_stats = noise.noise_stats(noisy - vol.clean, vol.mask)
    lines += ["", f"- injected noise σ in the mask {noise_stats['std']:.2f} {unit}", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.noise_truth", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="report", choices=cases.SPLITS)
    p.add_argument("--cases", default=None, help="comma list (default: every case of the split)")
    p.add_argument("--methods", default="nsn2n,nlm3d,bm4d,gauss", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--estimators", default="paired-slice,flat-roi", help="names or module:function, comma list")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the split's first)")
    p.add_argument("--steps", type=int, default=100, help="NS-N2N training steps (default 100)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cached-only", action="store_true", help="use only outputs bench.quality already cached")
    p.add_argument("--out", type=Path, default=None, help="markdown table (+ .log beside it)")
    args = p.parse_args(argv)
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        t0 = time.time()
        estimators = {name: resolve_estimator(name) for name in args.estimators.split(",")}
        names = args.cases.split(",") if args.cases else list(cases.CASES[args.split])
        seed = cases.SEEDS[args.split][0] if args.seed is None else args.seed
        device = resolve_device(args.device)
        store = cases.CaseStore("default", args.workers)
        lines = [
            "## Noise figures against the ground truth",
            "",
            *machine_header("bench.noise_truth", argv, device),
            f"- NS-N2N: {args.steps} steps (outputs shared with bench.quality through bench/.cache/outputs)",
            "",
        ]
        for name in names:
            lines += case_table(
                args.split, name, store, args.methods.split(","), estimators, seed, args.steps, device, args.cached_only
            )
            if args.out:
                write_lines(args.out, lines)
        lines += [
            "Relative error of the reduction = (estimated − true) / |true| reduction: +100 % means the figure "
            "shown doubles the real improvement (or claims one where the error grew). The issue's target: "
            "within ±15 % on every case.",
            "",
            f"Total wall time: {time.time() - t0:.0f} s.",
        ]
        print("\n".join(lines), flush=True)
        if args.out:
            write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
