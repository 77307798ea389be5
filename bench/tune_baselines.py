"""Tune the classical baselines on the tuning set and write ``bench/tuned.json`` and the sweep table.

    nice -n 10 python -m bench.tune_baselines --out bench/results/tuning-baselines.md   # (+ .log)
    python -m bench.tune_baselines --only nlm3d          # one method; the others keep their tuned values

A baseline's parameters decide the comparison, so they are chosen the way NS-N2N's defaults must be:
on the tuning set only (:mod:`bench.cases`, seed 100), by a sweep whose every trial is in the committed
table, per modality (CT and MR noise differ), maximising the mean over the modality's tuning cases of
PSNR in the body (CT: the mean of PSNR body and PSNR W400, the window where soft-tissue noise shows).

* NLM 3-D (skimage, fast mode, ``h = factor * sigma_hat``): stage 1 sweeps the factor at patch 5 /
  distance 3; stage 2 the (patch, distance) pairs at the best factor; stage 3 the factor again around
  the best pair (11 trials per case, more when an optimum lies at the end of a grid: the grid is then
  extended in that direction).
* BM4D (estimated PSD, and white sigma_hat): the noise scale (3 trials per variant, extended likewise).
  BM4D takes minutes per slab on 2 cores, so its sweep runs on the central in-plane half (rows and
  columns) of each tuning slab; its one parameter scales the noise model and does not depend on the field of view.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import baselines, cases, data
from bench.methods import TUNED_PATH, load_tuned, log
from bench.metrics import score
from bench.report import log_beside, machine_header, write_lines

NLM_FACTORS = (0.4, 0.55, 0.7, 0.85, 1.0)
NLM_WINDOWS = ((3, 3), (7, 3), (5, 5), (7, 5))
NLM_REFINE = (0.85, 1.18)
BM4D_SCALES = (0.7, 1.0, 1.4)
#: When the best value of a scale sweep is at an end of its grid, the grid is extended by this factor in
#: that direction, at most MAX_EXTENSIONS times (an optimum on the edge is not an optimum).
EXTEND_FACTOR = 1.4
MAX_EXTENSIONS = 3
MODALITIES = {"CT": ("ct-thin", "ct-thick", "lung1"), "MR": ("mr-thin-r5", "mr-thin-r9", "mr-thick-r5")}


@dataclass
class Trial:
    """One parameter setting scored on every tuning case of a modality."""

    method: str
    params: dict
    per_case: dict[str, dict[str, float]]
    seconds: float

    def objective(self, modality: str) -> float:
        values = [
            (s["psnr_body"] + s["psnr_w400"]) / 2 if modality == "CT" else s["psnr_body"]
            for s in self.per_case.values()
        ]
        return float(np.mean(values))


def central_half(vol: data.Volume, noisy: np.ndarray) -> tuple[data.Volume, np.ndarray]:
    """The central half of rows and columns of a case (same slices), for the BM4D sweep."""
    _, h, w = vol.clean.shape
    rows, cols = slice(h // 4, h // 4 + h // 2), slice(w // 4, w // 4 + w // 2)
    crop = data.Volume(
        vol.name,
        np.ascontiguousarray(vol.clean[:, rows, cols]),
        vol.spacing,
        vol.modality,
        np.ascontiguousarray(vol.mask[:, rows, cols]),
        ref_scale=vol.ref_scale,
        description=vol.description + " (central in-plane half)",
    )
    return crop, np.ascontiguousarray(noisy[:, rows, cols])


def run_trial(method: str, params: dict, inputs: dict[str, tuple[data.Volume, np.ndarray]], run: Callable) -> Trial:
    per_case, seconds = {}, 0.0
    for name, (vol, noisy) in inputs.items():
        t0 = time.time()
        out = run(vol, noisy)
        seconds += time.time() - t0
        per_case[name] = score(
            vol.modality, vol.clean, noisy, out, vol.mask, vol.ref_scale, ssim=False, structure=False
        )
    log(
        f"{method} {params}: "
        + ", ".join(f"{k} {v['psnr_body']:.2f}/{v['psnr_w400']:.2f}" for k, v in per_case.items())
    )
    return Trial(method, params, per_case, seconds)


def scale_sweep(values: tuple[float, ...], make: Callable[[float], Trial], modality: str) -> Trial:
    """Try ``values``; while the best is at an end of the values tried, extend past it; return the best."""
    tried = {v: make(v) for v in values}
    for _ in range(MAX_EXTENSIONS):
        best = max(tried, key=lambda v: tried[v].objective(modality))
        if best == min(tried):
            nxt = round(best / EXTEND_FACTOR, 3)
        elif best == max(tried):
            nxt = round(best * EXTEND_FACTOR, 3)
        else:
            break
        tried[nxt] = make(nxt)
    return max(tried.values(), key=lambda t: t.objective(modality))


def tune_nlm(modality: str, inputs: dict) -> tuple[dict, list[Trial]]:
    sig = {name: baselines.estimate_sigma(noisy, modality) for name, (_, noisy) in inputs.items()}
    trials: list[Trial] = []

    def trial(p: baselines.NLMParams) -> Trial:
        def run(vol, noisy):
            return baselines.nlm3d(noisy, sig[vol.name], p)

        t = run_trial("nlm3d", asdict(p), inputs, run)
        trials.append(t)
        return t

    best = scale_sweep(NLM_FACTORS, lambda f: trial(baselines.NLMParams(f, 5, 3)), modality)
    factor = best.params["h_factor"]
    for patch, dist in NLM_WINDOWS:
        trial(baselines.NLMParams(factor, patch, dist))
    best = max(trials, key=lambda t: t.objective(modality))
    for k in NLM_REFINE:
        trial(
            baselines.NLMParams(
                round(best.params["h_factor"] * k, 3), best.params["patch_size"], best.params["patch_distance"]
            )
        )
    best = max(trials, key=lambda t: t.objective(modality))
    return best.params, trials


def tune_bm4d(method: str, modality: str, inputs: dict) -> tuple[dict, list[Trial]]:
    trials = []

    def make(scale: float) -> Trial:
        p = baselines.BM4DParams(psd=method == "bm4d", sigma_scale=scale)

        def run(vol, noisy):
            return baselines.bm4d(noisy, vol.modality, p)

        trials.append(run_trial(method, {"sigma_scale": scale}, inputs, run))
        return trials[-1]

    best = scale_sweep(BM4D_SCALES, make, modality)
    return best.params, trials


def sweep_table(modality: str, trials: list[Trial], chosen: dict) -> list[str]:
    names = list(trials[0].per_case)
    head = "| parameters | " + " | ".join(f"{n} body / W400" for n in names) + " | objective | seconds |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for t in trials:
        cells = []
        for n in names:
            s = t.per_case[n]
            cells.append(
                f"{s['psnr_body']:.2f} / {s['psnr_w400']:.2f}" if modality == "CT" else f"{s['psnr_body']:.2f}"
            )
        mark = " **(chosen)**" if t.params == chosen else ""
        params = ", ".join(f"{k}={v}" for k, v in t.params.items() if k != "psd")
        lines.append(f"| {params}{mark} | " + " | ".join(cells) + f" | {t.objective(modality):.3f} | {t.seconds:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.tune_baselines", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="nlm3d,bm4d,bm4d-white", help="comma list of nlm3d, bm4d, bm4d-white")
    p.add_argument("--modalities", default="CT,MR")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tuned", type=Path, default=TUNED_PATH, help="where the chosen parameters are written")
    p.add_argument("--out", type=Path, default=None, help="markdown sweep table (+ .log beside it)")
    args = p.parse_args(argv)
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        t_start = time.time()
        store = cases.CaseStore("default", args.workers)
        seed = cases.SEEDS["tuning"][0]
        lines = ["## Baseline tuning on the tuning set", "", *machine_header("bench.tune_baselines", argv), ""]
        lines.append(f"- tuning set: {', '.join(cases.CASES['tuning'])} (bench/cases.py), noise seed {seed}")
        lines.append("- objective: mean over the modality's cases of PSNR body (CT: mean of PSNR body and PSNR W400)")
        lines.append("")
        for modality in args.modalities.split(","):
            inputs = {}
            for name in MODALITIES[modality]:
                c = cases.case("tuning", name)
                vol = store.clean(c)
                inputs[name] = (vol, store.noisy("tuning", c, seed))
            for method in args.only.split(","):
                log(f"tuning {method} on {modality}")
                if method == "nlm3d":
                    chosen, trials = tune_nlm(modality, inputs)
                    where = "full tuning slabs"
                else:
                    cropped = {n: central_half(v, x) for n, (v, x) in inputs.items()}
                    chosen, trials = tune_bm4d(method, modality, cropped)
                    where = "central in-plane half of each tuning slab"
                chosen = {k: v for k, v in chosen.items() if k != "psd"}
                lines += [f"### {method}, {modality} ({where})", "", *sweep_table(modality, trials, chosen), ""]
                # Read-modify-write of this one entry: sweeps of other methods may run beside this one.
                tuned = load_tuned(args.tuned)
                tuned.setdefault(method, {})[modality] = chosen
                args.tuned.write_text(json.dumps(tuned, indent=2, sort_keys=True) + "\n")
                if args.out:
                    write_lines(args.out, [*lines, f"(partial: {time.time() - t_start:.0f} s so far)"])
        chosen_now = {m: load_tuned(args.tuned).get(m) for m in args.only.split(",")}
        lines += [
            f"Chosen parameters (written to `{args.tuned.name}`): `{json.dumps(chosen_now, sort_keys=True)}`.",
            "",
            f"Total wall time: {time.time() - t_start:.0f} s.",
        ]
        print("\n".join(lines), flush=True)
        if args.out:
            write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
