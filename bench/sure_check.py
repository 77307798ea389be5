"""Does the SURE error estimate (``nsn2n.error_estimate``) tell the truth? Check it against the clean volumes.

    nice -n 10 python -m bench.sure_check --out bench/results/sure-check-tuning-cpu.md   # (+ .log)
    python -m bench.sure_check --cases lung1 --denoisers gauss1,nlm3d --probes 4 --eps 0.03

For every case of the split (default: tuning) and every classic denoiser ``f``:

* the noise model of the noisy volume is the product's (``nsn2n.api.measure_noise_model`` on the
  normalised volume with the default configuration), its level converted to the volume's own units
  (HU, template units);
* the estimator (``nsn2n.error_estimate.estimate_error``, defaults: at most 16 slices, 2 probes,
  eps 0.1, seed 0) sees the noisy volume, the noise model and ``f``: never the clean volume;
* the truth: ``before`` = std of ``noisy - clean``, ``after`` = RMS of ``f(noisy) - clean``, over every
  slice (the figure the product claims for the whole volume), reduction = ``1 - after / before``.

Each row gives the estimator twice: with the product's noise model ("product model", what a user
would read) and with the noise model of the known injected noise (``true_noise_model``: "true noise
level"), which separates the error of SURE itself from the error of the noise level it is given.

Both are computed on two masks: the benchmark's evaluation mask (CT body, MR brain; derived from the
clean volume, like for like with ``bench.noise_truth``) and the product's foreground (the training
sampler's rule: non-padding pixels more than 0.1 network units above the fill value, i.e. above
-900 HU on CT; from the noisy volume only).

Denoisers: in-plane Gaussian filters of 1 and 2 px (slice by slice), the through-slice 3-slice mean
(reads the unperturbed neighbours), and the tuned NLM-3D of ``bench/tuned.json`` (a 3-D filter: run on
the whole perturbed volume; its ``h`` comes from the flat-ROI sigma of the unperturbed volume and is
held fixed, as the product holds its trained network fixed).

On the real CT cases the clean reference carries its own noise (about 20-30 HU on ct-thin/ct-thick,
about 10 HU on lung1, ``bench.cases.reference_own_noise``); it is independent between slices, so the
noise model measures it with the injected noise and the estimator counts it as noise, while the truth
counts it as anatomy: there "estimated before" exceeds "true before" and the estimated reduction is
measured against a cleaner target than the truth's. The MR cases (noise-free template) and lung1 are
the clean checks of the noise level; on MR, Rician noise has a signal-dependent mean in dark pixels
(CSF, and air in the product foreground), which the truth counts as error and a Gaussian SURE cannot see.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench import baselines, cases
from bench.methods import load_tuned, log, nlm_params
from bench.metrics import reduction, relative_error, true_noise_figures
from bench.report import log_beside, machine_header, write_lines
from nsn2n.error_estimate import (
    DEFAULT_EPS,
    DEFAULT_MAX_SLICES,
    DEFAULT_PROBES,
    ErrorEstimate,
    SliceDenoiser,
    estimate_error,
)
from nsn2n.noise_model import (
    BLOCK_PX,
    MAX_LAG,
    SMOOTH_BLOCKS,
    NoiseModel,
    correlation_kernel,
    sigma_from_blocks,
)

DenoiserFactory = Callable[[np.ndarray, str], SliceDenoiser]


def product_noise_model(noisy: np.ndarray, modality: str) -> tuple[NoiseModel, np.ndarray]:
    """``(noise model in the volume's units, product foreground)`` of a noisy volume, as the product builds them."""
    import torch

    import nsn2n
    from nsn2n import api

    valid, normalizer, normalised = api.prepare_volume(noisy, None, modality.upper(), None)
    cfg = nsn2n.DenoiseConfig(device="cpu")
    volume_t, valid_t = torch.from_numpy(normalised), torch.from_numpy(valid)
    maps = api.configured_weight_maps(volume_t, valid_t, cfg)
    foreground = api.run_foreground(volume_t, valid_t, normalizer, modality.upper())
    model = api.measure_noise_model(volume_t, valid_t, maps, cfg, foreground)
    # The normalisation is affine, so the level in the volume's units is the normalised level times the scale.
    model = model.scaled(normalizer.scale)
    return model, foreground


def true_noise_model(noise: np.ndarray, mask: np.ndarray) -> NoiseModel:
    """The noise model of the known injected noise ``noisy - clean``: the estimator's check without the
    noise model's own error.

    The noise is first detrended (minus its 8 px Gaussian local mean): Rician noise has a signal-dependent
    mean (up to 1.25 sigma in air), which is bias, not noise. Level: RMS of the detrended noise per
    ``BLOCK_PX`` block over its ``mask`` pixels (all pixels where it has none), smoothed over
    ``SMOOTH_BLOCKS`` blocks (the product model's resolution);
    correlation: the in-plane autocorrelation of the detrended noise divided by that level over the
    ``mask`` pixels, for lags up to ``MAX_LAG``, turned into a shaping kernel by ``correlation_kernel``.
    """
    import torch

    d, h, w = noise.shape
    n = noise.astype(np.float64)
    n = n - ndimage.gaussian_filter(n, (0, 8, 8))
    hb, wb = -(-h // BLOCK_PX), -(-w // BLOCK_PX)
    # Pixels outside the mask count a thousandth: Rician noise is weaker in air than in tissue, and a
    # block straddling the mask's edge must carry the level inside it.
    weight = np.where(mask, 1.0, 1e-3)
    padded = np.zeros((d, hb * BLOCK_PX, wb * BLOCK_PX))
    padded[:, :h, :w] = weight * n * n
    count = np.zeros_like(padded)
    count[:, :h, :w] = weight
    power = padded.reshape(d, hb, BLOCK_PX, wb, BLOCK_PX).sum(axis=(2, 4))
    pixels = count.reshape(d, hb, BLOCK_PX, wb, BLOCK_PX).sum(axis=(2, 4))
    power = ndimage.gaussian_filter(power, (0, SMOOTH_BLOCKS, SMOOTH_BLOCKS), mode="nearest")
    pixels = ndimage.gaussian_filter(pixels, (0, SMOOTH_BLOCKS, SMOOTH_BLOCKS), mode="nearest")
    blocks = np.sqrt(power / pixels).astype(np.float32)
    level = sigma_from_blocks(torch.from_numpy(blocks), (h, w)).numpy()
    unit = np.where(mask, n / np.maximum(level, 1e-12), 0.0)

    def auto(x: np.ndarray) -> np.ndarray:
        return np.real(np.fft.ifft2(np.abs(np.fft.fft2(x, s=(2 * h, 2 * w))) ** 2)).sum(axis=0)

    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    window = np.ix_(lags % (2 * h), lags % (2 * w))
    corr = auto(unit)[window] / np.maximum(auto(mask.astype(np.float64))[window], 1.0)
    corr = corr / corr[MAX_LAG, MAX_LAG]
    return NoiseModel(
        blocks, correlation_kernel(corr), (d, h, w), float(corr[MAX_LAG, MAX_LAG + 1]), "true noise (benchmark)"
    )


def _inplane_gauss(width: float) -> DenoiserFactory:
    def factory(noisy: np.ndarray, modality: str) -> SliceDenoiser:
        def denoise(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(volume[slices].astype(np.float64), (0, width, width))

        return denoise

    return factory


def _whole_volume(fn: Callable[[np.ndarray], np.ndarray]) -> SliceDenoiser:
    """A 3-D filter as a :data:`SliceDenoiser`: run on the whole volume, memoised by the volume's bytes (the
    estimator's passes on two masks perturb identically, so each distinct volume is filtered once)."""
    memo: dict[str, np.ndarray] = {}

    def denoise(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(volume).tobytes()).hexdigest()
        if key not in memo:
            memo[key] = fn(volume)
        return memo[key][slices]

    return denoise


def _mean3(noisy: np.ndarray, modality: str) -> SliceDenoiser:
    def denoise(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
        padded = np.concatenate([volume[:1], volume, volume[-1:]]).astype(np.float64)
        return (padded[slices] + padded[slices + 1] + padded[slices + 2]) / 3.0

    return denoise


def _nlm3d(noisy: np.ndarray, modality: str) -> SliceDenoiser:
    sigma_hat = baselines.estimate_sigma(noisy, modality)
    params = nlm_params(modality, load_tuned())
    return _whole_volume(lambda v: baselines.nlm3d(v, sigma_hat, params))


DENOISERS: dict[str, tuple[str, DenoiserFactory]] = {
    "gauss1": ("Gaussian 1 px in-plane", _inplane_gauss(1.0)),
    "gauss2": ("Gaussian 2 px in-plane", _inplane_gauss(2.0)),
    "mean3": ("through-slice 3-slice mean", _mean3),
    "nlm3d": ("NLM-3D (tuned)", _nlm3d),
}


def _estimate_cells(est: ErrorEstimate, t_red: float) -> tuple[str, float]:
    rel = relative_error(est.reduction, t_red)
    flag = " (clamped)" if est.clamped else ""
    return (
        f" {est.rmse_before:.2f} / {est.rmse_after:.2f}{flag} | {100 * est.reduction:.1f} % | {100 * rel:+.1f} % |",
        rel,
    )


def case_section(
    split: str, name: str, store: cases.CaseStore, denoisers: list[str], seed: int, probes: int, eps: float
) -> tuple[list[str], list[float], list[float], list[float]]:
    """Markdown section of one case; ``(lines, relative errors of the reduction with the product model, with
    the true noise level, true reductions)``, one per row."""
    c = cases.case(split, name)
    vol = store.clean(c)
    noisy = store.noisy(split, c, seed)
    t0 = time.time()
    model, foreground = product_noise_model(noisy, vol.modality)
    t_model = time.time() - t0
    unit = "HU" if vol.modality == "CT" else "template units"
    bench_mask = "body" if vol.modality == "CT" else "brain"
    t0 = time.time()
    overhead = estimate_error(lambda v, z: v[z], noisy, model, foreground, probes=probes, eps=eps)
    per_slice = (time.time() - t0) / len(overhead.slices)
    masks = {bench_mask: vol.mask, "product foreground": foreground}
    oracles = {mask_name: true_noise_model(noisy - vol.clean, mask) for mask_name, mask in masks.items()}
    oracle = oracles[bench_mask]
    own = cases.reference_own_noise(vol)
    lines = [
        f"### {name} ({split} set, noise seed {seed}): {c.title}",
        "",
        f"- {vol.description}; {unit}; reference's own noise: "
        + (f"{own:.1f} {unit} (not in the truth's noise, in the product model's)" if own == own else "none"),
        f"- product noise model: {model.source}, lag-1 correlation {model.lag1_correlation:.2f} (true noise: "
        f"{oracle.lag1_correlation:.2f}), built in {t_model:.1f} s; its level over the {bench_mask} "
        f"{model.level(vol.mask):.2f} against the true noise's {oracle.level(vol.mask):.2f} {unit}",
        f"- estimator: {len(overhead.slices)} of {noisy.shape[0]} slices, {probes} probes, eps {eps:g}; "
        f"its own cost (identity denoiser) {1000 * per_slice:.0f} ms per evaluated slice",
        "",
        "| denoiser | mask | true before / after | true reduction | product model: est. before / after | "
        "est. reduction | rel. error | true noise level: est. before / after | est. reduction | rel. error | "
        "est. seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rels, oracle_rels, true_reductions = [], [], []
    for key in denoisers:
        label, factory = DENOISERS[key]
        denoise = factory(noisy, vol.modality)
        t0 = time.time()
        denoised = denoise(noisy, np.arange(noisy.shape[0]))
        log(f"{name} {key}: full volume in {time.time() - t0:.1f} s")
        for mask_name, mask in masks.items():
            t_before, t_after = true_noise_figures(vol.clean, noisy, denoised, mask)
            t_red = reduction(t_before, t_after)
            t0 = time.time()
            est = estimate_error(denoise, noisy, model, mask, probes=probes, eps=eps)
            seconds = time.time() - t0
            cells, rel = _estimate_cells(est, t_red)
            oracle_cells, oracle_rel = _estimate_cells(
                estimate_error(denoise, noisy, oracles[mask_name], mask, probes=probes, eps=eps), t_red
            )
            row = (
                f"| {label} | {mask_name} | {t_before:.2f} / {t_after:.2f} | {100 * t_red:.1f} % |"
                f"{cells}{oracle_cells} {seconds:.1f} |"
            )
            lines.append(row)
            rels.append(rel)
            oracle_rels.append(oracle_rel)
            true_reductions.append(t_red)
            log(f"{name} {key} {mask_name}: {row}")
    lines.append("")
    return lines, rels, oracle_rels, true_reductions


def _summary(label: str, rels: list[float], true_reductions: list[float]) -> str:
    def part(values: list[float]) -> str:
        finite = [abs(r) for r in values if r == r]
        worst = max(finite) if finite else float("nan")
        return f"{sum(r <= 0.15 for r in finite)} of {len(values)} within ±15 % (largest |error| {100 * worst:.1f} %)"

    strong = [r for r, t in zip(rels, true_reductions, strict=True) if t >= 0.2]
    return f"{label}: all rows {part(rels)}; rows with a true reduction of at least 20 %: {part(strong)}."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.sure_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="tuning", choices=cases.SPLITS)
    p.add_argument("--cases", default=None, help="comma list (default: every case of the split)")
    p.add_argument("--denoisers", default=",".join(DENOISERS), help=f"comma list of {', '.join(DENOISERS)}")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the split's first)")
    p.add_argument("--probes", type=int, default=DEFAULT_PROBES)
    p.add_argument("--eps", type=float, default=DEFAULT_EPS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="markdown table (+ .log beside it)")
    args = p.parse_args(argv)
    with log_beside(args.out):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
        t_start = time.time()
        names = args.cases.split(",") if args.cases else list(cases.CASES[args.split])
        seed = cases.SEEDS[args.split][0] if args.seed is None else args.seed
        store = cases.CaseStore("default", args.workers)
        lines = [
            "## SURE error estimate against the ground truth",
            "",
            *machine_header("bench.sure_check", argv),
            f"- estimator: nsn2n.error_estimate.estimate_error, at most {DEFAULT_MAX_SLICES} slices, "
            f"{args.probes} probes, eps {args.eps:g}; truth over every slice",
            "",
        ]
        rels: list[float] = []
        oracle_rels: list[float] = []
        true_reductions: list[float] = []
        for name in names:
            section, case_rels, case_oracle_rels, case_reductions = case_section(
                args.split, name, store, args.denoisers.split(","), seed, args.probes, args.eps
            )
            lines += section
            rels += case_rels
            oracle_rels += case_oracle_rels
            true_reductions += case_reductions
            if args.out:
                write_lines(args.out, lines)
        lines += [
            "Relative error of the reduction = (estimated − true) / |true| reduction. The issue's target: within "
            '±15 % on every volume. "product model": the estimator as the product will run it; "true noise '
            'level": the same estimator given the noise model of the known injected noise (checks SURE itself).',
            "",
            "- " + _summary("product model", rels, true_reductions),
            "- " + _summary("true noise level", oracle_rels, true_reductions),
            "",
            f"Total wall time: {time.time() - t_start:.0f} s.",
        ]
        print("\n".join(lines), flush=True)
        if args.out:
            write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
