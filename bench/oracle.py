"""The benchmark's supervised oracle: NS-N2N's network and budget trained with the clean volume as target.

It is the ceiling the self-supervised method is measured against, so it lives here and not in the
product: the application never has a clean volume. It reuses the library's pieces (normalisation,
network, crop placement, training loop with its divergence guard, inference) so that only the target
differs: the network reads what the configured one reads (the slice and ``context_slices`` neighbours
on either side for the default ``"recorrupted"`` formulation, the slice alone for ``"paper"``), without
synthetic noise, and learns the clean slice. No residual clip is applied: the clip is a safeguard for
the self-supervised model, and the ceiling should show what the network can do when it is told the truth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nsn2n import DenoiseConfig
from nsn2n.api import check_spacing, infer_slices, prepare_volume, seed_torch, select_device, to_input_units
from nsn2n.training import (
    RecorruptedBatch,
    TrainingStats,
    augmented_batch,
    context_indices,
    draw_crops,
    foreground_mask,
    recorrupted_step,
    train_network,
)
from nsn2n.unet import ResidualUNet

__all__ = ["OracleResult", "SupervisedContextSampler", "fit_supervised_oracle"]


class SupervisedContextSampler:
    """Crops of (a noisy slice with its ``context`` neighbours on either side, its clean version).

    The same crop placement (on the foreground) and augmentation (one rot90 and flip per item) as
    :class:`nsn2n.training.RecorruptedSampler`, neighbours mirrored at the ends as there; the batch is a
    :class:`nsn2n.training.RecorruptedBatch` whose target is the clean slice, for
    :func:`nsn2n.training.recorrupted_step` (masked MSE).

    Args:
        volume: (D, H, W) normalised noisy volume.
        target: (D, H, W) normalised clean volume.
        valid: (D, H, W) bool, False for padding.
        context: neighbours on either side in the input.
        crop_size, fill, seed: as for :class:`nsn2n.training.RecorruptedSampler`.
    """

    def __init__(
        self,
        volume: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        *,
        context: int,
        crop_size: int,
        fill: float,
        seed: int,
    ) -> None:
        self.volume, self.target, self.valid, self.context = volume, target, valid, context
        side = min(crop_size, volume.shape[1], volume.shape[2])
        self.crop = (side, side)
        self.foreground = foreground_mask(volume, valid, fill)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> RecorruptedBatch:
        depth = self.volume.shape[0]
        items = []
        for i, ys, xs in draw_crops(self.foreground, self.crop, batch_size, self.rng):
            channels = [self.volume[j, ys, xs] for j in context_indices(i, depth, self.context)]
            valid = self.valid[i, ys, xs].to(self.volume.dtype)
            items.append(torch.stack([*channels, self.target[i, ys, xs], valid]))
        return augmented_batch(items, self.context, self.rng)


@dataclass(frozen=True, eq=False)
class OracleResult:
    """Output of :func:`fit_supervised_oracle`.

    Attributes:
        denoised: float32 (D, H, W) in the input's units.
        device: torch device it trained on.
        training: what training did.
        seconds: training and inference, wall clock.
    """

    denoised: np.ndarray
    device: str
    training: TrainingStats
    seconds: float


def fit_supervised_oracle(
    noisy: np.ndarray,
    clean: np.ndarray,
    spacing: Sequence[float],
    modality: str = "CT",
    config: DenoiseConfig | None = None,
) -> OracleResult:
    """Train the configured NS-N2N network on ``noisy`` with ``clean`` as target and denoise ``noisy`` with it."""
    config = config or DenoiseConfig()
    modality = modality.upper()
    check_spacing(spacing, config)
    device = select_device(config.device)
    seed_torch(config)
    valid, normalizer, normalised = prepare_volume(noisy, None, modality)
    clean_norm = normalizer.normalize(clean)
    context = config.input_context
    network = ResidualUNet(config.unet_width, config.unet_depth, in_channels=2 * context + 1).to(device)
    t = time.monotonic()
    sampler = SupervisedContextSampler(
        torch.from_numpy(normalised).to(device),
        torch.from_numpy(clean_norm).to(device),
        torch.from_numpy(valid).to(device),
        context=context,
        crop_size=config.crop_size,
        fill=float(normalizer.normalised_fill),
        seed=config.seed,
    )
    stats = train_network(
        network, sampler, recorrupted_step, config, steps=config.max_steps, device=device, label="oracle"
    )
    out = infer_slices(network, normalised, device, config, modality)
    denoised = to_input_units(normalizer, out, noisy, valid, modality)
    return OracleResult(denoised, str(device), stats, time.monotonic() - t)
