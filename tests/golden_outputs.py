"""Golden outputs: sha256 of the derived series' pixel arrays for fixed inputs, steps and seed.

A refactoring must not change what the application writes. This script runs the application (as a user
does, in a subprocess, one torch thread, fixed seed, few training steps) on

* ``mr-sample``: the bundled 20-slice MR sample (``tests/data/volume``);
* ``ct``: the synthetic test CT of ``tests/conftest.py`` (10 x 64 x 64, correlated noise);
* ``ct-padding``: the same CT with Pixel Padding Value outside the circular field of view;
* ``study``: one study holding that CT (Series Number 3) and another noise draw of it (Series Number 4);

and hashes the stored pixel values of every derived instance in Instance Number order. ``record``
writes the hashes (with the commit and machine) to ``tests/data/golden-output-hashes.json``; ``check``
recomputes them and compares. Torch's float results depend on the CPU's instruction set and the torch
version, so the hashes are only comparable on the machine kind they were recorded on; ``check`` says
when the machine differs. An intentional change of the algorithm's output means recording again.

    python -m tests.golden_outputs record
    python -m tests.golden_outputs check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.app_runner import REPO, run_app
from tests.conftest import CT_NOISE_HU, MR_SAMPLE, ct_phantom
from tests.dicom_factory import add_correlated_noise, write_ct_series

HASH_FILE = REPO / "tests" / "data" / "golden-output-hashes.json"
#: Few steps, fixed seed, one thread: deterministic on one machine, a few seconds per case.
ENV = {"NSN2N_MAX_STEPS": "30", "NSN2N_SEED": "0", "NSN2N_NUM_THREADS": "1", "NSN2N_QA_REPORT": "false"}


def _inputs(root: Path) -> dict[str, Path]:
    noisy = add_correlated_noise(ct_phantom(seed=0), CT_NOISE_HU, seed=1)
    write_ct_series(root / "ct", noisy, shuffle_names_seed=7)
    write_ct_series(root / "ct-padding", noisy, padding_value=-2000)
    study = str(generate_uid())
    write_ct_series(root / "study" / "a", noisy, study_uid=study, series_number=3)
    other = add_correlated_noise(ct_phantom(seed=0), CT_NOISE_HU, seed=2)
    write_ct_series(root / "study" / "b", other, study_uid=study, series_number=4)
    return {"mr-sample": MR_SAMPLE, "ct": root / "ct", "ct-padding": root / "ct-padding", "study": root / "study"}


def pixel_hash(folder: Path) -> str:
    """sha256 over the stored pixel arrays (dtype, shape, bytes) of the instances in ``folder``."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    digest = hashlib.sha256()
    for ds in sorted(datasets, key=lambda d: int(d.InstanceNumber)):
        pixels = np.ascontiguousarray(ds.pixel_array)
        digest.update(f"{pixels.dtype.str}{pixels.shape}".encode() + pixels.tobytes())
    return digest.hexdigest()


def compute() -> dict[str, str]:
    """Run the application on every case; ``{"<case> #<derived Series Number>": pixel hash}``."""
    hashes = {}
    with tempfile.TemporaryDirectory(prefix="nsn2n-golden-") as tmp:
        root = Path(tmp)
        for name, folder in _inputs(root / "in").items():
            run = run_app(folder, root / name / "out", root / name / "work", env=ENV)
            if run.returncode != 0:
                raise SystemExit(f"{name}: exit code {run.returncode}\n{run.log[-3000:]}")
            for series in run.series_folders():
                number = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True).SeriesNumber
                key = f"{name} #{number}"
                hashes[key] = pixel_hash(series)
                print(f"{key}: {hashes[key]}", file=sys.stderr)
    return hashes


def machine() -> str:
    """CPU model and torch version: what the float results depend on."""
    import torch

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    return f"{model}; torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["record", "check"])
    args = parser.parse_args(argv)
    hashes = compute()
    if args.action == "record":
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        payload = {"commit": commit.stdout.strip(), "machine": machine(), "env": ENV, "hashes": hashes}
        HASH_FILE.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"recorded {HASH_FILE}")
        return 0
    recorded = json.loads(HASH_FILE.read_text())
    if recorded["machine"] != machine():
        print(f"note: recorded on {recorded['machine']}, checking on {machine()}")
    differ = [name for name in recorded["hashes"] | hashes if recorded["hashes"].get(name) != hashes.get(name)]
    for name in recorded["hashes"] | hashes:
        print(f"{name}: {'DIFFERENT' if name in differ else 'identical'} to commit {recorded['commit']}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
