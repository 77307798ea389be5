"""Read and validate a single-frame CT/MR DICOM image series.

The reader turns the instances of one series into a :class:`SourceSeries`: the datasets sorted in
space, a float32 volume in modality units, a pixel-padding mask and the voxel spacing. Everything a
denoiser or a derived-series writer may rely on is validated here, once, with a one-line
:class:`SeriesError` that names the series (and the file at fault) but never a patient identifier.

Standard references (DICOM PS3.3):

* Image Plane Module, C.7.6.2: Image Position (Patient) (0020,0032), Image Orientation (Patient)
  (0020,0037), Pixel Spacing (0028,0030). The slice normal is the cross product of the row and column
  direction cosines; slices are ordered by the projection of their position on it (C.7.6.2.1.1).
  Slice Thickness (0018,0050) is the nominal thickness, not the distance between slices, so it is
  never used for spacing.
* Image Pixel Module, C.7.6.3 and Modality LUT Module, C.11.1: stored values are mapped to modality
  units (e.g. Hounsfield units for CT) by Rescale Slope (0028,1053) / Rescale Intercept (0028,1052).
* Pixel Padding Value (0028,0120) and Pixel Padding Range Limit (0028,0121), C.7.5.1.1.2: stored
  values that are not part of the image (e.g. outside the circular CT field of view).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, as_pixel_options, get_decoder, pixel_array
from pydicom.uid import (
    EnhancedCTImageStorage,
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MediaStorageDirectoryStorage,
)

__all__ = [
    "DicomReadError",
    "SeriesError",
    "SourceSeries",
    "group_series",
    "load_series",
    "padding_bounds",
    "read_dicom_folder",
    "rescale_parameters",
    "stored_dtype",
    "stored_value_range",
]

logger = logging.getLogger(__name__)

#: Multi-frame SOP classes whose per-frame geometry lives in functional groups (PS3.3 C.7.6.16);
#: they are refused with a request to export the series as single-frame instances.
ENHANCED_SOP_CLASSES: frozenset[str] = frozenset(
    {
        EnhancedCTImageStorage,
        EnhancedMRImageStorage,
        EnhancedMRColorImageStorage,
        EnhancedPETImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        LegacyConvertedEnhancedPETImageStorage,
    }
)

#: Two slices closer than this along the normal (mm) are "at the same position".
DUPLICATE_POSITION_TOLERANCE_MM = 0.01
#: A gap larger than this multiple of the median spacing means slices are missing.
MISSING_SLICE_FACTOR = 1.5
#: Image Orientation (Patient) direction cosines may differ by this much within one series.
ORIENTATION_TOLERANCE = 1e-3
#: Fewest slices of a series: the slice spacing is measured between two positions.
MIN_POSITIONS = 2
#: Attributes every instance of a series must share.
_SERIES_CONSTANTS = (
    ("SOPClassUID", "SOP Class UID (0008,0016)"),
    ("Modality", "Modality (0008,0060)"),
    ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
)


class SeriesError(ValueError):
    """A series cannot be processed.

    The message is a single line of the form ``Series <SeriesInstanceUID>: [<file name>: ]<reason>``.
    It never contains patient identifiers (name, ID, birth date, accession number); UIDs and file
    names are the only identifying values used.
    """

    def __init__(self, series_uid: str | None, reason: str, filename: str | os.PathLike[str] | None = None):
        self.series_uid = str(series_uid) if series_uid else "<unknown SeriesInstanceUID>"
        self.filename = Path(filename).name if filename else None
        self.reason = " ".join(str(reason).split())  # one line, whatever the reason contains
        where = f"{self.filename}: " if self.filename else ""
        super().__init__(f"Series {self.series_uid}: {where}{self.reason}")


class DicomReadError(ValueError):
    """A file that looks like DICOM (it has the ``DICM`` prefix) could not be parsed at all."""


@dataclass(eq=False)
class SourceSeries:
    """A validated single-frame image series, sorted along the slice normal.

    Attributes:
        datasets: The instances in spatial order (ascending projection of Image Position (Patient) on the slice
            normal). They are the caller's objects, not copies: treat them as read-only.
        paths: The file of each dataset (same order), or ``None`` where it was not read from a file.
        volume: float32 array (D, H, W) in modality units (Hounsfield units for CT), i.e. stored values mapped
            through Rescale Slope/Intercept (PS3.3 C.11.1). Padding pixels keep their mapped value; use
            :attr:`padding_mask` to exclude them.
        padding_mask: bool array (D, H, W), True where the stored value is Pixel Padding Value (0028,0120) or lies
            in the Pixel Padding Value .. Pixel Padding Range Limit (0028,0121) range (PS3.3 C.7.5.1.1.2).
        padding_stored_values: Per slice, the original stored values at the ``padding_mask[z]`` pixels (C order),
            so that a writer can restore them exactly.
        spacing: (dz, dy, dx) in mm. dz is the median distance between consecutive slice positions projected on the
            normal; dy, dx come from Pixel Spacing (0028,0030) (row spacing, column spacing).
        slice_positions: float64 (D,), projection of each Image Position (Patient) on the normal, in mm
            (ascending).
        slice_gaps: float64 (D - 1,), differences of :attr:`slice_positions`.
        normal: Unit slice normal (row cosine x column cosine), patient (LPS) coordinates.
        modality, sop_class_uid, study_instance_uid, series_instance_uid: of the series (the same in
            every instance).
        frame_of_reference_uid: Frame of Reference UID (0020,0052), or ``None`` when absent.
        warnings: Non-fatal findings (slightly irregular spacing, sheared stack, ...), one line each.
    """

    datasets: list[Dataset]
    paths: list[Path | None]
    volume: np.ndarray
    padding_mask: np.ndarray
    padding_stored_values: list[np.ndarray]
    spacing: tuple[float, float, float]
    slice_positions: np.ndarray
    slice_gaps: np.ndarray
    normal: np.ndarray
    modality: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W) of :attr:`volume`."""
        d, h, w = self.volume.shape
        return int(d), int(h), int(w)

    def __len__(self) -> int:
        return len(self.datasets)

    def __repr__(self) -> str:
        return (
            f"SourceSeries(series_instance_uid={self.series_instance_uid!r}, modality={self.modality!r}, "
            f"shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"warnings={len(self.warnings)})"
        )


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def read_dicom_folder(folder: str | os.PathLike[str], *, skip_unreadable: bool = False) -> list[tuple[Path, Dataset]]:
    """Read every DICOM file below ``folder`` (recursively, in sorted path order).

    Files without the DICOM Part 10 prefix are skipped (logged at debug level), as is the DICOMDIR
    (Media Storage Directory, PS3.3 F.2) whatever its name. Instances lacking SOP Class UID or SOP
    Instance UID are skipped with a warning. Nothing in ``folder`` is modified, created or deleted.

    Pixel data is read but not decoded; a truncated file usually reads fine and is reported by
    :func:`load_series`, which decodes it (where pydicom loses the whole dataset to truncated
    encapsulated pixel data, the header is kept without Pixel Data, so the file is still reported
    in its series rather than silently missing).

    Args:
        folder: the folder to read.
        skip_unreadable: skip, with a warning, a file with the ``DICM`` prefix whose header cannot be
            parsed, instead of raising.

    Returns:
        ``(path, dataset)`` of every DICOM instance found.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
        DicomReadError: a file with the ``DICM`` prefix cannot be parsed (naming the file), unless
            ``skip_unreadable``.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"DICOM input folder does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"DICOM input path is not a folder: {root}")

    found: list[tuple[Path, Dataset]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            ds = _read_instance(path, skip_unreadable) if path.is_file() else None
            if ds is not None:
                found.append((path, ds))
    return found


def _read_instance(path: Path, skip_unreadable: bool) -> Dataset | None:
    """One file as an image instance, or ``None`` when it is none (see :func:`read_dicom_folder`)."""
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        logger.debug("Skipping %s: not a DICOM Part 10 file", path)
        return None
    except Exception as exc:  # truncated/corrupt header: pydicom raises many types
        msg = " ".join(f"Cannot parse DICOM file {path.name} in {path.parent}: {type(exc).__name__}: {exc}".split())
        if skip_unreadable:
            logger.warning("Skipping unreadable file: %s", msg)
            return None
        raise DicomReadError(msg) from exc
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        # pydicom returns an empty dataset when encapsulated pixel data runs into the end of a
        # truncated file; keep the header so that load_series reports the file in its series.
        header = _read_header(path)
        if header is not None and header.get("SOPClassUID") and header.get("SOPInstanceUID"):
            logger.warning("%s looks truncated: only its header could be read", path)
            ds = header
    media_class = ds.file_meta.get("MediaStorageSOPClassUID") if ds.file_meta else None
    if media_class == MediaStorageDirectoryStorage or ds.get("SOPClassUID") == MediaStorageDirectoryStorage:
        logger.info("Ignoring DICOMDIR %s (the files are read directly)", path)
        return None
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        logger.warning("Skipping %s: no SOP Class UID or SOP Instance UID", path)
        return None
    return ds


def _read_header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, force=False, stop_before_pixels=True)
    except Exception:
        return None


def group_series(
    items: Iterable[tuple[Path | None, Dataset] | Dataset],
) -> dict[tuple[str, str], list[tuple[Path | None, Dataset]]]:
    """Group instances by (StudyInstanceUID, SeriesInstanceUID), keeping their input order.

    Instances lacking either UID cannot belong to a series and are skipped with a warning.
    """
    groups: dict[tuple[str, str], list[tuple[Path | None, Dataset]]] = {}
    for path, ds in _normalise_items(items):
        study, series = ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID")
        if not study or not series:
            logger.warning("Skipping %s: no StudyInstanceUID or SeriesInstanceUID", path or "<dataset>")
            continue
        groups.setdefault((str(study), str(series)), []).append((path, ds))
    return groups


def _normalise_items(
    items: Iterable[tuple[Path | None, Dataset] | Dataset],
) -> list[tuple[Path | None, Dataset]]:
    out: list[tuple[Path | None, Dataset]] = []
    for item in items:
        if isinstance(item, Dataset):
            fname = getattr(item, "filename", None)
            out.append((Path(fname) if isinstance(fname, str | os.PathLike) and fname else None, item))
        else:
            path, ds = item
            if not isinstance(ds, Dataset):
                raise TypeError(f"expected (path, pydicom.Dataset) pairs, got {type(ds).__name__}")
            out.append((Path(path) if path is not None else None, ds))
    return out


# --------------------------------------------------------------------------------------------------
# Validation and loading
# --------------------------------------------------------------------------------------------------


def rescale_parameters(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept) of the linear Modality LUT transform (PS3.3 C.11.1.1.2); (1, 0) if absent.

    Raises:
        ValueError: a non-invertible slope, or only one of the two attributes present (pydicom would then
            silently skip rescaling while a writer would apply the other one).
    """
    has_slope, has_icpt = "RescaleSlope" in ds, "RescaleIntercept" in ds
    if has_slope != has_icpt:
        raise ValueError("Rescale Slope (0028,1053) and Rescale Intercept (0028,1052) must both be present")
    if not has_slope:
        return 1.0, 0.0
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(intercept):
        raise ValueError(f"invalid Rescale Slope/Intercept {slope!r}/{intercept!r}")
    return slope, intercept


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest value representable with Bits Stored and Pixel Representation (C.7.6.3)."""
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def stored_dtype(ds: Dataset) -> np.dtype:
    """Little-endian numpy type of the stored values: Bits Allocated 8/16/32, signed when Pixel
    Representation is 1 (C.7.6.3); the type the derived series is encoded in."""
    signed = int(ds.PixelRepresentation) == 1
    return np.dtype(f"<{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}")


def padding_bounds(ds: Dataset) -> tuple[int, int] | None:
    """Inclusive stored-value range that is padding (C.7.5.1.1.2), or ``None`` without Pixel Padding Value.

    Pixel Padding Value alone marks one value; with Pixel Padding Range Limit every stored value between
    the two (in either order) is padding.
    """
    if ds.get("PixelPaddingValue") is None:
        return None
    value = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return value, value
    limit = int(limit)
    return min(value, limit), max(value, limit)


def load_series(
    datasets_with_paths: Iterable[tuple[Path | None, Dataset] | Dataset], *, min_slices: int = MIN_POSITIONS
) -> SourceSeries:
    """Validate, sort and decode one single-frame image series.

    Args:
        datasets_with_paths: ``(path, Dataset)`` pairs as returned by :func:`read_dicom_folder` /
            :func:`group_series` (bare Datasets are accepted too). The datasets are not modified.
        min_slices: fewest slices accepted (at least 2: the slice spacing is measured between positions).

    Returns:
        The series sorted along its slice normal, with its volume in modality units. Findings that do not
        stop denoising are in its ``warnings`` (not logged here: the caller logs them once, with its context).

    Raises:
        SeriesError: instances of several series, enhanced/multi-frame objects, colour or float pixel data,
            missing or inconsistent geometry (Image Position/Orientation (Patient), Pixel Spacing,
            Rows/Columns), fewer than ``min_slices`` slices, two slices at the same position, missing
            slices, a non-linear Modality LUT, and pixel data that cannot be decoded or is shorter than
            declared.
    """
    items = _normalise_items(datasets_with_paths)
    series_uid = _single_series_uid(items)
    for path, ds in items:
        _check_instance(series_uid, path, ds)
    for keyword, label in _SERIES_CONSTANTS:
        _check_consistent(series_uid, items, keyword, label)
    needed = max(min_slices, MIN_POSITIONS)
    if len(items) < needed:
        raise SeriesError(series_uid, f"only {len(items)} slice(s); at least {needed} are needed")
    geometry = _sort_along_normal(series_uid, items, needed)
    volume, mask, padding_values = _decode_pixels(series_uid, geometry.items)
    first = geometry.items[0][1]
    return SourceSeries(
        datasets=[ds for _, ds in geometry.items],
        paths=[p for p, _ in geometry.items],
        volume=volume,
        padding_mask=mask,
        padding_stored_values=padding_values,
        spacing=geometry.spacing,
        slice_positions=geometry.positions,
        slice_gaps=geometry.gaps,
        normal=geometry.normal,
        modality=str(first.get("Modality", "")),
        sop_class_uid=str(first.SOPClassUID),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=series_uid,
        frame_of_reference_uid=str(first.FrameOfReferenceUID) if first.get("FrameOfReferenceUID") else None,
        warnings=geometry.warnings,
    )


def _single_series_uid(items: Sequence[tuple[Path | None, Dataset]]) -> str:
    """The one Series Instance UID of ``items``; :class:`SeriesError` when there are none or several."""
    if not items:
        raise SeriesError(None, "no instances given")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for _, ds in items}
    if len(series_uids) > 1:
        raise SeriesError(
            None, f"the instances belong to {len(series_uids)} different series: {', '.join(sorted(series_uids))}"
        )
    series_uid = next(iter(series_uids))
    if not series_uid:
        raise SeriesError(None, "the instances have no Series Instance UID (0020,000E)")
    return series_uid


# --------------------------------------------------------------------------------------------------
# Geometry: one plane orientation, slices sorted along its normal (PS3.3 C.7.6.2.1.1)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SliceGeometry:
    """The slices of a series sorted along their normal, and what their positions say."""

    items: list[tuple[Path | None, Dataset]]
    normal: np.ndarray
    positions: np.ndarray  # projection of each Image Position (Patient) on the normal, ascending
    gaps: np.ndarray
    spacing: tuple[float, float, float]
    warnings: list[str]


def _sort_along_normal(
    series_uid: str, items: Sequence[tuple[Path | None, Dataset]], min_slices: int
) -> _SliceGeometry:
    """Sort by position along the slice normal; reject duplicate, missing and irregular slices."""
    normal, pixel_spacing = _common_plane(series_uid, items)
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in items], dtype=np.float64)
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    items = [items[i] for i in order]
    positions, proj = positions[order], proj[order]
    gaps = np.diff(proj)
    median_gap = _check_gaps(series_uid, items, proj, gaps, min_slices)
    warnings = _irregularity_warnings(positions, proj, gaps, median_gap, normal, pixel_spacing, items)
    spacing = (median_gap, pixel_spacing[0], pixel_spacing[1])
    return _SliceGeometry(items, normal, proj, gaps, spacing, warnings)


def _common_plane(series_uid: str, items: Sequence[tuple[Path | None, Dataset]]) -> tuple[np.ndarray, list[float]]:
    """The unit slice normal and Pixel Spacing, after checking every instance shares the first's plane."""
    first_path, first = items[0]
    iop0 = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    row_cos, col_cos = iop0[:3], iop0[3:]
    if not (
        abs(np.linalg.norm(row_cos) - 1) < 1e-2
        and abs(np.linalg.norm(col_cos) - 1) < 1e-2
        and abs(float(row_cos @ col_cos)) < 1e-2
    ):
        raise SeriesError(
            series_uid,
            f"Image Orientation (Patient) (0020,0037) {list(iop0)} is not two orthogonal unit vectors",
            first_path,
        )
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    spacing0 = [float(v) for v in first.PixelSpacing]
    for path, ds in items[1:]:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        if np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise SeriesError(
                series_uid,
                "inconsistent Image Orientation (Patient) (0020,0037) within the series: "
                f"{_fmt(iop)} vs {_fmt(iop0)} in {_name(first_path)}",
                path,
            )
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise SeriesError(
                series_uid,
                f"mixed image sizes: {ds.Rows}x{ds.Columns} vs {first.Rows}x{first.Columns} "
                f"in {_name(first_path)} (Rows/Columns (0028,0010/0011))",
                path,
            )
        sp = [float(v) for v in ds.PixelSpacing]
        if not np.allclose(sp, spacing0, rtol=1e-3, atol=1e-4):
            raise SeriesError(
                series_uid,
                f"inconsistent Pixel Spacing (0028,0030) {sp} vs {spacing0} in {_name(first_path)}",
                path,
            )
    return normal, spacing0


def _check_gaps(
    series_uid: str, items: Sequence[tuple[Path | None, Dataset]], proj: np.ndarray, gaps: np.ndarray, min_slices: int
) -> float:
    """Reject duplicate positions, missing slices and overlapping reconstructions; the median gap.

    Several images at one position are explained: which attributes could tell them apart, or which stacks
    the series holds (``dicom_series.stacks``: a caller splits such a series before loading each stack).
    """
    dup = np.flatnonzero(gaps < DUPLICATE_POSITION_TOLERANCE_MM)
    if dup.size:
        from dicom_series.stacks import duplicate_note, split_stacks  # stacks builds on this module

        k = int(dup[0])
        stacks = split_stacks(items, min_slices=min_slices)
        if len(stacks) > 1:
            note = f"the series holds {len(stacks)} stacks ({', '.join(s.label for s in stacks)}): load each one"
        else:
            note = duplicate_note(items, min_slices=min_slices)
        raise SeriesError(
            series_uid,
            f"duplicate slice position {proj[k]:.3f} mm: {_name(items[k][0])} and {_name(items[k + 1][0])} "
            f"are at the same position; {note}",
        )
    median_gap = float(np.median(gaps))
    big = np.flatnonzero(gaps > MISSING_SLICE_FACTOR * median_gap)
    if big.size:
        k = int(big[0])
        raise SeriesError(
            series_uid,
            f"missing slice(s) between positions {proj[k]:.3f} mm and {proj[k + 1]:.3f} mm "
            f"(gap {gaps[k]:.3f} mm, median spacing {median_gap:.3f} mm; {big.size} such gap(s))",
        )
    small = np.flatnonzero(gaps < median_gap / MISSING_SLICE_FACTOR)
    if small.size:
        k = int(small[0])
        raise SeriesError(
            series_uid,
            f"irregular slice positions: gap of {gaps[k]:.3f} mm between {proj[k]:.3f} mm and "
            f"{proj[k + 1]:.3f} mm, median spacing {median_gap:.3f} mm (overlapping slices from "
            "different reconstructions?)",
        )
    return median_gap


def _irregularity_warnings(
    positions: np.ndarray,
    proj: np.ndarray,
    gaps: np.ndarray,
    median_gap: float,
    normal: np.ndarray,
    pixel_spacing: Sequence[float],
    items: Sequence[tuple[Path | None, Dataset]],
) -> list[str]:
    """Findings that do not stop denoising: slightly non-uniform gaps, a sheared (tilted) stack.

    The gap farthest from the median is named by its slices' places in spatial order and their files
    (positions along the normal are signed and mean little to a reader).
    """
    warnings: list[str] = []
    tolerance = max(DUPLICATE_POSITION_TOLERANCE_MM, 0.01 * median_gap)
    deviation = np.abs(gaps - median_gap)
    if np.any(deviation > tolerance):
        k = int(np.argmax(deviation))
        warnings.append(
            f"slightly non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"(median {median_gap:.3f} mm); the gap farthest from the median, {gaps[k]:.3f} mm, is between "
            f"slices {k + 1} and {k + 2} of {len(proj)} ({_name(items[k][0])} and {_name(items[k + 1][0])})"
        )
    steps = np.diff(positions, axis=0)
    in_plane = steps - np.outer(steps @ normal, normal)
    shear = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if shear > 0.1 * min(pixel_spacing):
        warnings.append(
            f"slice positions are not aligned along the slice normal (gantry tilt or sheared stack): "
            f"up to {shear:.3f} mm in-plane offset between consecutive slices; geometry is kept per slice"
        )
    return warnings


# --------------------------------------------------------------------------------------------------
# Pixels: stored values, padding (C.7.5.1.1.2) and the Modality LUT (C.11.1)
# --------------------------------------------------------------------------------------------------


def _decode_pixels(
    series_uid: str, items: Sequence[tuple[Path | None, Dataset]]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(volume in modality units, padding mask, stored padding values per slice)`` of sorted ``items``."""
    first = items[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    volume = np.empty((len(items), rows, cols), dtype=np.float32)
    mask = np.zeros((len(items), rows, cols), dtype=bool)
    padding_values: list[np.ndarray] = []
    for z, (path, ds) in enumerate(items):
        stored = _decode(series_uid, path, ds)
        bounds = padding_bounds(ds)
        if bounds is not None:
            slice_mask = (stored >= bounds[0]) & (stored <= bounds[1])
            mask[z] = slice_mask
            padding_values.append(stored[slice_mask].copy())
        else:
            padding_values.append(np.empty(0, dtype=stored.dtype))
        volume[z] = apply_modality_lut(stored, ds)
    return volume, mask, padding_values


_REQUIRED_GEOMETRY = (
    ("ImagePositionPatient", "Image Position (Patient) (0020,0032)", 3),
    ("ImageOrientationPatient", "Image Orientation (Patient) (0020,0037)", 6),
    ("PixelSpacing", "Pixel Spacing (0028,0030)", 2),
)
_REQUIRED_PIXEL = (
    ("Rows", "Rows (0028,0010)"),
    ("Columns", "Columns (0028,0011)"),
    ("BitsAllocated", "Bits Allocated (0028,0100)"),
    ("BitsStored", "Bits Stored (0028,0101)"),
    ("PixelRepresentation", "Pixel Representation (0028,0103)"),
)


def _check_instance(series_uid: str, path: Path | None, ds: Dataset) -> None:
    """Checks of one instance that need no pixel decoding."""
    sop_class = str(ds.get("SOPClassUID", ""))
    frames = ds.get("NumberOfFrames")
    if sop_class in ENHANCED_SOP_CLASSES or (frames is not None and int(frames) > 1):
        what = pydicom.uid.UID(sop_class).name if sop_class else "multi-frame"
        raise SeriesError(
            series_uid,
            f"enhanced multi-frame image ({what}, {frames or '?'} frames) is not supported; "
            "export the series as single-frame instances (e.g. CT/MR Image Storage)",
            path,
        )
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise SeriesError(
            series_uid,
            "float pixel data (Float/Double Float Pixel Data (7FE0,0008/0009)) is not supported; "
            "only integer stored values with Rescale Slope/Intercept are",
            path,
        )
    if "PixelData" not in ds:
        raise SeriesError(series_uid, "no Pixel Data (7FE0,0010) (file truncated or not an image?)", path)
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SeriesError(
            series_uid,
            f"colour images are not supported (Samples per Pixel {samples}, Photometric Interpretation "
            f"{photometric or 'missing'}); a greyscale MONOCHROME1/2 series is required",
            path,
        )
    for keyword, label in _REQUIRED_PIXEL:
        if ds.get(keyword) is None:
            raise SeriesError(series_uid, f"missing {label}", path)
    if int(ds.BitsAllocated) not in (8, 16, 32):
        raise SeriesError(series_uid, f"Bits Allocated (0028,0100) {ds.BitsAllocated} is not supported", path)
    for keyword, label, n in _REQUIRED_GEOMETRY:
        value = ds.get(keyword)
        if value is None or value == "" or len(value) != n:
            raise SeriesError(series_uid, f"missing or malformed {label}", path)
        try:
            if not all(np.isfinite(float(v)) for v in value):
                raise ValueError
        except (TypeError, ValueError):
            raise SeriesError(series_uid, f"non-numeric {label}", path) from None
    if any(float(v) <= 0 for v in ds.PixelSpacing):
        raise SeriesError(series_uid, f"non-positive Pixel Spacing (0028,0030) {list(ds.PixelSpacing)}", path)
    if "ModalityLUTSequence" in ds:
        raise SeriesError(
            series_uid,
            "a Modality LUT Sequence (0028,3000) is not supported (only linear Rescale Slope/Intercept "
            "can be inverted when writing the derived series)",
            path,
        )
    try:
        rescale_parameters(ds)
    except ValueError as exc:
        raise SeriesError(series_uid, str(exc), path) from None


def _check_consistent(series_uid: str, items: Sequence[tuple[Path | None, Dataset]], keyword: str, label: str) -> None:
    ref_path, ref = items[0]
    ref_value = str(ref.get(keyword, ""))
    for path, ds in items[1:]:
        if str(ds.get(keyword, "")) != ref_value:
            raise SeriesError(
                series_uid,
                f"inconsistent {label} within the series: {ds.get(keyword, '')!s} vs {ref_value} in {_name(ref_path)}",
                path,
            )


def _decode(series_uid: str, path: Path | None, ds: Dataset) -> np.ndarray:
    """Stored values of one single-frame instance as a (Rows, Columns) integer array."""
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta else None
    ts_name = pydicom.uid.UID(ts).name if ts else "no Transfer Syntax UID"
    try:
        if ts:
            arr = pixel_array(ds)
        elif ds["PixelData"].is_undefined_length:
            raise ValueError("encapsulated (compressed) pixel data without a file meta Transfer Syntax UID")
        else:  # an in-memory dataset: native pixel data, little endian as pydicom writes it
            arr, _ = get_decoder(ExplicitVRLittleEndian).as_array(ds, validate=True, **as_pixel_options(ds))
    except Exception as exc:  # pydicom raises ValueError/RuntimeError/NotImplementedError/...
        raise SeriesError(
            series_uid, f"pixel data cannot be decoded ({ts_name}): {type(exc).__name__}: {exc}", path
        ) from exc
    if arr.shape != (int(ds.Rows), int(ds.Columns)):
        raise SeriesError(
            series_uid,
            f"decoded pixel data has shape {arr.shape}, expected ({ds.Rows}, {ds.Columns})",
            path,
        )
    if arr.dtype.kind not in "iu":
        raise SeriesError(series_uid, f"pixel data decoded as {arr.dtype}, expected integers", path)
    return arr


def _name(path: Path | None) -> str:
    return path.name if path is not None else "<dataset>"


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
