"""Several images per slice position: split a series into 3-D stacks, one derived series each.

Why: one MR series often holds several volumes of the same slices: every echo of a multi-echo sequence,
every b-value of a diffusion sequence, every phase of a dynamic or cardiac acquisition, or stacks of
different orientation. NS-N2N pairs neighbouring slices of *one* volume, and a volume needs one image per
position, so each of these volumes (a *stack*) is loaded, denoised and written on its own, as its own
derived series (its own Series Instance UID, a Series Description that names the stack, the Series Number
of the source series + offset like every derived series of that source).

The rule (:func:`split_stacks`), in this order:

1. Orientation: instances whose Image Orientation (Patient) (0020,0037) differs by more than
   ``ORIENTATION_TOLERANCE`` are separate stacks, when each holds at least ``min_slices`` images and the
   orientations differ by at least :data:`MIN_STACK_ANGLE_DEG` (a stray image of another orientation, or
   orientations that wobble by a fraction of a degree, are not stacks: the reader then reports the
   inconsistent orientation).
2. Within one orientation, only when two images share a position along the slice normal: the stacks are
   the values of the first attribute of :data:`STACK_ATTRIBUTES` that gives every stack one image per
   position and at least ``min_slices`` images, else of all the attributes that vary, taken together. An
   attribute that varies from image to image (e.g. Trigger Time of a gated series) gives one-image stacks
   and is passed over. If no attribute qualifies the series is left whole, and the reader rejects it with
   its duplicate-position message, completed by :func:`duplicate_note`, which names the attributes.
3. Otherwise the series is one stack, the whole series (``Stack.values == ()``).

Values are compared as text, numbers after rounding to six significant digits (``4.5`` and ``4.50`` are
one echo time). Attributes are the standard ones of PS3.3 (C.7.6.1, C.8.3.1, C.8.13.5.9, C.7.6.2); private
vendor b-value tags are not read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_series.reader import DUPLICATE_POSITION_TOLERANCE_MM, ORIENTATION_TOLERANCE

__all__ = [
    "MIN_STACK_ANGLE_DEG",
    "ORIENTATION_KEYWORD",
    "STACK_ATTRIBUTES",
    "Stack",
    "duplicate_note",
    "split_stacks",
    "stack_series_description",
]

#: Attributes that tell the images at one position apart, in the order they are tried, with the label a
#: stack gets from each: Echo Numbers (0018,0086), Echo Time (0018,0081), Diffusion b-value (0018,9087),
#: Temporal Position Identifier (0020,0100), Trigger Time (0018,1060).
STACK_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("EchoNumbers", "echo {}"),
    ("EchoTime", "TE {} ms"),
    ("DiffusionBValue", "b={}"),
    ("TemporalPositionIdentifier", "phase {}"),
    ("TriggerTime", "trigger {} ms"),
)
#: The keyword of a stack made by orientation (step 1 of the rule).
ORIENTATION_KEYWORD = "ImageOrientationPatient"
#: Stacks of different orientation differ at least this much (degrees) in a row or column direction;
#: smaller differences are one stack with inconsistent orientations, not two acquisitions.
MIN_STACK_ANGLE_DEG = 5.0
#: A slice normal this close to a patient axis (|cosine|) names the plane axial, coronal or sagittal.
_NAMED_PLANE_COSINE = 0.9

Item = tuple[Path | None, Dataset]


@dataclass(frozen=True)
class Stack:
    """One 3-D stack of a series.

    Attributes:
        items: its ``(path, dataset)`` pairs, in input order.
        values: ``(keyword, value)`` pairs that define it; ``()`` for a series that is not split.
        label: what it is, for people (``"echo 2"``, ``"sagittal, b=1000"``); ``""`` when not split.
    """

    items: list[Item]
    values: tuple[tuple[str, str], ...] = ()
    label: str = ""

    @property
    def key(self) -> str:
        """The label as a folder name (``"echo-2"``, ``"sagittal-b-1000"``); ``""`` when not split."""
        return re.sub(r"[^a-z0-9.]+", "-", self.label.lower()).strip("-.")


def split_stacks(items: Sequence[Item], *, min_slices: int) -> list[Stack]:
    """The 3-D stacks of one series (see the module docstring for the rule); one stack when not split.

    Instances without a usable Image Position/Orientation (Patient) leave the series whole: the reader
    reports them.
    """
    items = list(items)
    planes = [_plane(ds) for _, ds in items]
    if not items or any(plane is None for plane in planes):
        return [Stack(items)]
    groups = _orientation_groups([plane[0] for plane in planes])
    if len(groups) == 1:
        return _split_positions(items, [plane[1] for plane in planes], min_slices)
    if any(len(group) < min_slices for group in groups) or not _distinct([planes[g[0]][0] for g in groups]):
        return [Stack(items)]
    stacks = []
    names = _plane_names([planes[group[0]][0] for group in groups])
    for group, name in zip(groups, names, strict=True):
        for stack in _split_positions([items[i] for i in group], [planes[i][1] for i in group], min_slices):
            label = ", ".join(part for part in (name, stack.label) if part)
            stacks.append(Stack(stack.items, ((ORIENTATION_KEYWORD, name), *stack.values), label))
    return stacks


def duplicate_note(items: Sequence[Item], *, min_slices: int) -> str:
    """Why a series with several images at one position is not split into stacks, naming the attributes."""
    datasets = [ds for _, ds in items]
    varying = [(keyword, len(set(values))) for keyword, values in _values(datasets).items() if len(set(values)) > 1]
    if not varying:
        names = ", ".join(keyword for keyword, _ in STACK_ATTRIBUTES)
        return f"no attribute tells them apart ({names} are the same or absent in the whole series)"
    which = ", ".join(f"{keyword} ({n} values)" for keyword, n in varying)
    return (
        f"{which} does not split the series into 3-D stacks: some stack would hold several images at one "
        f"position or fewer than {min_slices} images"
    )


def stack_series_description(description: str, label: str, max_length: int = 64) -> str:
    """The Series Description of a stack's derived series: ``"<description> [<label>]"``, the description
    shortened so that the whole fits Series Description (0008,103E), LO, 64 characters (PS3.5 6.2);
    ``description`` as it is for a series that is not split (``label == ""``)."""
    if not label:
        return description
    suffix = f" [{label}]"[:max_length]
    return description[: max_length - len(suffix)].rstrip() + suffix


def _plane(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(orientation (6,), position (3,)) of one instance, or ``None`` when either is missing or malformed."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if iop.shape != (6,) or ipp.shape != (3,) or not (np.all(np.isfinite(iop)) and np.all(np.isfinite(ipp))):
        return None
    return iop, ipp


def _orientation_groups(orientations: list[np.ndarray]) -> list[list[int]]:
    """Indices of the instances of each orientation, in order of first appearance."""
    groups: list[list[int]] = []
    for i, iop in enumerate(orientations):
        for group in groups:
            if np.max(np.abs(orientations[group[0]] - iop)) <= ORIENTATION_TOLERANCE:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _distinct(orientations: list[np.ndarray]) -> bool:
    """Whether every two orientations differ by at least :data:`MIN_STACK_ANGLE_DEG` in a direction."""
    limit = np.cos(np.radians(MIN_STACK_ANGLE_DEG))
    for i, a in enumerate(orientations):
        for b in orientations[i + 1 :]:
            cosines = [float(a[k : k + 3] @ b[k : k + 3]) for k in (0, 3)]
            if min(cosines) > limit:
                return False
    return True


def _plane_names(orientations: list[np.ndarray]) -> list[str]:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` for each orientation, numbered when repeated."""
    names = []
    for iop in orientations:
        normal = np.cross(iop[:3], iop[3:])
        axis = int(np.argmax(np.abs(normal)))
        names.append(("sagittal", "coronal", "axial")[axis] if abs(normal[axis]) >= _NAMED_PLANE_COSINE else "oblique")
    counts = {name: names.count(name) for name in names}
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        numbered.append(f"{name} {seen[name]}" if counts[name] > 1 else name)
    return numbered


def _has_duplicates(positions: list[np.ndarray], normal: np.ndarray) -> bool:
    along = np.sort(np.asarray([float(p @ normal) for p in positions]))
    return bool(np.any(np.diff(along) < DUPLICATE_POSITION_TOLERANCE_MM))


def _value(ds: Dataset, keyword: str) -> str:
    """The attribute as comparable text: numbers to six significant digits, ``""`` when absent."""
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    parts = list(value) if isinstance(value, list | tuple) or getattr(value, "VM", 1) > 1 else [value]
    texts = []
    for part in parts:
        try:
            texts.append(f"{float(part):.6g}")
        except (TypeError, ValueError):
            texts.append(str(part).strip())
    return "/".join(texts)


def _values(datasets: Sequence[Dataset]) -> dict[str, list[str]]:
    return {keyword: [_value(ds, keyword) for ds in datasets] for keyword, _ in STACK_ATTRIBUTES}


def _order(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text.split("/")[0]), text)
    except ValueError:
        return (1, 0.0, text)


def _split_positions(items: list[Item], positions: list[np.ndarray], min_slices: int) -> list[Stack]:
    """Step 2 of the rule, for the instances of one orientation."""
    iop = np.asarray([float(v) for v in items[0][1].ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    if not _has_duplicates(positions, normal):
        return [Stack(items)]
    values = _values([ds for _, ds in items])
    varying = [keyword for keyword, _ in STACK_ATTRIBUTES if len(set(values[keyword])) > 1]
    candidates = [(keyword,) for keyword in varying] + ([tuple(varying)] if len(varying) > 1 else [])
    for keywords in candidates:
        parts: dict[tuple[str, ...], list[int]] = {}
        for i in range(len(items)):
            parts.setdefault(tuple(values[k][i] for k in keywords), []).append(i)
        if all(
            len(members) >= min_slices and not _has_duplicates([positions[i] for i in members], normal)
            for members in parts.values()
        ):
            return [
                Stack(
                    [items[i] for i in parts[key]],
                    tuple(zip(keywords, key, strict=True)),
                    ", ".join(_label(keyword, value) for keyword, value in zip(keywords, key, strict=True)),
                )
                for key in sorted(parts, key=lambda key: [_order(v) for v in key])
            ]
    return [Stack(items)]


def _label(keyword: str, value: str) -> str:
    pattern = dict(STACK_ATTRIBUTES)[keyword]
    return pattern.format(value) if value else f"no {keyword}"
