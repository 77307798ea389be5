"""Shared pytest fixtures.

App runs (session-scoped, so that the end-to-end and PACS tests share them):

* ``ct_app_case``: the application run on a synthetic CT series with a known clean volume;
* ``mr_app_case``: the application run on the bundled real MR sample (``tests/data/volume``).

Each is an :class:`AppCase`: the input folder, its digest before the run, the finished ``AppRun`` and
helpers to read the source, derived and QA-report series and the run record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from nsn2n import DenoiseConfig
from tests.app_runner import AppRun, folder_digest, run_app
from tests.dicom_factory import add_correlated_noise, make_phantom, write_ct_series

MR_SAMPLE = Path(__file__).resolve().parent / "data" / "volume"

#: The small network and batches that the unit tests of ``denoise_volume`` train (CPU, seconds).
TINY = DenoiseConfig(
    max_steps=400,
    batch_size=8,
    crop_size=32,
    unet_width=8,
    unet_depth=2,
    learning_rate=3e-3,
    log_every_s=60,
    device="cpu",
    seed=3,
    nonlocal_weight=0.0,  # the network alone: the blend has its own tests (test_nsn2n_nonlocal.py)
)

#: One torch thread per app run: on the 2 shared CPU cores of CI/dev machines the default (one thread per
#: core) busy-waits against the other processes; measured here: 0.03 s per tiny training step with one
#: thread, 0.2 to 2.5 s with two while other jobs ran.
ONE_THREAD = {"NSN2N_NUM_THREADS": "1"}

CT_SHAPE = (10, 64, 64)
CT_NOISE_HU = 35.0
#: Enough training for a clear gain on the synthetic CT (RMSE ratio 0.71-0.73 over noise seeds 1-4,
#: about 10 s); the 20 steps of tests/app_runner.py leave the image as good as unchanged.
CT_TRAINING = {"NSN2N_MAX_STEPS": "400", "NSN2N_LEARNING_RATE": "0.001"}
#: The MR sample: enough training to leave the untrained network's identity (100 steps at a learning rate
#: of 3e-3 sometimes did not, depending on the thread count); about 20 s of training on 2 cores.
MR_TRAINING = {"NSN2N_MAX_STEPS": "200", "NSN2N_LEARNING_RATE": "0.001"}


def ct_phantom(seed: int = 0) -> np.ndarray:
    """Clean CT-like volume in HU, CT_SHAPE: the middle slices of a 30-slice phantom, so that anatomy
    moves little between neighbouring slices (2.5 mm apart), as in a real thin-slice CT."""
    depth, rows, cols = CT_SHAPE
    full = make_phantom((3 * depth, rows, cols), seed=seed)
    return full[depth : 2 * depth].copy()


def read_series(folder: Path) -> list[tuple[Path, Dataset]]:
    """(path, dataset) of every file below ``folder``, in path order (pixels included)."""
    return [(p, pydicom.dcmread(p)) for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix == ".dcm"]


def ct_hu(datasets: list[Dataset]) -> np.ndarray:
    """(D, H, W) HU of single-frame CT datasets sorted by position along the slice normal."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ordered])


@dataclass
class AppCase:
    """One application run and what it was given."""

    name: str
    input: Path
    input_digest_before: dict[str, str]
    run: AppRun
    clean: np.ndarray | None = None  # the known clean volume (synthetic input only), HU
    _read: dict[Path, list[tuple[Path, Dataset]]] = field(default_factory=dict, repr=False)

    def _series(self, folder: Path) -> list[tuple[Path, Dataset]]:
        """Read once per case (the MR sample takes about a second to parse); callers must not modify."""
        if folder not in self._read:
            self._read[folder] = read_series(folder)
        return self._read[folder]

    def source(self) -> list[tuple[Path, Dataset]]:
        return self._series(self.input)

    def source_series_uid(self) -> str:
        (uid,) = {str(ds.SeriesInstanceUID) for _, ds in self.source()}
        return uid

    def _folders_by_kind(self) -> dict[str, list[Path]]:
        kinds: dict[str, list[Path]] = {"image": [], "pdf": []}
        for folder in self.run.series_folders():
            first = next(p for p in sorted(folder.iterdir()) if p.is_file())
            ds = pydicom.dcmread(first, stop_before_pixels=True)
            kinds["pdf" if ds.SOPClassUID == EncapsulatedPDFStorage else "image"].append(folder)
        return kinds

    def derived_folder(self) -> Path:
        (folder,) = self._folders_by_kind()["image"]
        return folder

    def pdf_folder(self) -> Path:
        (folder,) = self._folders_by_kind()["pdf"]
        return folder

    def derived(self) -> list[tuple[Path, Dataset]]:
        return self._series(self.derived_folder())

    def pdf(self) -> list[tuple[Path, Dataset]]:
        return self._series(self.pdf_folder())

    def series_workdir(self) -> Path:
        return self.run.workdir / "nsn2n" / self.source_series_uid()

    def record(self) -> dict[str, Any]:
        return json.loads((self.series_workdir() / "run.json").read_text(encoding="utf-8"))


def run_case(
    name: str,
    input_dir: Path,
    root: Path,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    clean: np.ndarray | None = None,
) -> AppCase:
    """Run the app (tiny training, one thread, plus ``env``) on ``input_dir``; output/work under ``root``."""
    digest = folder_digest(input_dir)
    run = run_app(input_dir, root / "out", root / "work", env={**ONE_THREAD, **(env or {})}, extra_args=extra_args)
    return AppCase(name=name, input=input_dir, input_digest_before=digest, run=run, clean=clean)


@pytest.fixture(scope="session")
def ct_app_case(tmp_path_factory: pytest.TempPathFactory) -> AppCase:
    """The app on a synthetic 10 x 64 x 64 CT, correlated noise of 35 HU, known clean volume."""
    root = tmp_path_factory.mktemp("e2e_ct")
    clean = ct_phantom(seed=0)
    write_ct_series(root / "in", add_correlated_noise(clean, CT_NOISE_HU, seed=1), shuffle_names_seed=7)
    return run_case("ct", root / "in", root, env=CT_TRAINING, clean=clean)


@pytest.fixture(scope="session")
def mr_app_case(tmp_path_factory: pytest.TempPathFactory) -> AppCase:
    """The app (short training) on the bundled 20-slice GE MR sample, read in place."""
    return run_case("mr", MR_SAMPLE, tmp_path_factory.mktemp("e2e_mr"), env=MR_TRAINING)
