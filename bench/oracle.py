"""The benchmark's supervised oracle: NS-N2N's network and budget trained with the clean volume as target.

It is the ceiling the self-supervised method is measured against, so it lives here and not in the
product: the application never has a clean volume. It reuses the library's pieces (normalisation,
network, sampler, training loop with its divergence guard, inference) so that only the target differs.
No residual clip is applied: the clip is a safeguard for the self-supervised model, and the ceiling
should show what the network can do when it is told the truth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nsn2n import DenoiseConfig
from nsn2n.api import check_spacing, infer_slices, prepare_volume, seed_torch, select_device, to_input_units
from nsn2n.training import Batch, PairSampler, TrainingStats, train_network
from nsn2n.unet import ResidualUNet

__all__ = ["OracleResult", "SupervisedPairSampler", "fit_supervised_oracle", "supervised_step"]


class SupervisedPairSampler(PairSampler):
    """Crops of (noisy slice, its clean version): ``x_b`` is the clean target of ``x_a``.

    Args:
        volume: (D, H, W) normalised noisy volume.
        target: (D, H, W) normalised clean volume.
        valid: (D, H, W) bool, False for padding.
        crop_size, fill, seed: as for :class:`nsn2n.training.PairSampler`.
    """

    def __init__(
        self, volume: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, crop_size: int, fill: float, seed: int
    ) -> None:
        super().__init__(volume, None, valid, crop_size=crop_size, fill=fill, seed=seed)
        self.target = target
        self.n_items = volume.shape[0]  # every slice, not pairs

    def pair(self, index: int, window: tuple[slice, slice]) -> tuple[torch.Tensor, ...]:
        """``(noisy, clean, valid, valid)`` crops of slice ``index``; the loss is taken on valid pixels."""
        valid = self.valid[index][window]
        return self.volume[index][window], self.target[index][window], valid, valid


def supervised_step(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain MSE to the clean target over the valid pixels."""
    out = model(batch.x_a).float()
    mask = batch.valid.to(out.dtype)
    loss = (mask * (out - batch.x_b) ** 2).sum() / mask.sum().clamp_min(1.0)
    return loss, {}


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
    """Train the NS-N2N network on ``noisy`` with ``clean`` as target and denoise ``noisy`` with it."""
    config = config or DenoiseConfig()
    modality = modality.upper()
    check_spacing(spacing, config)
    device = select_device(config.device)
    seed_torch(config)
    valid, normalizer, normalised = prepare_volume(noisy, None, modality)
    clean_norm = normalizer.normalize(clean)
    network = ResidualUNet(config.unet_width, config.unet_depth).to(device)
    t = time.monotonic()
    sampler = SupervisedPairSampler(
        torch.from_numpy(normalised).to(device),
        torch.from_numpy(clean_norm).to(device),
        torch.from_numpy(valid).to(device),
        crop_size=config.crop_size,
        fill=float(normalizer.normalised_fill),
        seed=config.seed,
    )
    stats = train_network(
        network, sampler, supervised_step, config, steps=config.max_steps, device=device, label="oracle"
    )
    out = infer_slices(network, normalised, device, config)
    denoised = to_input_units(normalizer, out, noisy, valid, modality)
    return OracleResult(denoised, str(device), stats, time.monotonic() - t)
