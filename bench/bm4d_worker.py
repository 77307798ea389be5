"""Run BM4D on one .npy volume: executed by ``bench/.venv-bm4d/bin/python`` (see ``bench/setup_bm4d.sh``).

    bench/.venv-bm4d/bin/python bench/bm4d_worker.py NOISY.npy OUT.npy --sigma 12.5
    bench/.venv-bm4d/bin/python bench/bm4d_worker.py NOISY.npy OUT.npy --psd PSD.npy

BM4D (PyPI ``bm4d`` 4.2.5, Tampere University) is licensed for non-commercial use only, so it never
enters the project's environment: the benchmark (``bench.baselines.bm4d``) writes the noisy volume and
the noise model to .npy files and runs this script in BM4D's own virtual environment. Imports numpy and
bm4d only. ``--sigma``: white noise of that standard deviation; ``--psd``: the 3-D noise power spectral
density in BM4D's convention (same shape as the volume, mean = N * sigma^2).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("noisy", help="input volume (.npy)")
    p.add_argument("out", help="output volume (.npy, float32)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--sigma", type=float, help="white-noise standard deviation (input units)")
    model.add_argument("--psd", help="noise PSD (.npy, BM4D convention)")
    args = p.parse_args()

    import bm4d

    if not hasattr(np, "trapz"):  # NumPy >= 2.4 removed np.trapz; bm4d's PSD path still calls it
        np.trapz = np.trapezoid
    noisy = np.load(args.noisy).astype(np.float64)
    noise_model = float(args.sigma) if args.sigma is not None else np.load(args.psd).astype(np.float64)
    t0 = time.time()
    out = bm4d.bm4d(noisy, noise_model)
    np.save(args.out, np.asarray(out, dtype=np.float32))
    print(f"bm4d {bm4d.__name__} done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
