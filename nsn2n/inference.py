"""Inference: run the trained 2-D network on every slice, in memory-bounded batches.

Memory beyond the input and output volumes is ``inference_batch`` slices on the device (times 8 with
the flip/rotation self-ensemble, which is computed one transform at a time).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ShouldStop, StopRequested
from .progress import ProgressLog

__all__ = ["denoise_slices"]


def _transforms() -> list[tuple[int, bool]]:
    return [(k, flip) for flip in (False, True) for k in range(4)]


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
) -> np.ndarray:
    """Apply ``model`` to each slice of ``volume`` (D, H, W) float32; returns float32 (D, H, W).

    ``should_stop`` (:data:`nsn2n.errors.ShouldStop`) is asked before every batch; :class:`StopRequested`
    when it says so.
    """
    model.eval()
    depth = volume.shape[0]
    out = np.empty_like(volume, dtype=np.float32)
    amp = device.type == "cuda" and mixed_precision
    progress = ProgressLog("inference", total=depth, every_s=log_every_s)
    transforms = _transforms() if self_ensemble else [(0, False)]
    for start in range(0, depth, batch):
        if should_stop is not None and should_stop():
            raise StopRequested(f"inference: stopped before slice {start + 1} of {depth}")
        x = torch.from_numpy(np.ascontiguousarray(volume[start : start + batch], dtype=np.float32))
        x = x.to(device).unsqueeze(1)
        acc = torch.zeros_like(x, dtype=torch.float32)
        for k, flip in transforms:
            t = torch.rot90(x, k, dims=(2, 3))
            if flip:
                t = t.flip(3)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                y = model(t).float()
            if flip:
                y = y.flip(3)
            acc += torch.rot90(y, -k, dims=(2, 3))
        out[start : start + batch] = (acc / len(transforms))[:, 0].cpu().numpy()
        progress.update(min(start + batch, depth))
    return out
