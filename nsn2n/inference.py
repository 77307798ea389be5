"""Inference: run the trained network on every slice, in memory-bounded batches.

A network with context (``in_channels = 2c + 1``) gets each slice with its ``c`` neighbours on either
side, mirrored at the volume's ends exactly as in training (:func:`nsn2n.training.context_indices`).
Memory beyond the input and output volumes is ``inference_batch`` slices (times ``2c + 1`` channels)
on the device (times 8 with the flip/rotation self-ensemble, which is computed one transform at a time).
Precision and layout follow :mod:`nsn2n.precision`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import ShouldStop, StopRequested
from .precision import autocast, channels_last
from .progress import ProgressLog
from .training import context_indices

__all__ = ["context_stack", "denoise_slices", "network_context"]


def _transforms() -> list[tuple[int, bool]]:
    return [(k, flip) for flip in (False, True) for k in range(4)]


def network_context(model: torch.nn.Module) -> int:
    """Neighbouring slices on either side that ``model`` reads (0 for a single-slice network)."""
    return int(getattr(model, "in_channels", 1)) // 2


def context_stack(volume: np.ndarray, indices: Sequence[int], context: int) -> np.ndarray:
    """``(len(indices), 2 context + 1, H, W)`` float32: each slice with its mirrored neighbours."""
    depth = volume.shape[0]
    picks = [context_indices(i, depth, context) for i in indices]
    return np.ascontiguousarray(volume[np.asarray(picks)], dtype=np.float32)


@torch.inference_mode()
def denoise_slices(
    model: torch.nn.Module,
    volume: np.ndarray,
    *,
    device: torch.device,
    batch: int,
    self_ensemble: bool = False,
    mixed_precision: bool = True,
    log_every_s: float = 5.0,
    should_stop: ShouldStop | None = None,
    slices: Sequence[int] | None = None,
) -> np.ndarray:
    """Apply ``model`` to each slice of ``volume`` (D, H, W) float32 (with its context slices, if the
    network reads any); returns float32 (D, H, W), or (len(slices), H, W) for the given ``slices`` only
    (their context is read from ``volume`` all the same).

    ``should_stop`` (:data:`nsn2n.errors.ShouldStop`) is asked before every batch; :class:`StopRequested`
    when it says so.
    """
    model.eval()
    wanted = list(range(volume.shape[0])) if slices is None else [int(z) for z in slices]
    total = len(wanted)
    out = np.empty((total, *volume.shape[1:]), dtype=np.float32)
    context = network_context(model)
    progress = ProgressLog("inference", total=total, every_s=log_every_s)
    transforms = _transforms() if self_ensemble else [(0, False)]
    for start in range(0, total, batch):
        if should_stop is not None and should_stop():
            raise StopRequested(f"inference: stopped before slice {start + 1} of {total}")
        x = torch.from_numpy(context_stack(volume, wanted[start : start + batch], context)).to(device)
        acc = torch.zeros_like(x[:, :1], dtype=torch.float32)
        for k, flip in transforms:
            t = torch.rot90(x, k, dims=(2, 3))
            if flip:
                t = t.flip(3)
            with autocast(device, mixed_precision):
                y = model(channels_last(t)).float()
            if flip:
                y = y.flip(3)
            acc += torch.rot90(y, -k, dims=(2, 3))
        out[start : start + batch] = (acc / len(transforms))[:, 0].cpu().numpy()
        progress.update(min(start + batch, total))
    return out
