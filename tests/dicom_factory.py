"""Synthetic DICOM series for tests (writes real PS3.10 files with pydicom).

Reusable by every test in the project::

    from tests.dicom_factory import make_phantom, add_correlated_noise, write_ct_series

    clean = make_phantom((8, 48, 48), seed=0)                 # HU, float32 (D, H, W)
    noisy = add_correlated_noise(clean, sigma_hu=20, seed=1)
    paths = write_ct_series(tmp_path / "in", noisy)           # CT Image Storage, one file per slice

The datasets pass ``dciodvfy`` without errors (CT Image IOD A.3 / MR Image IOD A.4: Patient,
General Study, General Series, Frame of Reference, General Equipment, General Acquisition, General
Image, Image Plane, Image Pixel, CT/MR Image, VOI LUT, SOP Common). Building blocks, from low to high
level:

* :func:`make_image_datasets` - in-memory Datasets for a volume of *stored* values, any geometry;
* :func:`make_ct_datasets` / :func:`make_mr_datasets` - from modality values (HU / signal);
* :func:`write_datasets` - save them (any transfer syntax, incl. compressed via ``ds.compress``),
  with a file-name pattern and optional shuffling of the name order;
* :func:`write_ct_series` / :func:`write_mr_series` - both steps.

Hostile-input tests can mutate datasets with the ``mutate`` hook (called per slice before saving),
override positions with ``slice_positions`` or pass ``extra`` attributes.

Also here: :func:`run_dciodvfy` / :func:`run_dcentvfy` wrappers that return the error lines of
David Clunie's dicom3tools validators.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "AXIAL",
    "CORONAL",
    "OBLIQUE",
    "PATIENT",
    "SAGITTAL",
    "DciodvfyReport",
    "add_correlated_noise",
    "circular_fov_padding",
    "dicom_tools_available",
    "make_ct_datasets",
    "make_image_datasets",
    "make_mr_datasets",
    "make_phantom",
    "new_dciodvfy_errors",
    "oblique_orientation",
    "run_dcentvfy",
    "run_dciodvfy",
    "write_ct_series",
    "write_datasets",
    "write_mr_series",
]

#: Image Orientation (Patient) values (row cosines, column cosines), LPS.
AXIAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def oblique_orientation(degrees: float = 15.0) -> tuple[float, ...]:
    """Axial orientation tilted about the patient's left-right axis by ``degrees``."""
    a = np.deg2rad(degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a)))


OBLIQUE: tuple[float, ...] = oblique_orientation(15.0)

#: A fixed, synthetic patient (no real person). Tests may check that these never leak into messages.
PATIENT: dict[str, str] = {
    "PatientName": "Phantom^Synthetic",
    "PatientID": "SYNTH-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "AccessionNumber": "ACC-SYNTH-1",
}


# --------------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------------


def make_phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A clean CT-like volume in HU, float32 (D, H, W).

    Air -1000 outside an elliptical body (soft tissue 40 HU) with a fat rim (-100 HU), a liver-like
    organ (60 HU), a kidney-like organ (30 HU), a lung-like region (-850 HU) and a spine-like bone
    disc (700 HU). Sizes and centres vary smoothly along z, so neighbouring slices are similar;
    ``seed`` jitters the layout.
    """
    d, h, w = (int(s) for s in shape)
    if min(d, h, w) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.04, 0.04, size=8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y = (yy + 0.5) / h * 2 - 1  # [-1, 1]
    x = (xx + 0.5) / w * 2 - 1
    vol = np.full((d, h, w), -1000.0, dtype=np.float32)
    for z in range(d):
        t = z / max(d - 1, 1)  # 0..1 along the stack
        s = 1.0 + 0.08 * np.sin(np.pi * t + jitter[0] * 10)  # smooth size change along z

        def ellipse(cy: float, cx: float, ry: float, rx: float, *, s: float = s) -> np.ndarray:
            return ((y - cy) / (ry * s)) ** 2 + ((x - cx) / (rx * s)) ** 2 <= 1.0

        body = ellipse(0.05 + jitter[1], 0.0, 0.70, 0.88)
        inner = ellipse(0.05 + jitter[1], 0.0, 0.64, 0.82)
        sl = vol[z]
        sl[body] = -100.0
        sl[inner] = 40.0
        sl[ellipse(-0.15 + jitter[2], -0.42, 0.28 + 0.05 * t, 0.22)] = -850.0  # lung
        sl[ellipse(0.05 + jitter[3], 0.35 + jitter[4], 0.30 - 0.06 * t, 0.28)] = 60.0  # liver
        sl[ellipse(0.35 + jitter[5], -0.30, 0.12, 0.09 + 0.03 * t)] = 30.0  # kidney
        sl[ellipse(0.50 + jitter[6], 0.0 + jitter[7], 0.12, 0.12)] = 700.0  # vertebra
        sl[ellipse(0.50 + jitter[6], 0.0 + jitter[7], 0.06, 0.06)] = 250.0  # marrow
    return vol


def add_correlated_noise(volume: np.ndarray, sigma_hu: float, seed: int = 0) -> np.ndarray:
    """``volume`` + spatially correlated noise of standard deviation ``sigma_hu`` (float32).

    White Gaussian noise is low-pass filtered in-plane (Gaussian, sigma 1 px), like CT noise after
    filtered back-projection, rescaled to ``sigma_hu`` and drawn independently for each slice.
    """
    from scipy.ndimage import gaussian_filter

    if sigma_hu < 0:
        raise ValueError("sigma_hu must be >= 0")
    rng = np.random.default_rng(seed)
    vol = np.asarray(volume, dtype=np.float32)
    noise = rng.standard_normal(vol.shape).astype(np.float32)
    noise = gaussian_filter(noise, sigma=(0, 1.0, 1.0), mode="wrap")
    std = noise.reshape(noise.shape[0], -1).std(axis=1)[:, None, None]
    noise *= np.float32(sigma_hu) / np.maximum(std, 1e-12)
    return vol + noise


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def _ds_str(value: float) -> str:
    return format_number_as_ds(float(value))


@dataclass
class SeriesIds:
    """UIDs shared by the instances of one synthetic series (generated when not given)."""

    study_uid: str = field(default_factory=lambda: str(generate_uid()))
    series_uid: str = field(default_factory=lambda: str(generate_uid()))
    frame_of_reference_uid: str = field(default_factory=lambda: str(generate_uid()))


def make_image_datasets(
    stored: np.ndarray,
    spacing: Sequence[float] = (2.5, 0.7, 0.7),
    *,
    sop_class_uid: str = CTImageStorage,
    modality: str = "CT",
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] | None = None,
    slice_positions: Sequence[float] | None = None,
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = (1.0, -1024.0),
    rescale_type: str | None = "HU",
    padding_value: int | None = None,
    padding_range_limit: int | None = None,
    window: tuple[float, float] | None = (40.0, 400.0),
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 3,
    series_description: str = "SYNTHETIC",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    patient: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
    mutate: Callable[[int, Dataset], None] | None = None,
) -> list[Dataset]:
    """One single-frame Dataset per slice of ``stored`` (D, H, W integer array of stored values).

    Geometry: slice k is at ``origin + slice_positions[k] * normal`` (default positions
    ``k * spacing[0]``), normal = row cosine x column cosine of ``orientation``; Pixel Spacing is
    ``spacing[1:]``. The pixel format follows ``stored.dtype`` (int16/uint16/int8/uint8): Bits
    Allocated = itemsize, Pixel Representation = signed, Bits Stored = ``bits_stored`` or all bits.
    ``rescale`` = (slope, intercept) or None (no Rescale attributes, e.g. MR). ``padding_value`` /
    ``padding_range_limit`` set Pixel Padding Value / Range Limit (stored values; VR follows the
    sign). Each dataset has File Meta Information (Explicit VR Little Endian), as if read from a
    file. ``extra`` attributes (keyword -> value) are set on every slice; ``mutate(index, ds)`` is
    called last, for hostile variants. Instance Number follows the slice index (1-based).
    """
    stored = np.asarray(stored)
    if stored.ndim != 3 or stored.dtype.kind not in "iu" or stored.dtype.itemsize not in (1, 2):
        raise ValueError(f"stored must be a 3-D int8/uint8/int16/uint16 array, got {stored.dtype} {stored.shape}")
    d, rows, cols = stored.shape
    ids = SeriesIds()
    study_uid = study_uid or ids.study_uid
    series_uid = series_uid or ids.series_uid
    for_uid = frame_of_reference_uid or ids.frame_of_reference_uid
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    if origin is None:
        origin = (-cols * spacing[2] / 2.0, -rows * spacing[1] / 2.0, 0.0)
    origin_arr = np.asarray(origin, dtype=np.float64)
    positions = [k * float(spacing[0]) for k in range(d)] if slice_positions is None else list(slice_positions)
    if len(positions) != d:
        raise ValueError(f"{len(positions)} slice positions for {d} slices")
    signed = stored.dtype.kind == "i"
    bits_allocated = stored.dtype.itemsize * 8
    bits = int(bits_stored or bits_allocated)
    patient = dict(PATIENT if patient is None else patient)

    datasets: list[Dataset] = []
    for k in range(d):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(image_type)
        ds.SOPClassUID = sop_class_uid
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240102"
        ds.StudyTime = "101500"
        ds.SeriesTime = "101600"
        ds.AcquisitionTime = ds.ContentTime = f"1017{k % 60:02d}"
        ds.AccessionNumber = patient.get("AccessionNumber", "")
        ds.Modality = modality
        ds.Manufacturer = "Synthetic Factory"
        ds.ManufacturerModelName = "dicom_factory"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "SYNTHETIC STUDY"
        ds.SeriesDescription = series_description
        ds.PatientName = patient.get("PatientName", "")
        ds.PatientID = patient.get("PatientID", "")
        ds.PatientBirthDate = patient.get("PatientBirthDate", "")
        ds.PatientSex = patient.get("PatientSex", "")
        ds.BodyPartExamined = "ABDOMEN" if modality == "CT" else "HEAD"
        ds.SliceThickness = _ds_str(spacing[0])
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        pos = origin_arr + positions[k] * normal
        ds.ImagePositionPatient = [_ds_str(v) for v in pos]
        ds.ImageOrientationPatient = [_ds_str(v) for v in iop]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds_str(float(pos @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [_ds_str(spacing[1]), _ds_str(spacing[2])]
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        if padding_value is not None:
            ds.add_new(0x00280120, "SS" if signed else "US", int(padding_value))
            if padding_range_limit is not None:
                ds.add_new(0x00280121, "SS" if signed else "US", int(padding_range_limit))
        if window is not None:
            ds.WindowCenter = _ds_str(window[0])
            ds.WindowWidth = _ds_str(window[1])
        if rescale is not None:
            ds.RescaleIntercept = _ds_str(rescale[1])
            ds.RescaleSlope = _ds_str(rescale[0])
            if rescale_type is not None:
                ds.RescaleType = rescale_type
        if modality == "CT":
            ds.KVP = "120"
        elif modality == "MR":
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = "500"
            ds.EchoTime = "15"
            ds.EchoTrainLength = "1"
            ds.MagneticFieldStrength = "1.5"
            ds.ImagedNucleus = "1H"
            ds.SpacingBetweenSlices = _ds_str(spacing[0])
        pixels = stored[k].astype(stored.dtype.newbyteorder("<")).tobytes()
        ds.add_new(0x7FE00010, "OB" if bits_allocated == 8 else "OW", pixels)
        ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        if mutate is not None:
            mutate(k, ds)
        datasets.append(ds)
    return datasets


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = generate_uid(prefix=None, entropy_srcs=["tests.dicom_factory"])
    return meta


def _to_stored(values: np.ndarray, slope: float, intercept: float, dtype: np.dtype, bits: int) -> np.ndarray:
    if np.dtype(dtype).kind == "i":
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return np.clip(np.rint((np.asarray(values, np.float64) - intercept) / slope), lo, hi).astype(dtype)


def make_ct_datasets(
    volume_hu: np.ndarray,
    spacing: Sequence[float] = (2.5, 0.7, 0.7),
    *,
    rescale: tuple[float, float] = (1.0, -1024.0),
    dtype: str | np.dtype = "int16",
    bits_stored: int | None = None,
    padding_value: int | None = None,
    padding_mask: np.ndarray | None = None,
    **kwargs: object,
) -> list[Dataset]:
    """CT Image Storage datasets from a volume in HU (see :func:`make_image_datasets` for kwargs).

    Stored = round((HU - intercept) / slope) clipped to the ``dtype``/``bits_stored`` range. With
    ``padding_value`` (a *stored* value), pixels of ``padding_mask`` (default: outside the circle
    inscribed in the slice, like a CT field of view) are set to it.
    """
    dtype = np.dtype(dtype)
    bits = int(bits_stored or dtype.itemsize * 8)
    stored = _to_stored(volume_hu, rescale[0], rescale[1], dtype, bits)
    if padding_value is not None:
        if padding_mask is None:
            padding_mask = circular_fov_padding(stored.shape)
        stored[np.broadcast_to(padding_mask, stored.shape)] = padding_value
    return make_image_datasets(
        stored,
        spacing,
        rescale=rescale,
        bits_stored=bits,
        padding_value=padding_value,
        **kwargs,  # type: ignore[arg-type]
    )


def make_mr_datasets(
    volume: np.ndarray,
    spacing: Sequence[float] = (5.0, 0.9, 0.9),
    *,
    dtype: str | np.dtype = "uint16",
    **kwargs: object,
) -> list[Dataset]:
    """MR Image Storage datasets (no Rescale attributes: stored values are the signal)."""
    dtype = np.dtype(dtype)
    stored = _to_stored(volume, 1.0, 0.0, dtype, dtype.itemsize * 8)
    kwargs.setdefault("image_type", ("ORIGINAL", "PRIMARY", "OTHER"))
    kwargs.setdefault("window", (float(np.median(stored)), float(max(np.ptp(stored), 1))))
    return make_image_datasets(
        stored,
        spacing,
        sop_class_uid=MRImageStorage,
        modality="MR",
        rescale=None,
        **kwargs,  # type: ignore[arg-type]
    )


def circular_fov_padding(shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) mask, True outside the circle inscribed in the slice (broadcasts over D)."""
    h, w = shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    r = min(h, w) / 2.0
    return (yy + 0.5 - h / 2.0) ** 2 + (xx + 0.5 - w / 2.0) ** 2 > r**2


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def write_datasets(
    datasets: Iterable[Dataset],
    folder: str | Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    filename_pattern: str = "IM{index:04d}.dcm",
    shuffle_names_seed: int | None = None,
) -> list[Path]:
    """Save ``datasets`` as PS3.10 files in ``folder`` (created) and return the paths (slice order).

    ``filename_pattern`` is formatted with ``index`` (0-based position in ``datasets``) and ``ds``.
    ``shuffle_names_seed`` permutes which file name each slice gets, so that name order differs from
    spatial order. A compressed ``transfer_syntax`` (e.g. RLELossless, JPEGLSLossless) is applied
    with ``ds.compress`` (needs the matching encoder plugin); the input datasets are not modified.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    datasets = list(datasets)
    slots = list(range(len(datasets)))
    if shuffle_names_seed is not None:
        random.Random(shuffle_names_seed).shuffle(slots)
    ts = UID(transfer_syntax)
    paths: list[Path] = []
    for i, source in enumerate(datasets):
        ds = source.copy()
        ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
        if ts.is_compressed:
            ds.compress(ts)
        else:
            ds.file_meta.TransferSyntaxUID = ts
        path = folder / filename_pattern.format(index=slots[i], ds=ds)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_ct_series(
    folder: str | Path,
    volume_hu: np.ndarray,
    spacing: Sequence[float] = (2.5, 0.7, 0.7),
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    filename_pattern: str = "CT{index:04d}.dcm",
    shuffle_names_seed: int | None = None,
    **kwargs: object,
) -> list[Path]:
    """Write a CT series (see :func:`make_ct_datasets` and :func:`make_image_datasets` for kwargs:
    ``orientation``, ``padding_value``, ``study_uid``, ``series_uid``, ``image_type``, ``rescale``,
    ``dtype``, ``slice_positions``, ``extra``, ``mutate``...). Returns paths in slice order."""
    datasets = make_ct_datasets(volume_hu, spacing, **kwargs)  # type: ignore[arg-type]
    return write_datasets(
        datasets,
        folder,
        transfer_syntax=transfer_syntax,
        filename_pattern=filename_pattern,
        shuffle_names_seed=shuffle_names_seed,
    )


def write_mr_series(
    folder: str | Path,
    volume: np.ndarray,
    spacing: Sequence[float] = (5.0, 0.9, 0.9),
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    filename_pattern: str = "MR{index:04d}.dcm",
    shuffle_names_seed: int | None = None,
    **kwargs: object,
) -> list[Path]:
    """Write an MR Image Storage series (see :func:`make_mr_datasets`)."""
    datasets = make_mr_datasets(volume, spacing, **kwargs)  # type: ignore[arg-type]
    return write_datasets(
        datasets,
        folder,
        transfer_syntax=transfer_syntax,
        filename_pattern=filename_pattern,
        shuffle_names_seed=shuffle_names_seed,
    )


# --------------------------------------------------------------------------------------------------
# dicom3tools validators
# --------------------------------------------------------------------------------------------------


def dicom_tools_available() -> bool:
    """True when ``dciodvfy`` and ``dcentvfy`` (Debian package dicom3tools) are on PATH."""
    return shutil.which("dciodvfy") is not None and shutil.which("dcentvfy") is not None


@dataclass
class DciodvfyReport:
    """Output of ``dciodvfy`` for one file, split into error and warning lines."""

    path: Path
    errors: list[str]
    warnings: list[str]


def run_dciodvfy(path: str | Path) -> DciodvfyReport:
    """Run ``dciodvfy`` (IOD/module/VR checker) on one file."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return DciodvfyReport(
        Path(path),
        errors=[ln.strip() for ln in lines if ln.startswith("Error")],
        warnings=[ln.strip() for ln in lines if ln.startswith("Warning")],
    )


def run_dcentvfy(paths: Iterable[str | Path]) -> list[str]:
    """Run ``dcentvfy`` (entity consistency: patient/study/series/FoR attributes agree across
    files) and return its Error/Warning lines (empty when consistent)."""
    proc = subprocess.run(
        ["dcentvfy", *[str(p) for p in paths]], capture_output=True, text=True, timeout=120, check=False
    )
    return [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if re.match(r"(Error|Warning)", ln)]


_UID_IN_ERROR = re.compile(r'Illegal root for UID - "([0-9.]+)"')


def new_dciodvfy_errors(source_path: str | Path, derived_path: str | Path) -> list[str]:
    """``dciodvfy`` errors of ``derived_path`` that its source file ``source_path`` does not have.

    A derived instance must reference its source by UID, so an "Illegal root for UID" error about a
    UID the source itself is flagged for (e.g. ``0.0.0.0...`` in old sample data) is inherited, not
    new, wherever it appears. Every other error must appear verbatim in the source's report.
    """
    source_errors = run_dciodvfy(source_path).errors
    inherited_uids = {m.group(1) for line in source_errors if (m := _UID_IN_ERROR.search(line))}
    new: list[str] = []
    for line in run_dciodvfy(derived_path).errors:
        m = _UID_IN_ERROR.search(line)
        if m and m.group(1) in inherited_uids:
            continue
        if line not in source_errors:
            new.append(line)
    return new
