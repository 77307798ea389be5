"""Probe NS-N2N variants on the tuning set: one row per (case, variant), PSNR gain in the evaluation mask.

    nice -n 10 python -m bench.tuning_probe --cases ct-thin,ct-thick,lung1,mr-thick-r5 \\
        --variant "default" --variant "recorruption_sigma_scale=0.9" --variant "formulation=paper,batch_size=8" \\
        --out bench/results/tuning-probe-cpu.md

A lighter tool than :mod:`bench.quality` for choosing a default: only the noisy input and NS-N2N, the
tuning split only (defaults are chosen there, never on the report set), its first noise seed, one torch
thread per run (two runs can share a 2-core machine), and the figure that decides: the gain in PSNR over
the noisy input inside the case's evaluation mask (CT body, MR brain), with the RMSE before and after and
the run's own noise-model level against the true noise. A variant is a comma list of ``KEY=VALUE``
:class:`nsn2n.DenoiseConfig` overrides (``default`` = none).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench import cases
from bench.metrics import score
from bench.report import log_beside, machine_header, write_lines


def parse_variant(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``; ``"default"`` -> ``{}``."""
    if text.strip() in ("", "default"):
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"variant part {part!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def probe(case_name: str, overrides: dict[str, str], store: cases.CaseStore) -> dict[str, float]:
    """One NS-N2N run on a tuning case; the figures of its row."""
    import nsn2n

    c = cases.case("tuning", case_name)
    vol = store.clean(c)
    noisy = store.noisy("tuning", c, cases.SEEDS["tuning"][0])
    config = nsn2n.DenoiseConfig.from_mapping({"num_threads": 1, "log_every_s": 60, **overrides}, source="--variant")
    t0 = time.time()
    result = nsn2n.denoise_volume(noisy, vol.spacing, vol.modality, config)
    seconds = time.time() - t0
    mask = vol.mask.astype(bool)
    rmse_in = float(np.sqrt(np.mean((noisy - vol.clean)[mask] ** 2)))
    rmse_out = float(np.sqrt(np.mean((result.denoised - vol.clean)[mask] ** 2)))

    def whole_psnr(test: np.ndarray) -> float:
        return score(vol.modality, vol.clean, noisy, test, mask, vol.ref_scale, ssim=False, structure=False)["psnr"]

    return {
        "gain_db": 20 * np.log10(rmse_in / rmse_out),
        "gain_whole_db": whole_psnr(result.denoised) - whole_psnr(noisy),
        "rmse_in": rmse_in,
        "rmse_out": rmse_out,
        "level": result.report.noise_model.level,
        "true_sigma": float(np.std((noisy - vol.clean)[mask])),
        "steps": result.report.training.steps,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tuning_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(cases.CASES["tuning"]), help="comma list of tuning cases")
    p.add_argument("--variant", action="append", type=parse_variant, default=None, help="KEY=VALUE,... or default")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (+ .log)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    variants = args.variant or [{}]
    names = args.cases.split(",")
    with log_beside(args.out):
        store = cases.CaseStore("default", 1)
        lines = [
            "# NS-N2N variants on the tuning set",
            "",
            *machine_header("bench.tuning_probe", sys.argv[1:] if argv is None else argv),
            "",
            "Gain = PSNR gain over the noisy input in the evaluation mask (CT body, MR brain), first tuning noise "
            "seed, one torch thread; level = the run's noise-model level over its foreground, true = std of the "
            "injected noise in the mask (the real CT references add noise of their own, counted by the level). "
            "Whole = the PSNR gain over the whole volume (background included) on the quality tables' scale "
            "(CT HU clipped to [-1024, 3071], MR clipped to [0, the template's reference intensity]).",
            "",
            "| case | variant | gain dB | whole dB | RMSE in | RMSE out | level / true | steps | seconds |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in names:
            for overrides in variants:
                label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "default"
                row = probe(name, overrides, store)
                print(f"[bench] {name} {label}: {row}", file=sys.stderr, flush=True)
                lines.append(
                    f"| {name} | {label} | {row['gain_db']:.2f} | {row['gain_whole_db']:.2f} | {row['rmse_in']:.2f} | "
                    f"{row['rmse_out']:.2f} | "
                    f"{row['level']:.1f} / {row['true_sigma']:.1f} | {row['steps']} | {row['seconds']:.0f} |"
                )
        print("\n".join(lines))
        if args.out is not None:
            write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
