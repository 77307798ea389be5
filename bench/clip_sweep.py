"""How tightly to clip NS-N2N's change per pixel: train once per volume, compare clip rules.

The residual clip (``DenoiseConfig.residual_clip_k``) bounds how far a pixel may move, in pixel-noise
sigmas. Where neighbouring slices disagree (thick slices, moving edges) the network's neighbour target
is biased, so its change there is less trustworthy than where the slice matches both neighbours. This
script trains NS-N2N once per volume with no clip, then applies each rule to the raw output and prints
PSNR (whole volume, W400, body) per rule. A rule ``a/b/c`` is the limit, in pixel-noise sigmas, for
pixels whose slice matches 0/1/2 of its neighbours in the weight maps (``-`` = no limit).

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
from bench.quality import VOLUMES, VolumeStore, log, machine_header

#: (limit for 0, 1, 2 matched neighbours) in pixel-noise sigmas; None = no limit.
RULES: list[tuple[float | None, float | None, float | None]] = [
    (None, None, None), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (2.0, 2.0, 2.0), (3.0, 3.0, 3.0),
    (0.75, 0.75, 2.0), (1.0, 1.0, 2.0), (1.0, 1.0, 1.5), (1.0, 1.0, 3.0), (0.75, 1.0, 2.0),
    (1.0, 1.5, 2.0), (1.0, 1.5, 3.0), (1.5, 1.5, 3.0),
]


def matched_neighbours(weights: np.ndarray) -> np.ndarray:
    """(D, H, W) count of neighbours (0, 1, 2) a pixel matches; end slices count their one pair twice."""
    count = np.zeros((weights.shape[0] + 1, *weights.shape[1:]), np.int8)
    count[:-1] += weights
    count[1:] += weights
    count[0] = 2 * weights[0]
    count[-1] = 2 * weights[-1]
    return count


def _rule_name(rule: tuple[float | None, ...]) -> str:
    return "/".join("-" if k is None else f"{k:g}" for k in rule)


def psnr_only(vol: data.Volume, out: np.ndarray) -> dict[str, float]:
    """PSNR columns of :func:`bench.metrics.ct_metrics` without the (slow) SSIM."""
    from bench.metrics import psnr, to_unit

    return {"psnr": psnr(to_unit(vol.clean, -1024, 3071), to_unit(out, -1024, 3071)),
            "psnr_w400": psnr(to_unit(vol.clean, -160, 240), to_unit(out, -160, 240)),
            "psnr_body": psnr(to_unit(vol.clean, -1024, 3071), to_unit(out, -1024, 3071), vol.mask)}


def sweep(name: str, store: VolumeStore, steps: int | None, device: str, deadline: float) -> list[str]:
    import nsn2n
    from nsn2n import api

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
    # The same weight maps and pixel sigma the library computes (private helpers, same config).
    valid, normalizer, normalised = api._prepare(noisy, None, vol.modality, None)
    maps = api._weight_maps(torch.from_numpy(normalised), torch.from_numpy(valid), cfg)
    count = matched_neighbours(maps.weights.cpu().numpy())
    sigma = maps.pixel_sigma * normalizer.scale
    true_sigma = float((noisy - vol.clean)[vol.mask].std())
    lines = [f"### {name}: {spec.title}", "",
             f"- {vol.description}; {cfg.max_steps} steps, trained and inferred in {seconds:.1f} s",
             f"- pixel-noise sigma estimated {sigma:.1f} HU (true noise in the body {true_sigma:.1f} HU); pixels "
             f"matching 0/1/2 neighbours: " + "/".join(f"{(count == c).mean():.2f}" for c in range(3)),
             "", "| rule (0/1/2 matched) | PSNR | PSNR W400 | PSNR body |", "|---|---|---|---|"]
    lines.append("| noisy input | " + " | ".join(f"{v:.2f}" for v in psnr_only(vol, noisy).values()) + " |")
    residual = noisy - raw
    for rule in RULES:
        if time.time() > deadline:
            lines.append("| (deadline reached) | | | |")
            break
        limits = np.choose(count, [np.float32(1e30 if k is None else k * sigma) for k in rule])
        out = noisy - np.clip(residual, -limits, limits)
        lines.append(f"| {_rule_name(rule)} | " + " | ".join(f"{v:.2f}" for v in psnr_only(vol, out).values()) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="full-size volumes (meant for a GPU)")
    p.add_argument("--volumes", default="lung1-i1e4,mni-ct-i1e4,lung1-i5e3")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 100, or max_steps with --full)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workers", type=int, default=2, help="processes for the noise simulation")
    p.add_argument("--deadline-s", type=float, default=float("inf"), help="stop starting new work after this")
    args = p.parse_args(argv)
    deadline = time.time() + args.deadline_s
    store = VolumeStore("full" if args.full else "default", args.workers)
    steps = args.steps or (None if args.full else 100)
    print("\n".join(["## Residual-clip sweep", "", *machine_header(sys.argv[1:], args.device, {}), ""]), flush=True)
    for name in args.volumes.split(","):
        if time.time() > deadline:
            log(f"deadline: {name} not run")
            break
        print("\n".join(sweep(name, store, steps, args.device, deadline)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
