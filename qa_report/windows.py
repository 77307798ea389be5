"""Display windows for the QA montage.

Rules (the same window is always used for the *before* and the *after* image, so that a reader compares
like with like):

* **CT**: soft-tissue window W400 / L40, i.e. the fixed range [-160, 240] HU, whatever the data.
* **MR and any other modality**: a percentile window of the *input* (before) volume, from the
  ``MR_PERCENTILES`` (1st .. 99.5th) of its non-padding, finite voxels.
* **Difference** (before - after): a symmetric window [-h, +h] centred on zero (mid grey), with
  ``h = 3 x noise_before`` when a noise estimate of the input is known, else the 99th percentile of
  |before - after| over non-padding voxels.

Everything here is plain numpy; no imaging toolkit is needed.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "CT_SOFT_TISSUE_WINDOW",
    "DIFF_NOISE_FACTOR",
    "DIFF_PERCENTILE",
    "MR_PERCENTILES",
    "describe_difference_window",
    "describe_window",
    "difference_window",
    "display_window",
    "foreground_values",
]

#: CT soft-tissue window (low, high) in HU: width 400, level 40.
CT_SOFT_TISSUE_WINDOW: tuple[float, float] = (-160.0, 240.0)
#: Percentiles (low, high) of the input's non-padding voxels used as the MR (and default) window.
MR_PERCENTILES: tuple[float, float] = (1.0, 99.5)
#: Half-width of the difference window as a multiple of the input noise estimate.
DIFF_NOISE_FACTOR: float = 3.0
#: Percentile of |before - after| used as the difference half-width when no noise estimate is given.
DIFF_PERCENTILE: float = 99.0

# Cap on the number of voxels fed to np.percentile (a strided subsample beyond that; deterministic).
_MAX_SAMPLES = 2_000_000


def _unit(modality: str) -> str:
    return "HU" if modality.strip().upper() == "CT" else "a.u."


def foreground_values(volume: np.ndarray, padding_mask: np.ndarray | None = None) -> np.ndarray:
    """Return the finite, non-padding voxel values of ``volume`` as a flat float64 array.

    ``padding_mask`` (same shape, True = padding, e.g. from the DICOM Pixel Padding Value) is optional.
    Large volumes are subsampled with a fixed stride, so the result is deterministic.
    """
    vol = np.asarray(volume)
    if padding_mask is not None:
        mask = np.asarray(padding_mask, dtype=bool)
        if mask.shape != vol.shape:
            raise ValueError(f"padding_mask shape {mask.shape} does not match volume shape {vol.shape}")
        values = vol[~mask]
    else:
        values = vol.reshape(-1)
    if values.size > _MAX_SAMPLES:
        values = values[:: math.ceil(values.size / _MAX_SAMPLES)]
    values = values.astype(np.float64, copy=False)
    return values[np.isfinite(values)]


def display_window(modality: str, volume: np.ndarray, padding_mask: np.ndarray | None = None) -> tuple[float, float]:
    """Return the display window ``(low, high)`` for the *before* and *after* images.

    Args:
        modality: DICOM Modality (``"CT"``, ``"MR"``, ...), case-insensitive.
        volume: the **input** (before) volume, any shape; CT values must be in HU.
        padding_mask: optional boolean mask (True = padding voxel) of the same shape, ignored voxels.

    Returns:
        ``(-160.0, 240.0)`` for CT; for other modalities the ``MR_PERCENTILES`` of the finite
        non-padding voxels. ``high > low`` is guaranteed (a constant image gets a window of width 1
        around its value; an empty/all-padding volume gets ``(0.0, 1.0)``).
    """
    if modality.strip().upper() == "CT":
        return CT_SOFT_TISSUE_WINDOW
    values = foreground_values(volume, padding_mask)
    if values.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    if not high > low:
        return (low - 0.5, low + 0.5)
    return (low, high)


def difference_window(
    before: np.ndarray,
    after: np.ndarray,
    padding_mask: np.ndarray | None = None,
    noise_before: float | None = None,
) -> tuple[float, float]:
    """Return the symmetric window ``(-h, +h)`` for the difference image ``before - after``.

    ``h = DIFF_NOISE_FACTOR * noise_before`` when ``noise_before`` is a positive finite number, else the
    ``DIFF_PERCENTILE`` of ``|before - after|`` over finite non-padding voxels; ``h`` falls back to 1.0
    when that is zero (identical images).
    """
    if noise_before is not None and math.isfinite(noise_before) and noise_before > 0:
        half = DIFF_NOISE_FACTOR * float(noise_before)
    else:
        diff = np.asarray(before, dtype=np.float64) - np.asarray(after, dtype=np.float64)
        values = np.abs(foreground_values(diff, padding_mask))
        half = float(np.percentile(values, DIFF_PERCENTILE)) if values.size else 0.0
    if not (math.isfinite(half) and half > 0):
        half = 1.0
    return (-half, half)


def _fmt(value: float, scale: float | None = None) -> str:
    """Compact number for window labels; decimals chosen from ``scale`` (default: the value itself)."""
    ref = abs(value) if scale is None else abs(scale)
    if abs(value - round(value)) < 1e-9 or ref >= 50:
        return f"{value:.0f}"
    if ref >= 5:
        return f"{value:.1f}"
    return f"{value:.3g}"


def describe_window(modality: str, window: tuple[float, float]) -> str:
    """Human-readable label of a display window, e.g. ``"W 400  L 40 HU  [-160, 240]"``."""
    low, high = window
    unit = _unit(modality)
    width, level = high - low, (high + low) / 2.0
    return f"W {_fmt(width)}  L {_fmt(level, width)} {unit}  [{_fmt(low, width)}, {_fmt(high, width)}]"


def describe_difference_window(modality: str, window: tuple[float, float], noise_based: bool) -> str:
    """Label of the symmetric difference window, e.g. ``"+/-45 HU (3 x noise)"``."""
    half = window[1]
    how = f"{DIFF_NOISE_FACTOR:g} x noise" if noise_based else f"p{DIFF_PERCENTILE:g} |diff|"
    return f"+/-{_fmt(half)} {_unit(modality)}  ({how})"
