"""Training NS-N2N on the one volume it will denoise.

Each step draws ``batch_size`` neighbouring pairs (x_i, x_{i+1}) with random crops placed on the
foreground (a crop of pure air or padding teaches nothing), applies the same random flip/rot90 to the
pair, its weight map and its valid mask, and minimises :func:`nsn2n.losses.nsn2n_loss`. The three
network evaluations f(x_a), f(x_b), f((x_a+x_b)/2) run as one batch.

Optimiser: AdamW with a linear warm-up over the first 3 % of the budget and a cosine decay to 5 % of
the learning rate. The schedule follows the larger of the step fraction and the elapsed fraction of the
wall-clock budget, so a run cut short by ``time_budget_s`` still ends with a small learning rate.

Divergence guard: a network without normalisation layers trained with Adam can blow up in one step
(measured: the benchmark's supervised oracle on the full-size lung1 CT jumped from a loss of 6e-4 to
above 1e3 within 17 steps, twice in two runs, and ended no better than its input). Every
``_SNAPSHOT_EVERY`` steps the model and optimiser state that produced a sane loss is kept in memory; a
loss that is not finite or exceeds ``_SPIKE_FACTOR`` times the running average restores that state and
halves the learning rate for the rest of the run (at most ``_MAX_ROLLBACKS`` times, then
:class:`FloatingPointError`). A run that never spikes is bit-for-bit what it was without the guard.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import DenoiseConfig
from .losses import nsn2n_loss
from .progress import ProgressLog

__all__ = ["PairSampler", "TrainingStats", "nsn2n_step", "supervised_step", "train_network"]

log = logging.getLogger(__name__)

_FOREGROUND_LEVEL = 0.1  # network units above the fill value that count as "something to denoise"
_MIN_FOREGROUND = 0.25  # a crop with less foreground than this is redrawn (up to a few times)
_SNAPSHOT_EVERY = 25  # steps between in-memory snapshots for the divergence guard
_SPIKE_FACTOR = 20.0  # a batch loss this many times the running average means the network diverged
_SPIKE_MIN_STEPS = 20  # the running average needs this many steps before it can judge a spike
_MAX_ROLLBACKS = 5


@dataclass
class Batch:
    """One training batch of (B, 1, c, c) crops."""

    x_a: torch.Tensor
    x_b: torch.Tensor
    weight: torch.Tensor
    valid: torch.Tensor


class PairSampler:
    """Draws augmented random crops of neighbouring slice pairs.

    Args:
        volume: (D, H, W) normalised float tensor (on the training device).
        weights: (D-1, H, W) bool weight maps, or ``None`` for plain neighbour Noise2Noise.
        valid: (D, H, W) bool, False for padding.
        crop_size: crop side; clipped to the shorter side of the slice (crops stay square).
        fill: normalised fill value of padding (foreground = differs from it).
        seed: seed of the sampling generator.
        target: optional (D, H, W) clean volume: then ``x_b`` is the clean version of ``x_a`` (the
            supervised oracle of the benchmark) and weights are ignored.
    """

    def __init__(
        self,
        volume: torch.Tensor,
        weights: torch.Tensor | None,
        valid: torch.Tensor,
        *,
        crop_size: int,
        fill: float,
        seed: int,
        target: torch.Tensor | None = None,
    ) -> None:
        self.volume = volume
        self.weights = weights
        self.valid = valid
        self.target = target
        side = min(crop_size, volume.shape[1], volume.shape[2])  # square: rot90 must keep the shape
        self.crop = (side, side)
        self.foreground = valid & ((volume - fill).abs() > _FOREGROUND_LEVEL)
        self.rng = np.random.default_rng(seed)
        depth = volume.shape[0]
        self.n_items = depth if target is not None else depth - 1

    def _crop_origin(self, index: int) -> tuple[int, int]:
        ch, cw = self.crop
        h, w = self.volume.shape[1:]
        best, best_fraction = (0, 0), -1.0
        for _ in range(6):
            y = int(self.rng.integers(0, h - ch + 1))
            x = int(self.rng.integers(0, w - cw + 1))
            fraction = float(self.foreground[index, y : y + ch, x : x + cw].float().mean())
            if fraction >= _MIN_FOREGROUND:
                return y, x
            if fraction > best_fraction:
                best, best_fraction = (y, x), fraction
        return best

    def sample(self, batch_size: int) -> Batch:
        ch, cw = self.crop
        items = []
        for _ in range(batch_size):
            i = int(self.rng.integers(0, self.n_items))
            y, x = self._crop_origin(i)
            window = (slice(y, y + ch), slice(x, x + cw))
            if self.target is not None:
                a = self.volume[i][window]
                b = self.target[i][window]
                valid = self.valid[i][window]
                weight = valid
            else:
                a, b = self.volume[i][window], self.volume[i + 1][window]
                valid = self.valid[i][window] & self.valid[i + 1][window]
                weight = self.weights[i][window] if self.weights is not None else valid
                if self.rng.integers(0, 2):
                    a, b = b, a
            stack = torch.stack([a, b, weight.to(a.dtype), valid.to(a.dtype)])
            stack = torch.rot90(stack, int(self.rng.integers(0, 4)), dims=(1, 2))
            if self.rng.integers(0, 2):
                stack = stack.flip(2)
            items.append(stack)
        batch = torch.stack(items)  # (B, 4, c, c)
        return Batch(batch[:, 0:1], batch[:, 1:2], batch[:, 2:3] > 0.5, batch[:, 3:4] > 0.5)


@dataclass
class TrainingStats:
    """What happened during training (for the run record)."""

    steps: int = 0
    stopped_by: str = "max_steps"
    seconds: float = 0.0
    final_loss: float = float("nan")
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    rollbacks: int = 0  # divergences undone by the guard (module docstring)


StepFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


def nsn2n_step(config: DenoiseConfig) -> StepFn:
    """The NS-N2N loss for one batch: f on x_a, x_b and their mean in one forward pass."""

    def step(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mid = 0.5 * (batch.x_a + batch.x_b)
        out = model(torch.cat([batch.x_a, batch.x_b, mid])).float()
        f_a, f_b, f_mid = out.chunk(3)
        terms = nsn2n_loss(
            f_a,
            f_b,
            f_mid,
            batch.x_a,
            batch.x_b,
            batch.weight,
            batch.valid,
            lambda_rc=config.lambda_rc,
            lambda_ic=config.lambda_ic,
        )
        return terms.total, {"recon": terms.recon, "rc": terms.rc, "ic": terms.ic}

    return step


def supervised_step(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain MSE to the clean target (the benchmark's supervised oracle)."""
    out = model(batch.x_a).float()
    mask = batch.valid.to(out.dtype)
    loss = (mask * (out - batch.x_b) ** 2).sum() / mask.sum().clamp_min(1.0)
    return loss, {}


def _learning_rate(base: float, progress: float) -> float:
    warmup = 0.03
    if progress < warmup:
        return base * max(progress / warmup, 0.05)
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def train_network(
    model: torch.nn.Module,
    sampler: PairSampler,
    step_fn: StepFn,
    config: DenoiseConfig,
    *,
    steps: int,
    device: torch.device,
    label: str = "train",
) -> TrainingStats:
    """Optimise ``model`` for ``steps`` steps or until the configured wall-clock budget is spent."""
    stats = TrainingStats()
    if steps <= 0:
        stats.stopped_by = "no_training"
        return stats
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    amp = device.type == "cuda" and config.mixed_precision
    time_cap = config.training_time_cap
    history_every = max(1, steps // 100)
    progress = ProgressLog(label, total=steps, every_s=config.log_every_s, time_cap_s=time_cap)
    model.train()
    start = time.monotonic()
    ema = None
    lr_scale = 1.0
    snapshot: tuple[dict, dict, float | None] | None = None
    for step in range(1, steps + 1):
        elapsed = time.monotonic() - start
        fraction = (step - 1) / steps
        if time_cap:
            if elapsed >= time_cap:
                stats.stopped_by = "time_budget"
                break
            fraction = max(fraction, elapsed / time_cap)
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(config.learning_rate, fraction) * lr_scale
        batch = sampler.sample(config.batch_size)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, parts = step_fn(model, batch)
        value = float(loss.detach())
        diverged = not math.isfinite(value) or (
            ema is not None and step > _SPIKE_MIN_STEPS and value > _SPIKE_FACTOR * ema
        )
        if diverged:
            if snapshot is None or stats.rollbacks >= _MAX_ROLLBACKS:
                raise FloatingPointError(
                    f"{label}: training diverged (loss {value:.4g}"
                    + ("" if ema is None else f", running average {ema:.4g}")
                    + f") at step {step}"
                    + (f" after {stats.rollbacks} rollbacks" if stats.rollbacks else "")
                )
            model_state, optimiser_state, ema = snapshot
            model.load_state_dict(model_state)
            optimiser.load_state_dict(optimiser_state)
            lr_scale *= 0.5
            stats.rollbacks += 1
            log.warning(
                "%s: loss %.4g at step %d is %s the running average %.4g: the network diverged; "
                "restored the state of %d steps earlier or less, learning rate now x%g",
                label,
                value,
                step,
                "not finite against" if not math.isfinite(value) else f"{value / ema:.0f}x",
                ema,
                _SNAPSHOT_EVERY,
                lr_scale,
            )
            continue
        if step % _SNAPSHOT_EVERY == 0:  # this state just produced a sane loss: keep it
            snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimiser.state_dict()), ema)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        stats.steps = step
        if step % history_every == 0 or step == steps:
            stats.loss_history.append((step, ema))
        progress.update(step, loss=ema, parts=parts)
    stats.seconds = time.monotonic() - start
    stats.final_loss = float(ema) if ema is not None else float("nan")
    progress.finish(stats.steps, loss=stats.final_loss, stopped_by=stats.stopped_by)
    model.eval()
    return stats
