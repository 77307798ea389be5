"""Tuning set: the non-local means blend's weight and width, one trained network per case.

Trains the default network once per case with ``nonlocal_weight=0`` (the network alone), then reruns
inference only (``initial_model``) with each weight and ``h`` factor, and prints the gain in dB over the
noisy input in the case's mask (CT body, MR brain), as ``bench.tuning_probe`` computes it. One torch thread.

    python -m bench.blend_sweep CASES WEIGHTS H_FACTORS > LOG
    python -m bench.blend_sweep ct-thin,ct-thick,lung1 0.2,0.35,0.5 0.55,0.8
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import nsn2n
    from bench import cases

    args = sys.argv[1:] if argv is None else argv
    names, weights, factors = (
        args[0].split(","),
        [float(a) for a in args[1].split(",")],
        [float(a) for a in args[2].split(",")],
    )
    store = cases.CaseStore("default", 1)
    for name in names:
        c = cases.case("tuning", name)
        vol = store.clean(c)
        noisy = store.noisy("tuning", c, cases.SEEDS["tuning"][0])
        mask = vol.mask.astype(bool)
        rmse_in = float(np.sqrt(np.mean((noisy - vol.clean)[mask] ** 2)))

        def gain(denoised: np.ndarray) -> float:
            return 20 * np.log10(rmse_in / float(np.sqrt(np.mean((denoised - vol.clean)[mask] ** 2))))  # noqa: B023

        base = {"num_threads": 1, "log_every_s": 600.0}
        t = time.time()
        trained = nsn2n.denoise_volume(
            noisy, vol.spacing, vol.modality, nsn2n.DenoiseConfig(**base, nonlocal_weight=0.0)
        )
        print(f"{name} w=0 gain {gain(trained.denoised):.2f} ({time.time() - t:.0f} s)", flush=True)
        for h in factors:
            for w in weights:
                t = time.time()
                config = nsn2n.DenoiseConfig(**base, nonlocal_weight=w, nonlocal_h_factor=h)
                run = nsn2n.denoise_volume(noisy, vol.spacing, vol.modality, config, initial_model=trained.model)
                print(f"{name} h={h:.2f} w={w:.2f} gain {gain(run.denoised):.2f} ({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
