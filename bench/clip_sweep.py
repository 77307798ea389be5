"""How tightly to clip NS-N2N's change per pixel: train once per volume, compare clip rules.

The residual clip (:mod:`nsn2n.residual_clip`) bounds how far a pixel may move, in local noise
sigmas: ``residual_clip_unmatched_k`` for pixels matching at most one neighbouring slice,
``residual_clip_k`` for pixels matching both. This script trains NS-N2N once per case with no clip at all
(``residual_clip_k`` and ``residual_clip_unmatched_k`` both ``None``), then applies each rule to that raw
output with the library's own function and prints PSNR (whole volume, W400, body) per rule
``unmatched/matched`` (``-`` = no limit; ``-/-`` is the raw output). The row ``old`` is the rule before
commit e4a2577: 1.5 x one volume-wide quiet-tile sigma for every pixel. CT cases of the tuning set by
default: clip rules are defaults, chosen on the tuning set only.

    python -m bench.clip_sweep --out bench/results/clip-sweep-tuning-cpu.md   # (+ .log) CPU, 100 steps
    python -m bench.clip_sweep --full --device cuda                           # full size on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import cases, data
from bench.methods import log
from bench.metrics import ct_metrics
from bench.report import log_beside, machine_header, write_lines

#: (limit for pixels matching at most one neighbour, limit for pixels matching both) in local noise
#: sigmas; None = no limit. The default config is (1.5, 3.0).
RULES: list[tuple[float | None, float | None]] = [
    (None, None),
    (1.0, 1.0),
    (1.5, 1.5),
    (2.0, 2.0),
    (3.0, 3.0),
    (1.0, 2.0),
    (1.0, 3.0),
    (1.5, 2.0),
    (1.5, 3.0),
    (1.5, None),
    (2.0, 3.0),
    (2.0, 4.0),
]


def psnr_only(vol: data.Volume, out: np.ndarray) -> dict[str, float]:
    """PSNR, PSNR W400 and PSNR body of :func:`bench.metrics.ct_metrics`, without the (slow) SSIM."""
    scores = ct_metrics(vol.clean, out, vol.mask, ssim=False)
    return {key: scores[key] for key in ("psnr", "psnr_w400", "psnr_body")}


def no_clip_config(steps: int | None, device: str):
    """The default config with the residual clip switched off entirely (both limits ``None``)."""
    import nsn2n

    cfg = nsn2n.DenoiseConfig(residual_clip_k=None, residual_clip_unmatched_k=None, device=device, seed=0)
    return dataclasses.replace(cfg, max_steps=steps or cfg.max_steps)


def sweep(split: str, name: str, store: cases.CaseStore, steps: int | None, device: str) -> list[str]:
    import nsn2n
    from nsn2n import api
    from nsn2n.residual_clip import clip_residual_per_pixel, local_noise_sigma, matched_neighbours

    c = cases.case(split, name)
    vol = store.clean(c)
    if vol.modality != "CT":
        raise SystemExit(f"{name}: the clip sweep is written for the CT cases")
    seed = cases.SEEDS[split][0]
    noisy = store.noisy(split, c, seed)
    cfg = no_clip_config(steps, device)
    t0 = time.time()
    raw = nsn2n.denoise_volume(noisy, vol.spacing, vol.modality, cfg).denoised
    seconds = time.time() - t0
    # The same weight maps and quiet-tile sigma the library computes (same helpers, same config).
    valid, normalizer, normalised = api.prepare_volume(noisy, None, vol.modality, None)
    maps = api.configured_weight_maps(torch.from_numpy(normalised), torch.from_numpy(valid), cfg)
    weights = maps.weights.cpu().numpy()
    count = matched_neighbours(weights)
    quiet_sigma = maps.pixel_sigma * normalizer.scale
    local = np.stack(list(local_noise_sigma(noisy, weights, default_sigma=quiet_sigma)))
    true_sigma = float((noisy - vol.clean)[vol.mask].std())
    lines = [
        f"### {name} ({split} set, noise seed {seed}): {c.title}",
        "",
        f"- {vol.description}; {cfg.max_steps} steps with no clip, trained and inferred in {seconds:.1f} s",
        f"- true noise in the body {true_sigma:.1f} HU; local sigma there (mean) {local[vol.mask].mean():.1f} HU; "
        f"volume-wide quiet-tile sigma {quiet_sigma:.1f} HU; pixels matching 0/1/2 neighbours: "
        + "/".join(f"{(count == c).mean():.2f}" for c in range(3)),
        "",
        "| rule (unmatched/matched k) | PSNR | PSNR W400 | PSNR body |",
        "|---|---|---|---|",
    ]
    lines.append("| noisy input | " + " | ".join(f"{v:.2f}" for v in psnr_only(vol, noisy).values()) + " |")
    old = noisy - np.clip(noisy - raw, -1.5 * quiet_sigma, 1.5 * quiet_sigma)
    cells = " | ".join(f"{v:.2f}" for v in psnr_only(vol, old).values())
    lines.append(f"| old: 1.5 x quiet-tile sigma | {cells} |")
    for k_unmatched, k_matched in RULES:
        out = clip_residual_per_pixel(
            noisy, raw.copy(), weights, k_matched=k_matched, k_unmatched=k_unmatched, default_sigma=quiet_sigma
        )
        label = "/".join("-" if k is None else f"{k:g}" for k in (k_unmatched, k_matched))
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in psnr_only(vol, out).values()) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="full-size slabs (meant for a GPU)")
    p.add_argument("--split", default="tuning", choices=cases.SPLITS)
    p.add_argument("--cases", default="ct-thin,ct-thick,lung1")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 100, or max_steps with --full)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workers", type=int, default=2, help="processes for the noise simulation")
    p.add_argument("--deadline-s", type=float, default=float("inf"), help="start no new case after this")
    p.add_argument("--out", type=Path, default=None, help="markdown table (+ .log beside it)")
    args = p.parse_args(argv)
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        deadline = time.time() + args.deadline_s
        store = cases.CaseStore("full" if args.full else "default", args.workers)
        steps = args.steps or (None if args.full else 100)
        lines = ["## Residual-clip sweep", "", *machine_header("bench.clip_sweep", argv, args.device), ""]
        print("\n".join(lines), flush=True)
        for name in args.cases.split(","):
            if time.time() > deadline:
                log(f"deadline: {name} not run")
                break
            section = sweep(args.split, name, store, steps, args.device)
            print("\n".join(section), flush=True)
            lines += section
            if args.out:
                write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
