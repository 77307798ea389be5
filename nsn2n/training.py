"""Training NS-N2N on the one volume it will denoise.

Each step draws ``batch_size`` neighbouring pairs (x_i, x_{i+1}) with random crops placed on the
foreground (a crop of pure air or padding teaches nothing), applies the same random flip/rot90 to the
pair, its weight map and its valid mask, and minimises :func:`nsn2n.losses.nsn2n_loss`. The three
network evaluations f(x_a), f(x_b), f((x_a+x_b)/2) run as one batch.

Optimiser: AdamW with a linear warm-up over the first 3 % of the budget and a cosine decay to 5 % of
the learning rate. The schedule follows the larger of the step fraction and the elapsed fraction of the
wall-clock budget, so a run cut short by ``time_budget_s`` still ends with a small learning rate.

Divergence guard (:class:`DivergenceGuard`): a network without normalisation layers trained with Adam
can blow up in one step, after which the run is lost. Every ``_SNAPSHOT_EVERY`` steps the model and
optimiser state that produced a sane loss is kept in memory; a loss that is not finite or exceeds
``_SPIKE_FACTOR`` times the running average restores that state and halves the learning rate for the
rest of the run (at most ``_MAX_ROLLBACKS`` times, then :class:`FloatingPointError`). A run that never
spikes is bit-for-bit what it would be without the guard.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import DenoiseConfig
from .errors import ShouldStop, StopRequested
from .losses import nsn2n_loss
from .progress import ProgressLog

__all__ = ["Batch", "DivergenceGuard", "PairSampler", "StepFn", "TrainingStats", "nsn2n_step", "train_network"]

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
    ) -> None:
        self.volume = volume
        self.weights = weights
        self.valid = valid
        side = min(crop_size, volume.shape[1], volume.shape[2])  # square: rot90 must keep the shape
        self.crop = (side, side)
        self.foreground = valid & ((volume - fill).abs() > _FOREGROUND_LEVEL)
        self.rng = np.random.default_rng(seed)
        self.n_items = volume.shape[0] - 1  # pairs (i, i+1)

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

    def pair(self, index: int, window: tuple[slice, slice]) -> tuple[torch.Tensor, ...]:
        """``(x_a, x_b, weight, valid)`` crops of item ``index``: the pair (i, i+1) in random order."""
        a, b = self.volume[index][window], self.volume[index + 1][window]
        valid = self.valid[index][window] & self.valid[index + 1][window]
        weight = self.weights[index][window] if self.weights is not None else valid
        if self.rng.integers(0, 2):
            a, b = b, a
        return a, b, weight, valid

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` items, each with the same random rot90 and flip on its four crops."""
        ch, cw = self.crop
        items = []
        for _ in range(batch_size):
            i = int(self.rng.integers(0, self.n_items))
            y, x = self._crop_origin(i)
            a, b, weight, valid = self.pair(i, (slice(y, y + ch), slice(x, x + cw)))
            stack = torch.stack([a, b, weight.to(a.dtype), valid.to(a.dtype)])
            stack = torch.rot90(stack, int(self.rng.integers(0, 4)), dims=(1, 2))
            if self.rng.integers(0, 2):
                stack = stack.flip(2)
            items.append(stack)
        batch = torch.stack(items)  # (B, 4, c, c)
        return Batch(batch[:, 0:1], batch[:, 1:2], batch[:, 2:3] > 0.5, batch[:, 3:4] > 0.5)


@dataclass(frozen=True)
class TrainingStats:
    """What happened during training.

    Attributes:
        steps: optimiser steps taken (steps undone by the divergence guard do not count).
        stopped_by: ``"max_steps"``, ``"time_budget"`` or ``"no_training"``.
        seconds: wall-clock time of the loop.
        final_loss: running average of the loss at the end; NaN without training.
        loss_history: ``(step, running average)`` at about 100 evenly spaced steps.
        rollbacks: divergences undone by :class:`DivergenceGuard`.
    """

    steps: int = 0
    stopped_by: str = "max_steps"
    seconds: float = 0.0
    final_loss: float = float("nan")
    loss_history: tuple[tuple[int, float], ...] = ()
    rollbacks: int = 0


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


def _learning_rate(base: float, progress: float) -> float:
    warmup = 0.03
    if progress < warmup:
        return base * max(progress / warmup, 0.05)
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


class DivergenceGuard:
    """Undoes a training step whose loss blew up (see the module docstring for the rule and its reason).

    It also keeps the running average of the loss (an exponential moving average, weight 0.05), which
    is what it judges a spike against and what the progress log and the loss history show.

    Args:
        model: the network being trained.
        optimiser: its optimiser.
        label: name of the training run in log lines and errors.
    """

    def __init__(self, model: torch.nn.Module, optimiser: torch.optim.Optimizer, label: str) -> None:
        self.model = model
        self.optimiser = optimiser
        self.label = label
        self.running_loss: float | None = None
        self.rollbacks = 0
        self.lr_scale = 1.0
        self._snapshot: tuple[dict, dict, float | None] | None = None

    def diverged(self, value: float, step: int) -> bool:
        """Whether the loss ``value`` of ``step`` is not finite or a spike against the running average."""
        return not math.isfinite(value) or (
            self.running_loss is not None and step > _SPIKE_MIN_STEPS and value > _SPIKE_FACTOR * self.running_loss
        )

    def roll_back(self, value: float, step: int) -> None:
        """Restore the last snapshot and halve the learning rate.

        Raises:
            FloatingPointError: there is no snapshot yet, or the run has diverged too often.
        """
        ema = self.running_loss
        if self._snapshot is None or self.rollbacks >= _MAX_ROLLBACKS:
            raise FloatingPointError(
                f"{self.label}: training diverged (loss {value:.4g}"
                + ("" if ema is None else f", running average {ema:.4g}")
                + f") at step {step}"
                + (f" after {self.rollbacks} rollbacks" if self.rollbacks else "")
            )
        model_state, optimiser_state, self.running_loss = self._snapshot
        self.model.load_state_dict(model_state)
        self.optimiser.load_state_dict(optimiser_state)
        self.lr_scale *= 0.5
        self.rollbacks += 1
        log.warning(
            "%s: loss %.4g at step %d is %s the running average %.4g: the network diverged; "
            "restored the state of %d steps earlier or less, learning rate now x%g",
            self.label,
            value,
            step,
            "not finite against" if not math.isfinite(value) else f"{value / self.running_loss:.0f}x",
            self.running_loss,
            _SNAPSHOT_EVERY,
            self.lr_scale,
        )

    def keep(self, step: int) -> None:
        """Before the optimiser step of a sane ``step``: every ``_SNAPSHOT_EVERY`` steps, keep the state."""
        if step % _SNAPSHOT_EVERY == 0:
            self._snapshot = (
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.optimiser.state_dict()),
                self.running_loss,
            )

    def accept(self, value: float) -> None:
        """Fold the loss of a step that was taken into the running average."""
        self.running_loss = value if self.running_loss is None else 0.95 * self.running_loss + 0.05 * value


def _budget_fraction(step: int, steps: int, elapsed: float, time_cap: float | None) -> float | None:
    """Fraction of the training budget spent before ``step``; ``None`` when the time cap is reached."""
    fraction = (step - 1) / steps
    if time_cap:
        if elapsed >= time_cap:
            return None
        fraction = max(fraction, elapsed / time_cap)
    return fraction


def train_network(
    model: torch.nn.Module,
    sampler: PairSampler,
    step_fn: StepFn,
    config: DenoiseConfig,
    *,
    steps: int,
    device: torch.device,
    label: str = "train",
    should_stop: ShouldStop | None = None,
) -> TrainingStats:
    """Optimise ``model`` for ``steps`` steps or until the configured wall-clock budget is spent.

    ``should_stop`` (:data:`nsn2n.errors.ShouldStop`) is asked before every step; :class:`StopRequested`
    when it says so.
    """
    if steps <= 0:
        return TrainingStats(stopped_by="no_training")
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    guard = DivergenceGuard(model, optimiser, label)
    amp = device.type == "cuda" and config.mixed_precision
    time_cap = config.training_time_cap
    history_every = max(1, steps // 100)
    progress = ProgressLog(label, total=steps, every_s=config.log_every_s, time_cap_s=time_cap)
    history: list[tuple[int, float]] = []
    done, stopped_by = 0, "max_steps"
    model.train()
    start = time.monotonic()
    for step in range(1, steps + 1):
        if should_stop is not None and should_stop():
            raise StopRequested(f"{label}: stopped before step {step} of {steps}")
        fraction = _budget_fraction(step, steps, time.monotonic() - start, time_cap)
        if fraction is None:
            stopped_by = "time_budget"
            break
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(config.learning_rate, fraction) * guard.lr_scale
        batch = sampler.sample(config.batch_size)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, parts = step_fn(model, batch)
        value = float(loss.detach())
        if guard.diverged(value, step):
            guard.roll_back(value, step)
            continue
        guard.keep(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        guard.accept(value)
        done = step
        if step % history_every == 0 or step == steps:
            history.append((step, guard.running_loss))
        progress.update(step, loss=guard.running_loss, parts=parts)
    final_loss = float(guard.running_loss) if guard.running_loss is not None else float("nan")
    stats = TrainingStats(done, stopped_by, time.monotonic() - start, final_loss, tuple(history), guard.rollbacks)
    progress.finish(stats.steps, loss=stats.final_loss, stopped_by=stats.stopped_by)
    model.eval()
    return stats
