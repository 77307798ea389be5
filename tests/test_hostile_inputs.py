"""Hostile input and failure: the application as a hospital platform runs it, fed every bad input we know.

Each case BUILDS its input with a helper below (tests/dicom_factory.py; no shipped opaque files), runs
``python app -i IN -o OUT -w WORK`` in a subprocess with tiny training (tests/app_runner.py) and asserts

* its outcome: the exit code AND a message fragment (for failures, in the one ``failed (exit code N): ...``
  line), or a correct output (case-specific checks);
* for EVERY run: the input folder's bytes (and folder modes) are unchanged, nothing appeared next to
  the input (its parent's listing is unchanged), the output folder holds complete series or nothing
  (each derived series folder has exactly as many DICOM files as its source series has slices, plus at
  most a one-file QA report series per derived series; no stray or hidden partial files), and the log
  holds no Python traceback;
* across the battery: no patient identifier of the synthetic patient (name, ID, birth date, accession
  number) appears in any log.

The cases run two at a time (ThreadPoolExecutor) from one module-scoped fixture; selecting a subset with
``-k`` runs only the selected cases. Exit codes: ``operators/exit_status.py`` and ``docs/errors.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.uid import (
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from dicom_series import load_series, read_dicom_folder
from tests.app_runner import AppRun, folder_digest, run_app
from tests.dicom_factory import (
    CORONAL,
    OBLIQUE,
    PATIENT,
    SAGITTAL,
    add_correlated_noise,
    make_ct_datasets,
    make_mr_datasets,
    make_phantom,
    write_datasets,
)

SHAPE = (6, 32, 32)  # slices, rows, columns
#: Tiny and fast: no QA report or model unless a case needs them (the training budget comes from FAST_ENV).
QUICK = {"NSN2N_MAX_STEPS": "2", "NSN2N_QA_REPORT": "false", "NSN2N_SAVE_MODEL": "false"}
#: Identifiers of the synthetic patient that must never be logged (PatientSex "O" is too short to test).
IDENTIFIERS = (*(PATIENT[k] for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")), "Phantom")
TRACEBACK = "Traceback (most recent call last)"


# --------------------------------------------------------------------------------------------------
# Input builders
# --------------------------------------------------------------------------------------------------


def hu_volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    return add_correlated_noise(make_phantom(shape, seed=seed), sigma_hu=20.0, seed=seed + 1)


def ct(
    folder: Path,
    *,
    shape: tuple[int, int, int] = SHAPE,
    seed: int = 0,
    prefix: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    **kwargs: object,
) -> list[Path]:
    """A CT series of ``shape`` written into ``folder`` (kwargs: see ``make_ct_datasets``)."""
    datasets = make_ct_datasets(hu_volume(shape, seed), **kwargs)  # type: ignore[arg-type]
    return write_datasets(
        datasets, folder, transfer_syntax=transfer_syntax, filename_pattern=prefix + "{index:04d}.dcm"
    )


def build_nothing(folder: Path) -> None:
    """An empty input folder."""


def build_non_dicom(folder: Path) -> None:
    """Text, PNG, random bytes, and a file with a DICOM preamble and prefix but a garbage header."""
    rng = np.random.default_rng(0)
    (folder / "notes.txt").write_text("not DICOM\n")
    (folder / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
    (folder / "data.bin").write_bytes(rng.bytes(1000))
    (folder / "fake.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + rng.bytes(100))


def build_dicomdir_only(folder: Path) -> None:
    """A DICOMDIR (pydicom FileSet) whose referenced image files are not there."""
    staging = folder.parent / "staging"
    fs = FileSet()
    for ds in make_ct_datasets(hu_volume()):
        fs.add(ds)
    fs.write(staging)
    shutil.copy2(staging / "DICOMDIR", folder / "DICOMDIR")
    shutil.rmtree(staging)


def build_slices(n: int) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        ct(folder, shape=(n, *SHAPE[1:]))

    build.__doc__ = f"A CT series of {n} slice(s)."
    return build


def build_two_studies(folder: Path) -> None:
    """Two CT series, each in its own study."""
    ct(folder / "a", seed=0, study_uid=str(generate_uid()), series_number=3)
    ct(folder / "b", seed=5, study_uid=str(generate_uid()), series_number=4)


def build_with_localizer(folder: Path) -> None:
    """An axial series and, in the same study, a 3-slice coronal LOCALIZER series."""
    study = str(generate_uid())
    ct(folder, study_uid=study, series_number=2, prefix="AX")
    ct(
        folder,
        shape=(3, *SHAPE[1:]),
        study_uid=study,
        series_number=1,
        orientation=CORONAL,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        series_description="SCOUT",
        prefix="LOC",
    )


def build_positions(positions: list[float]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        ct(folder, shape=(len(positions), *SHAPE[1:]), slice_positions=positions)

    build.__doc__ = f"A CT series at slice positions {positions} mm."
    return build


def build_oblique(folder: Path) -> None:
    """A CT series tilted 15 degrees (oblique Image Orientation (Patient))."""
    ct(folder, orientation=OBLIQUE, origin=(-11.2, -20.0, 33.3))


def build_mixed_sizes(folder: Path) -> None:
    """Slice 4 of 6 is 16x16 while the others are 32x32."""

    def smaller(k: int, ds: Dataset) -> None:
        if k == 3:
            ds.Rows = ds.Columns = 16
            ds.PixelData = np.zeros((16, 16), "<i2").tobytes()

    ct(folder, mutate=smaller)


def build_truncated(folder: Path) -> None:
    """A valid series whose 4th file is cut off in the middle of its pixel data."""
    paths = ct(folder)
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 1000])


def build_short_pixels(folder: Path) -> None:
    """Slice 3's Pixel Data holds half the bytes Rows x Columns x Bits Allocated need (consistent file)."""

    def shorten(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    ct(folder, mutate=shorten)


def build_rgb(folder: Path) -> None:
    """An RGB (8-bit, 3 samples per pixel) image series."""
    rng = np.random.default_rng(3)

    def to_rgb(_k: int, ds: Dataset) -> None:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
            delattr(ds, keyword)
        ds.PixelData = rng.integers(0, 255, (ds.Rows, ds.Columns, 3), dtype=np.uint8).tobytes()

    ct(folder, mutate=to_rgb)


def jpeg_lossless_sv1(frame: np.ndarray, precision: int = 16) -> bytes:
    """Encode one greyscale frame as JPEG Lossless, Process 14, Selection Value 1 (ITU-T T.81 Annex H).

    pydicom has decoders but no encoder for this transfer syntax, so a minimal one is here: predictor 1
    (left neighbour; first row predicted from the left, first column from above, the first sample from
    2^(P-1)), point transform 0, one Huffman table giving each of the 17 difference categories a 5-bit
    code (valid: the all-ones code is unused). Signed samples are coded as their P-bit patterns.
    """
    x = frame.astype(np.int64) & ((1 << precision) - 1)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diffs = (x - pred) % (1 << 16)
    diffs = np.where(diffs > 32768, diffs - 65536, diffs)  # -32767..32768 (T.81 H.1.2.2)
    out = bytearray()
    acc, nbits = 0, 0

    def put(value: int, n: int) -> None:
        nonlocal acc, nbits
        acc, nbits = (acc << n) | (value & ((1 << n) - 1)), nbits + n
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << nbits) - 1

    for d in diffs.ravel().tolist():
        ssss = 16 if d == 32768 else abs(d).bit_length()
        put(ssss, 5)
        if 0 < ssss < 16:
            put(d if d > 0 else d + (1 << ssss) - 1, ssss)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with 1-bits
    rows, cols = frame.shape
    sof3 = (
        b"\xff\xc3"
        + (11).to_bytes(2, "big")
        + bytes([precision])
        + rows.to_bytes(2, "big")
        + cols.to_bytes(2, "big")
        + bytes([1, 1, 0x11, 0])
    )
    bits = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + b"\x00" + bits + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof3 + dht + sos + bytes(out) + b"\xff\xd9"


def build_jpeg_lossless(folder: Path) -> None:
    """A CT series in JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), encoded by :func:`jpeg_lossless_sv1`."""
    for i, ds in enumerate(make_ct_datasets(hu_volume())):
        frame = np.frombuffer(ds.PixelData, "<i2").reshape(ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([jpeg_lossless_sv1(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.save_as(folder / f"JL{i:04d}.dcm", enforce_file_format=True)


def build_rle(folder: Path) -> None:
    """A CT series in RLE Lossless."""
    ct(folder, transfer_syntax=RLELossless)


def build_enhanced(folder: Path) -> None:
    """One Enhanced CT Image Storage instance with 6 frames."""
    ds = make_ct_datasets(hu_volume())[0]
    stored = make_ct_datasets(hu_volume())
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(stored)
    ds.PixelData = b"".join(s.PixelData for s in stored)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation"):
        delattr(ds, keyword)
    ds.save_as(folder / "enhanced.dcm", enforce_file_format=True)


def build_float_rescale(folder: Path) -> None:
    """A CT series with Rescale Slope 0.5 and Rescale Intercept -1024.25."""
    ct(folder, rescale=(0.5, -1024.25))


PADDING = -2000  # stored value


def build_padding(folder: Path) -> None:
    """A CT series with Pixel Padding Value -2000 outside the circular field of view."""
    ct(folder, padding_value=PADDING)


def build_derived(folder: Path) -> None:
    """A series that is already DERIVED\\SECONDARY (e.g. our own output sent back)."""
    ct(folder, image_type=("DERIVED", "SECONDARY", "AXIAL"))


def build_good_and_bad(folder: Path) -> None:
    """Two series of one study: a good one, and one with two slices at the same position."""
    study = str(generate_uid())
    ct(folder, study_uid=study, series_number=2, prefix="GOOD")
    ct(
        folder,
        study_uid=study,
        series_number=5,
        seed=7,
        prefix="BAD",
        slice_positions=[0.0, 2.5, 5.0, 5.0, 7.5, 10.0],
        series_description="BAD",
    )


def build_repeated(folder: Path) -> None:
    """A CT series whose slices all hold the same image: no noise between neighbouring slices."""
    volume = np.repeat(hu_volume(SHAPE, 0)[:1], SHAPE[0], axis=0)
    write_datasets(make_ct_datasets(volume), folder, filename_pattern="CT{index:04d}.dcm")


def build_good(folder: Path) -> None:
    """A valid CT series."""
    ct(folder)


def mr_stacks(
    folder: Path, stacks: list[dict[str, object]], orientations: list[tuple[float, ...]] | None = None
) -> None:
    """One MR series holding one 6-slice stack per entry of ``stacks`` (attributes set on its images), at the
    same positions (or in ``orientations``), files interleaved as a scanner may send them."""
    ids = {"study_uid": str(generate_uid()), "series_uid": str(generate_uid())}
    ids["frame_of_reference_uid"] = str(generate_uid())
    groups = []
    for k, values in enumerate(stacks):
        volume = 200.0 + make_phantom(SHAPE, seed=k) / 10.0 + add_correlated_noise(np.zeros(SHAPE), 10.0, seed=k)
        kwargs = {"orientation": orientations[k]} if orientations else {}
        groups.append(make_mr_datasets(volume, extra=values, series_description="ME", **ids, **kwargs))
    datasets = [ds for group in zip(*groups, strict=True) for ds in group]
    write_datasets(datasets, folder, filename_pattern="MR{index:04d}.dcm")


def build_multi_echo(folder: Path) -> None:
    """An MR series of two echoes (Echo Numbers 1 and 2, Echo Time 15 and 30 ms) at the same 6 positions."""
    mr_stacks(folder, [{"EchoNumbers": 1, "EchoTime": "15"}, {"EchoNumbers": 2, "EchoTime": "30"}])


def build_two_orientations(folder: Path) -> None:
    """An MR series of an axial and a sagittal 6-slice stack."""
    mr_stacks(folder, [{}, {}], orientations=[(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), SAGITTAL])


def build_diffusion_directions(folder: Path) -> None:
    """A diffusion MR series: b=0 once and b=1000 in three directions at each of 6 positions."""
    mr_stacks(folder, [{"DiffusionBValue": 0.0}, *({"DiffusionBValue": 1000.0} for _ in range(3))])


def build_gantry_tilt(folder: Path) -> None:
    """A CT series acquired with a 20 degree gantry tilt: axial images whose positions move along y by
    tan(20 deg) x 2.5 mm per slice (not along the image normal)."""
    shift = np.tan(np.radians(20.0)) * 2.5

    def tilt(k: int, ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + k * shift, 4), z]
        ds.GantryDetectorTilt = 20.0

    ct(folder, mutate=tilt)


RESCALES = [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0), (2.0, -2048.0), (1.0, -1024.0), (0.25, -512.0)]


def build_rescale_per_slice(folder: Path) -> None:
    """A CT series whose slices have different Rescale Slope/Intercept (stored values differ accordingly)."""
    volume = hu_volume()
    datasets = []
    for k, (slope, intercept) in enumerate(RESCALES):
        (ds,) = make_ct_datasets(volume[k : k + 1], rescale=(slope, intercept), slice_positions=[2.5 * k])
        datasets.append(ds)
    ids = make_ct_datasets(volume[:1])[0]
    for k, ds in enumerate(datasets):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = ids.StudyInstanceUID, ids.SeriesInstanceUID
        ds.FrameOfReferenceUID, ds.InstanceNumber = ids.FrameOfReferenceUID, k + 1
    write_datasets(datasets, folder, filename_pattern="CT{index:04d}.dcm")


def build_pixel_spacing_per_slice(folder: Path) -> None:
    """Slice 3 of 6 has Pixel Spacing 0.8 mm while the others have 0.7 mm."""

    def other_spacing(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.PixelSpacing = ["0.8", "0.8"]

    ct(folder, mutate=other_spacing)


# --------------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile input and what must come of it.

    ``error``: fragments of the single ``failed (exit code N): ...`` line (failures only); ``log``:
    fragments anywhere in the log; ``derived``: number of derived image series expected in the output;
    ``output``: how to make the output path from the case folder (default ``<case>/out``).
    """

    build: Callable[[Path], None]
    code: int
    error: tuple[str, ...] = ()
    log: tuple[str, ...] = ()
    derived: int = 0
    env: dict[str, str] = field(default_factory=dict)
    output: Callable[[Path], Path] | None = None
    workdir: Callable[[Path], Path] | None = None
    read_only_input: bool = False
    missing_input: bool = False
    check: Callable[[Result], None] | None = None


@dataclass
class Result:
    case: Case
    run: AppRun
    input: Path
    before: dict[str, str]
    after: dict[str, str]
    beside_before: list[str]
    beside_after: list[str]
    output_file_before: bytes | None
    image_series: list[list[Dataset]] = field(default_factory=list)


def execute(case: Case, root: Path) -> Result:
    """Build the input under ``root/src/in``, run the app, snapshot everything the checks need."""
    src = root / "src"
    src.mkdir()
    input_dir = src / ("missing" if case.missing_input else "in")
    if not case.missing_input:
        input_dir.mkdir()
        case.build(input_dir)
    output = case.output(root) if case.output else root / "out"
    workdir = case.workdir(root) if case.workdir else root / "work"
    output_file_before = output.read_bytes() if output.is_file() else None
    if case.read_only_input:
        for path in [input_dir, *input_dir.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = folder_digest(input_dir) if input_dir.exists() else {}
    beside_before = sorted(os.listdir(src))
    try:
        run = run_app(input_dir, output, workdir, env={**QUICK, **case.env}, timeout=300)
    finally:
        after = folder_digest(input_dir) if input_dir.exists() else {}
        beside_after = sorted(os.listdir(src))
        if case.read_only_input:
            for path in [input_dir, *input_dir.rglob("*")]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return Result(case, run, input_dir, before, after, beside_before, beside_after, output_file_before)


def source_slices(input_dir: Path) -> Counter[str]:
    """Number of instances of each SeriesInstanceUID in the input (whatever can be parsed)."""
    counts: Counter[str] = Counter()
    for path in input_dir.rglob("*"):
        if path.is_file():
            try:
                with warnings.catch_warnings():  # the garbage header of build_non_dicom's fake.dcm
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if "SeriesInstanceUID" in ds:
                counts[str(ds.SeriesInstanceUID)] += 1
    return counts


def check_output(result: Result) -> list[list[Dataset]]:
    """Complete series or nothing; returns the derived image series (datasets in file order)."""
    output = result.run.output
    if output.parent.is_dir():
        leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.partial")]
        assert not leftovers, f"temporary folders left beside the output: {leftovers}"
    if result.output_file_before is not None:
        assert output.read_bytes() == result.output_file_before, "the output FILE was modified"
        return []
    if not output.exists():
        return []
    if result.input.resolve().is_relative_to(output.resolve()):
        return []  # the output folder is, or holds, the input: the input digest and its parent's listing tell
    slices = source_slices(result.input) if result.input.exists() else Counter()
    image_series: list[list[Dataset]] = []
    derived_slices: Counter[str] = Counter()
    reports = 0
    for entry in sorted(output.iterdir()):
        assert entry.is_dir() and not entry.name.startswith("."), f"unexpected entry in the output: {entry.name}"
        files = sorted(entry.iterdir())
        assert files and all(f.is_file() and f.suffix == ".dcm" for f in files), f"{entry.name}: {files}"
        datasets = [pydicom.dcmread(f) for f in files]
        if datasets[0].SOPClassUID == EncapsulatedPDFStorage:
            assert len(datasets) == 1, f"QA report series {entry.name} has {len(datasets)} files"
            reports += 1
            continue
        assert {str(ds.SeriesInstanceUID) for ds in datasets} == {entry.name}
        assert all(ds.ImageType[0] == "DERIVED" for ds in datasets)
        source_uids = {str(ds.ReferencedSeriesSequence[-1].SeriesInstanceUID) for ds in datasets}
        assert len(source_uids) == 1, source_uids
        source_uid = source_uids.pop()
        sources = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in datasets}
        assert len(sources) == len(datasets), f"derived series {entry.name}: two files of one source image"
        derived_slices[source_uid] += len(datasets)
        image_series.append(datasets)
    for source_uid, count in derived_slices.items():  # one derived series per 3-D stack: together, every slice
        assert count == slices[source_uid], f"{count} derived files for a source of {slices[source_uid]} slices"
    assert reports <= len(image_series), "a QA report without its derived series"
    return image_series


def source_datasets(input_dir: Path) -> dict[str, Dataset]:
    """SOPInstanceUID -> dataset of every readable input file."""
    return {str(ds.SOPInstanceUID): ds for _, ds in read_dicom_folder(input_dir)}


# --------------------------------------------------------------------------------------------------
# Case-specific checks
# --------------------------------------------------------------------------------------------------


def sources_of(result: Result, series: list[Dataset]) -> list[Dataset]:
    sources = source_datasets(result.input)
    return [sources[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)] for ds in series]


def check_two_studies(result: Result) -> None:
    studies = set()
    for series in result.image_series:
        srcs = sources_of(result, series)
        assert {str(ds.StudyInstanceUID) for ds in series} == {str(srcs[0].StudyInstanceUID)}
        studies.add(str(series[0].StudyInstanceUID))
    assert len(studies) == 2, "each derived series must be in its own source's study"
    assert len(list(result.run.output.iterdir())) == 4, "two derived series and two QA reports"


def check_localizer(result: Result) -> None:
    (series,) = result.image_series
    assert all(src.SeriesDescription == "SYNTHETIC" for src in sources_of(result, series))


def check_same_geometry(result: Result) -> None:
    (series,) = result.image_series
    for ds, src in zip(series, sources_of(result, series), strict=True):
        for keyword in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "FrameOfReferenceUID",
            "Rows",
            "Columns",
        ):
            assert ds.get(keyword) == src.get(keyword), keyword
    normal = np.cross(*np.reshape([float(v) for v in series[0].ImageOrientationPatient], (2, 3)))
    along = [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in series]
    assert along == sorted(along), "instances are numbered along the slice normal"


def check_uncompressed(result: Result) -> None:
    (series,) = result.image_series
    assert {ds.file_meta.TransferSyntaxUID for ds in series} == {ExplicitVRLittleEndian}
    source = load_series(read_dicom_folder(result.input))  # decoded source: what was denoised
    derived = load_series([(None, ds) for ds in series])
    assert derived.shape == source.shape
    assert float(np.median(np.abs(derived.volume - source.volume))) < 50.0, "output is not the denoised source"


def check_round_trip(result: Result) -> None:
    """Derived stored values = round((denoised - intercept) / slope): within one stored step (0.5 HU)."""
    from nsn2n import DenoiseConfig, TrainedModel, denoise_volume

    (series,) = result.image_series
    assert {(float(ds.RescaleSlope), float(ds.RescaleIntercept)) for ds in series} == {(0.5, -1024.25)}
    source = load_series(read_dicom_folder(result.input))
    model = TrainedModel.load(result.run.workdir / "nsn2n" / source.series_instance_uid)
    config = DenoiseConfig(device="cpu", unet_width=model.network.width, unet_depth=model.network.depth)
    denoised = denoise_volume(
        source.volume, source.spacing, "CT", config, padding_mask=source.padding_mask, initial_model=model
    ).denoised
    written = load_series([(None, ds) for ds in series]).volume
    assert np.max(np.abs(written - denoised)) <= 0.5 + 1e-3


def check_padding(result: Result) -> None:
    (series,) = result.image_series
    for ds, src in zip(series, sources_of(result, series), strict=True):
        out, inp = ds.pixel_array, src.pixel_array
        mask = inp == PADDING
        assert mask.any() and np.array_equal(out[mask], inp[mask]), "padding pixels changed"
        assert not np.any(out[~mask] == PADDING), "an image pixel became padding"
        assert int(ds.PixelPaddingValue) == PADDING


def check_output_file(result: Result) -> None:
    assert result.run.output.is_file()


def check_strict(result: Result) -> None:
    assert not result.run.output.exists() or not any(result.run.output.iterdir()), "strict mode wrote output"


def check_good_one_written(result: Result) -> None:
    (series,) = result.image_series
    assert all(src.SeriesDescription == "SYNTHETIC" for src in sources_of(result, series))


def check_stacks(labels: list[str]) -> Callable[[Result], None]:
    """One derived series per stack, ``[label]`` at the end of its Series Description, each with its own
    Series Instance UID and the Series Number of the source + 1000."""

    def check(result: Result) -> None:
        descriptions = sorted(str(series[0].SeriesDescription) for series in result.image_series)
        assert descriptions == sorted(f"NS-N2N denoised (research use) [{label}]" for label in labels)
        assert len({str(series[0].SeriesInstanceUID) for series in result.image_series}) == len(labels)
        assert {int(series[0].SeriesNumber) for series in result.image_series} == {1003}
        for series in result.image_series:
            source = load_series([(None, ds) for ds in sources_of(result, series)])
            assert load_series([(None, ds) for ds in series]).shape == source.shape == SHAPE
        records = sorted(result.run.workdir.glob("nsn2n/*/*/run.json"))
        assert len(records) == len(labels), "one run record per stack"

    return check


def check_tilt(result: Result) -> None:
    check_same_geometry(result)
    assert result.run.log.count("gantry tilt or sheared stack") == 1, "one line per warning"


def check_rescale_per_slice(result: Result) -> None:
    """Each derived slice keeps its source slice's Rescale Slope/Intercept, and its values are the denoised
    source values (a rescale taken from another slice would shift them by hundreds of HU)."""
    (series,) = result.image_series
    sources = sources_of(result, series)
    for ds, src in zip(series, sources, strict=True):
        assert (ds.RescaleSlope, ds.RescaleIntercept) == (src.RescaleSlope, src.RescaleIntercept)
    assert {float(ds.RescaleSlope) for ds in series} == {s for s, _ in RESCALES}
    derived = load_series([(None, ds) for ds in series]).volume
    source = load_series([(None, ds) for ds in sources]).volume
    assert float(np.max(np.median(np.abs(derived - source), axis=(1, 2)))) < 30.0


def output_is_file(root: Path) -> Path:
    (root / "out").write_text("I am a file, not a folder\n")
    return root / "out"


def output_under_file(root: Path) -> Path:
    (root / "blocker").write_text("a regular file\n")
    return root / "blocker" / "out"


def workdir_under_file(root: Path) -> Path:
    (root / "blocker").write_text("a regular file\n")
    return root / "blocker" / "work"


def inside_input(name: str) -> Callable[[Path], Path]:
    """A folder inside the input folder (``src/in``); ``""``: the input folder itself."""
    return lambda root: root / "src" / "in" / name if name else root / "src" / "in"


def through_link_into_input(root: Path) -> Path:
    (root / "link").symlink_to(root / "src" / "in")
    return root / "link" / "out"


DUPLICATE = [0.0, 2.5, 5.0, 5.0, 7.5, 10.0]

CASES: dict[str, Case] = {
    "empty_folder": Case(build_nothing, 3, ("no DICOM image instances", "0 file(s) examined")),
    "non_dicom_files": Case(
        build_non_dicom,
        3,
        ("no DICOM image instances", "4 file(s) examined"),
        log=("no SOP Class UID or SOP Instance UID",),
    ),
    "dicomdir_only": Case(
        build_dicomdir_only, 3, ("no DICOM image instances", "1 file(s) examined"), log=("Ignoring DICOMDIR",)
    ),
    "one_slice": Case(build_slices(1), 3, ("no series to denoise", "only 1 slice(s)")),
    "two_slices": Case(build_slices(2), 3, ("no series to denoise", "only 2 slice(s)")),
    "two_studies": Case(
        build_two_studies,
        0,
        derived=2,
        env={"NSN2N_QA_REPORT": "true"},
        log=("done: 2 derived series written",),
        check=check_two_studies,
    ),
    "localizer_and_axial": Case(
        build_with_localizer, 0, derived=1, log=("not denoised: localizer",), check=check_localizer
    ),
    "duplicate_positions": Case(build_positions(DUPLICATE), 3, ("duplicate slice position 5.000 mm",)),
    "missing_slice": Case(
        build_positions([0.0, 2.5, 5.0, 10.0, 12.5, 15.0]),
        3,
        ("missing slice(s) between positions 5.000 mm and 10.000 mm",),
    ),
    "non_uniform_spacing_slight": Case(
        build_positions([0.0, 2.5, 5.0, 7.8, 10.3, 12.8]), 0, derived=1, log=("slightly non-uniform slice spacing",)
    ),
    "non_uniform_spacing_irregular": Case(
        build_positions([0.0, 2.5, 5.0, 6.0, 8.5, 11.0]), 3, ("irregular slice positions",)
    ),
    "oblique": Case(build_oblique, 0, derived=1, check=check_same_geometry),
    "mixed_rows_columns": Case(build_mixed_sizes, 3, ("CT0003.dcm", "mixed image sizes: 16x16 vs 32x32")),
    "truncated_file": Case(build_truncated, 3, ("CT0003.dcm",)),
    "pixel_data_short": Case(build_short_pixels, 3, ("CT0002.dcm", "pixel data")),
    "rgb": Case(build_rgb, 3, ("colour images are not supported", "Photometric Interpretation RGB")),
    "jpeg_lossless": Case(build_jpeg_lossless, 0, derived=1, check=check_uncompressed),
    "rle_lossless": Case(build_rle, 0, derived=1, check=check_uncompressed),
    "enhanced_multiframe_ct": Case(
        build_enhanced, 3, ("enhanced.dcm", "Enhanced CT Image Storage", "multi-frame", "not supported")
    ),
    "float_rescale": Case(build_float_rescale, 0, derived=1, env={"NSN2N_SAVE_MODEL": "true"}, check=check_round_trip),
    "pixel_padding_value": Case(build_padding, 0, derived=1, check=check_padding),
    "already_derived": Case(build_derived, 3, ("not DERIVED/SECONDARY", "CT DERIVED (6 instance(s))")),
    "repeated_slices": Case(build_repeated, 0, derived=1, log=("no noise was measured",)),
    "output_is_a_file": Case(
        build_good, 4, ("output folder", "out", "not a folder"), output=output_is_file, check=check_output_file
    ),
    "output_under_a_file": Case(build_good, 4, ("output folder", "blocker/out"), output=output_under_file),
    "workdir_under_a_file": Case(build_good, 4, ("work folder", "blocker/work"), workdir=workdir_under_file),
    "read_only_input": Case(build_good, 0, derived=1, read_only_input=True),
    "strict_one_bad_of_two": Case(
        build_good_and_bad,
        5,
        ("strict mode", "duplicate slice position"),
        env={"NSN2N_STRICT": "true"},
        check=check_strict,
    ),
    "non_strict_one_bad_of_two": Case(
        build_good_and_bad,
        0,
        derived=1,
        check=check_good_one_written,
        log=("skipped: ", "duplicate slice position", "1 series skipped"),
    ),
    "config_bad_value": Case(build_good, 2, ("NSN2N_MAX_STEPS", "abc"), env={"NSN2N_MAX_STEPS": "abc"}),
    "config_unknown_key": Case(build_good, 2, ("NSN2N_NO_SUCH_KEY", "unknown key"), env={"NSN2N_NO_SUCH_KEY": "1"}),
    "input_does_not_exist": Case(build_nothing, 3, ("input folder does not exist", "src/missing"), missing_input=True),
    "output_inside_input": Case(
        build_good,
        2,
        ("output folder", "src/in/out is inside the input folder", "is only read"),
        output=inside_input("out"),
    ),
    "output_is_input": Case(build_good, 2, ("src/in is the same folder as the input folder",), output=inside_input("")),
    "output_holds_input": Case(build_good, 2, ("src holds the input folder",), output=lambda root: root / "src"),
    "output_through_a_link_into_input": Case(
        build_good, 2, ("is inside the input folder", "symbolic links resolved"), output=through_link_into_input
    ),
    "workdir_inside_input": Case(
        build_good, 2, ("work folder", "src/in/work is inside the input folder"), workdir=inside_input("work")
    ),
    "output_is_workdir": Case(
        build_good, 2, ("is the same folder as the work folder",), workdir=lambda root: root / "out"
    ),
    "multi_echo_mr": Case(
        build_multi_echo,
        0,
        derived=2,
        log=("split by EchoNumbers into 2 stacks: echo 1 (6 images), echo 2 (6 images)", "done: 2 derived series"),
        check=check_stacks(["echo 1", "echo 2"]),
    ),
    "two_orientations_mr": Case(
        build_two_orientations,
        0,
        derived=2,
        log=("split by ImageOrientationPatient",),
        check=check_stacks(["axial", "sagittal"]),
    ),
    "diffusion_directions": Case(
        build_diffusion_directions,
        3,
        ("duplicate slice position", "DiffusionBValue (2 values) does not split the series into 3-D stacks"),
    ),
    "gantry_tilt": Case(build_gantry_tilt, 0, derived=1, check=check_tilt),
    "rescale_per_slice": Case(build_rescale_per_slice, 0, derived=1, check=check_rescale_per_slice),
    "pixel_spacing_per_slice": Case(
        build_pixel_spacing_per_slice,
        3,
        ("CT0002.dcm", "inconsistent Pixel Spacing (0028,0030) [0.8, 0.8] vs [0.7, 0.7]"),
    ),
}


@pytest.fixture(scope="module")
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Result]]]:
    """Runs the selected cases (all, for the battery-wide test), two at a time."""
    module = request.module.__name__
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module.__name__ == module and hasattr(item, "callspec") and "name" in item.callspec.params
    ]
    if any(
        item.name == "test_no_patient_identifiers_in_any_log"
        for item in request.session.items
        if item.module.__name__ == module
    ):
        selected = list(CASES)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(execute, CASES[name], tmp_path_factory.mktemp(name)) for name in dict.fromkeys(selected)
        }
        yield futures
    if os.environ.get("HOSTILE_SUMMARY"):  # the messages docs/errors.md quotes
        write_summary(Path(os.environ["HOSTILE_SUMMARY"]), futures)


def write_summary(path: Path, futures: dict[str, Future[Result]]) -> None:
    """Markdown list: case, exit code, and its failure line or warnings (timestamps stripped)."""
    lines = []
    for name, future in futures.items():
        if future.exception() is not None:
            continue
        run = future.result().run
        notable = [
            re.sub(r"^\[[^]]*\] \[\w+\] \([\w.]+\) - |^\S+ \S+ \w+ [\w.]+: ", "", line)
            for line in run.log.splitlines()
            if "failed (exit code" in line or ("WARN" in line and "(nsn2n" in line)
        ]
        lines.append(f"- `{name}`: exit {run.returncode}")
        lines += [f"    - `{line.strip()}`" for line in notable]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name: str, results: dict[str, Future[Result]]) -> None:
    result = results[name].result()
    case, run = result.case, result.run
    log = run.log
    tail = "\n".join(log.splitlines()[-25:])
    assert TRACEBACK not in log, f"traceback in the log:\n{log}"
    assert run.returncode == case.code, f"exit code {run.returncode}, expected {case.code}; log tail:\n{tail}"
    failed = [line for line in log.splitlines() if f"failed (exit code {case.code}): " in line]
    if case.code == 0:
        assert not failed and "failed (exit code" not in log
    else:
        assert len(failed) == 1, f"expected one 'failed (exit code {case.code})' line; log tail:\n{tail}"
        for fragment in case.error:
            assert fragment in failed[0], f"{fragment!r} not in: {failed[0]}"
    for fragment in case.log:
        assert fragment in log, f"{fragment!r} not in the log; tail:\n{tail}"
    assert result.after == result.before, "the input folder was modified"
    assert result.beside_after == result.beside_before, "something was written next to the input folder"
    result.image_series = check_output(result)
    assert len(result.image_series) == case.derived, f"{len(result.image_series)} derived series; tail:\n{tail}"
    for identifier in IDENTIFIERS:
        assert identifier not in log, f"patient identifier {identifier!r} in the log"
    if case.check is not None:
        case.check(result)


@pytest.mark.slow
def test_no_patient_identifiers_in_any_log(results: dict[str, Future[Result]]) -> None:
    assert len(results) == len(CASES) >= 20
    for name, future in results.items():
        log = future.result().run.log
        leaked = [identifier for identifier in IDENTIFIERS if identifier in log]
        assert not leaked, f"{name}: patient identifiers in the log: {leaked}"


# --------------------------------------------------------------------------------------------------
# The path pre-check (app/paths.py) without running the app
# --------------------------------------------------------------------------------------------------


def test_resolve_paths_flags_then_environment_then_defaults(tmp_path: Path) -> None:
    from app.paths import resolve_paths

    env = {"HOLOSCAN_INPUT_PATH": str(tmp_path / "env_in"), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "env_out")}
    argv = ["python", "app", "-l", "DEBUG", "-i", str(tmp_path / "flag_in"), "-m", "models"]
    assert resolve_paths(argv, env, default_workdir=tmp_path / "w") == (
        tmp_path / "flag_in",
        tmp_path / "env_out",
        tmp_path / "w",
    )
    assert resolve_paths(["python", "app", "-i"], env) is None  # the SDK reports a bad command line


def test_check_writable_folder(tmp_path: Path) -> None:
    from app.paths import check_writable_folder
    from operators.exit_status import EXIT_OUTPUT, OutputError

    check_writable_folder(tmp_path / "new" / "deeper", "output")  # creatable
    assert not (tmp_path / "new").exists(), "the check must not create anything"
    (tmp_path / "file").write_text("x")
    for path, fragment in ((tmp_path / "file", "is not a folder"), (tmp_path / "file" / "out", "is a file")):
        with pytest.raises(OutputError, match=fragment) as info:
            check_writable_folder(path, "output")
        assert info.value.exit_code == EXIT_OUTPUT and str(path) in str(info.value)
