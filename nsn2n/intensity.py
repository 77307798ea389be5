"""Intensity handling: one affine normalisation per volume, exactly invertible.

Decision (the paper does not say): the network sees ``(x - offset) / scale`` with

* CT (Hounsfield units, the caller has applied RescaleSlope/Intercept): ``offset = -1000`` (air),
  ``scale = 1000``, so air is 0 and water 1. A fixed HU map (not a display window) keeps every tissue,
  bone and metal in range, and the same map for every CT makes a saved model reusable across series.
* MR and other modalities (arbitrary units): ``offset = 0`` for magnitude data (minimum >= 0), else the
  0.5th percentile; ``scale`` = the 99.5th percentile of the non-padding foreground minus the offset.

Padding / outside-field-of-view pixels (``PixelPaddingValue``) are replaced by a neutral fill value
(air for CT, the offset otherwise) while training and inferring, and restored bit-exactly afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IntensityNormalizer", "output_range"]

CT_OFFSET_HU = -1000.0
CT_SCALE_HU = 1000.0


@dataclass(frozen=True)
class IntensityNormalizer:
    """Affine map between input units and the network's units.

    Attributes:
        offset: input value mapped to 0.
        scale: input units per network unit (> 0).
        fill_value: input value that replaces padding pixels during processing.
    """

    offset: float
    scale: float
    fill_value: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"IntensityNormalizer.scale must be positive, got {self.scale}")

    @classmethod
    def for_volume(cls, volume: np.ndarray, modality: str, valid: np.ndarray | None = None) -> IntensityNormalizer:
        """Choose the normalisation for ``volume`` (see the module docstring for the rule)."""
        if modality.upper() == "CT":
            return cls(offset=CT_OFFSET_HU, scale=CT_SCALE_HU, fill_value=CT_OFFSET_HU)
        sample = _sample(volume, valid)
        lo = float(np.percentile(sample, 0.5))
        offset = 0.0 if float(sample.min()) >= 0 else lo
        foreground = sample[sample > offset]
        hi = float(np.percentile(foreground, 99.5)) if foreground.size else float(sample.max())
        scale = hi - offset
        if not np.isfinite(scale) or scale <= 0:
            scale = max(float(sample.max()) - offset, 1.0)
        return cls(offset=offset, scale=scale, fill_value=offset)

    @property
    def normalised_fill(self) -> float:
        """The fill value in network units: what padding pixels hold in :meth:`normalize`'s output."""
        return (self.fill_value - self.offset) / self.scale

    def normalize(self, volume: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Return float32 network units; padding pixels (``valid == False``) get the fill value."""
        out = (volume.astype(np.float32) - np.float32(self.offset)) / np.float32(self.scale)
        if valid is not None:
            out[~valid] = np.float32(self.normalised_fill)
        return out

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize` (float32, input units)."""
        return values.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)

    def as_dict(self) -> dict[str, float]:
        return {"offset": self.offset, "scale": self.scale, "fill_value": self.fill_value}


def output_range(volume: np.ndarray, modality: str) -> tuple[float, float]:
    """Range the denoised values are clipped to: the input dtype's range, and >= 0 for magnitude MR."""
    if np.issubdtype(volume.dtype, np.integer):
        info = np.iinfo(volume.dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = -np.inf, np.inf
    if modality.upper() != "CT" and float(volume.min()) >= 0:
        lo = max(lo, 0.0)
    return lo, hi


def _sample(volume: np.ndarray, valid: np.ndarray | None, limit: int = 2_000_000) -> np.ndarray:
    values = volume[valid] if valid is not None else volume.reshape(-1)
    if values.size > limit:
        values = values[:: values.size // limit + 1]
    return values.astype(np.float64)
