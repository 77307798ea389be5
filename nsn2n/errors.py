"""Errors raised by the NS-N2N core."""

from __future__ import annotations

__all__ = ["VolumeError"]


class VolumeError(ValueError):
    """The input volume cannot be denoised (too few slices, NaNs, constant values, ...)."""
