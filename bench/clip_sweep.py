"""How tightly to clip NS-N2N's change per pixel: train once per volume, compare clip rules.

The residual clip (:mod:`nsn2n.residual_clip`) bounds how far a pixel may move, in local noise
sigmas: ``residual_clip_unmatched_k`` for pixels matching at most one neighbouring slice,
``residual_clip_k`` for pixels matching both. This script trains NS-N2N once per volume with no clip,
then applies each rule to the raw output with the library's own function and prints PSNR (whole volume,
W400, body) per rule ``unmatched/matched`` (``-`` = no limit). The row ``old`` is the rule before
commit e4a2577: 1.5 x one volume-wide quiet-tile sigma for every pixel.

    python -m bench.clip_sweep                         # default preset on CPU (about 6 minutes)
    python -m bench.clip_sweep --full --device cuda    # full size on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from bench import data
from bench.metrics import ct_metrics
from bench.quality import VOLUMES, VolumeStore, log, machine_header

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


def sweep(name: str, store: VolumeStore, steps: int | None, device: str) -> list[str]:
    import nsn2n
    from nsn2n import api
    from nsn2n.residual_clip import clip_residual_per_pixel, local_noise_sigma, matched_neighbours

    spec = VOLUMES[name]
    vol = store.clean(spec.source)
    if vol.modality != "CT":
        raise SystemExit(f"{name}: the clip sweep is written for the CT cases")
    noisy = store.noisy(name, spec, 0)
    cfg = nsn2n.DenoiseConfig(residual_clip_k=None, device=device, seed=0)
    cfg = dataclasses.replace(cfg, max_steps=steps or cfg.max_steps)
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
        f"### {name}: {spec.title}",
        "",
        f"- {vol.description}; {cfg.max_steps} steps, trained and inferred in {seconds:.1f} s",
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="full-size volumes (meant for a GPU)")
    p.add_argument("--volumes", default="lung1-i1e4,mni-ct-i1e4,lung1-i5e3")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 100, or max_steps with --full)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workers", type=int, default=2, help="processes for the noise simulation")
    p.add_argument("--deadline-s", type=float, default=float("inf"), help="start no new volume after this")
    args = p.parse_args(argv)
    deadline = time.time() + args.deadline_s
    store = VolumeStore("full" if args.full else "default", args.workers)
    steps = args.steps or (None if args.full else 100)
    header = machine_header(sys.argv[1:], args.device, {})
    header[3] = header[3].replace("bench.quality", "bench.clip_sweep")
    print("\n".join(["## Residual-clip sweep", "", *header, ""]), flush=True)
    for name in args.volumes.split(","):
        if time.time() > deadline:
            log(f"deadline: {name} not run")
            break
        print("\n".join(sweep(name, store, steps, args.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
