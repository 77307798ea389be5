"""Errors raised by the NS-N2N core."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ShouldStop", "StopRequested", "VolumeError"]

#: The cancellation hook of :func:`nsn2n.denoise_volume`: called once per training step and once per
#: inference batch; returning ``True`` ends the work with :class:`StopRequested`. It must be cheap and
#: thread-safe (e.g. ``threading.Event().is_set``): a host that is asked to stop (SIGTERM from
#: ``docker stop``) cannot interrupt a long torch loop any other way.
ShouldStop = Callable[[], bool]


class VolumeError(ValueError):
    """The input volume cannot be denoised (too few slices, NaNs, constant values, ...)."""


class StopRequested(Exception):
    """The caller's ``should_stop`` hook returned ``True``: the work was abandoned, nothing is returned."""
