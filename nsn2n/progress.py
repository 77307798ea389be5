"""Progress lines for long work, readable in a container log (plain lines, no carriage returns).

A line is written at most every ``every_s`` seconds (and at the end), with step/total, loss, elapsed
time and the estimated time left, e.g.::

    train: step 240/400 (60%) loss 0.004213 [recon 0.0031 rc 0.0004 ic 0.0001] elapsed 0:01:10 ETA 0:06:08
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

__all__ = ["ProgressLog", "format_duration"]

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for a number of seconds."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLog:
    """Rate-limited progress logging with an ETA.

    Args:
        label: what is progressing ("train", "inference").
        total: number of steps planned.
        every_s: minimum seconds between two lines.
        time_cap_s: a wall-clock cap that bounds the ETA, or ``None``.
    """

    def __init__(self, label: str, total: int, every_s: float = 5.0, time_cap_s: float | None = None) -> None:
        self.label = label
        self.total = total
        self.every_s = every_s
        self.time_cap_s = time_cap_s
        self.start = time.monotonic()
        self.last = self.start

    def eta(self, done: int) -> float:
        elapsed = time.monotonic() - self.start
        remaining = elapsed / max(done, 1) * (self.total - done)
        if self.time_cap_s:
            remaining = min(remaining, max(self.time_cap_s - elapsed, 0.0))
        return remaining

    def update(self, done: int, *, loss: float | None = None, parts: Mapping[str, float] | None = None) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        text = f"{self.label}: step {done}/{self.total} ({100 * done // max(self.total, 1)}%)"
        if loss is not None:
            text += f" loss {loss:.6f}"
        if parts:
            text += " [" + " ".join(f"{k} {v:.4g}" for k, v in parts.items()) + "]"
        text += f" elapsed {format_duration(now - self.start)} ETA {format_duration(self.eta(done))}"
        log.info(text)

    def finish(self, done: int, *, loss: float | None = None, stopped_by: str = "") -> None:
        text = f"{self.label}: done, {done} steps in {format_duration(time.monotonic() - self.start)}"
        if loss is not None:
            text += f", final loss {loss:.6f}"
        if stopped_by:
            text += f", stopped by {stopped_by}"
        log.info(text)
