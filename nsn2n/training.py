"""Training on the one volume that will be denoised: two formulations, one loop.

Both draw ``batch_size`` random crops placed on the foreground (a crop of pure air or padding teaches
nothing) and apply one random flip/rot90 to everything an item holds.

* ``"recorrupted"`` (:class:`RecorruptedSampler`, :func:`recorrupted_step`; the default). The input is
  slice x_i plus ``alpha * z`` with its ``context_slices`` neighbours on either side as further channels;
  the target is ``x_i - z / alpha``; ``z`` is synthetic noise drawn from the volume's own noise model
  (:mod:`nsn2n.noise_model`: its local level and in-plane correlation). If ``z`` has the statistics of
  the real noise ``n``, the input's noise ``n + alpha z`` and the target's ``n - z / alpha`` are
  uncorrelated (``E[(n + alpha z)(n - z / alpha)] = sigma^2 - sigma^2 = 0``) and the target's mean is the
  clean slice, so the mean-squared loss has the clean slice's minimiser (Recorrupted-to-Recorrupted,
  Pang et al., CVPR 2021). Unlike a neighbouring slice, the target shows the slice's own anatomy: changes
  of anatomy between slices cannot teach the network to blur, on thick slices too. The neighbours carry
  independent noise and the same anatomy nearby, so they add information a 2-D denoiser lacks (a 3-D
  classic filter uses them as well); they are not the target, so their noise cannot leak into it. At
  inference the network gets the slice as it is, with its neighbours.
* ``"paper"`` (:class:`PairSampler`, :func:`nsn2n_step`). Neighbouring pairs (x_i, x_{i+1}) with their
  weight map and valid mask, minimising :func:`nsn2n.losses.nsn2n_loss`; the three network evaluations
  f(x_a), f(x_b), f((x_a+x_b)/2) run as one batch.

Precision and layout (:mod:`nsn2n.precision`): bf16 autocast where the device computes it natively,
channels-last inputs; the loss is float32.

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
from typing import Any

import numpy as np
import torch

from .config import DenoiseConfig
from .errors import ShouldStop, StopRequested
from .losses import nsn2n_loss
from .noise_model import NoiseModel
from .precision import autocast, channels_last
from .progress import ProgressLog
from .weight_map import pixel_noise_sigma

__all__ = [
    "Batch",
    "DivergenceGuard",
    "PairSampler",
    "RecorruptedBatch",
    "RecorruptedSampler",
    "StepFn",
    "TrainingStats",
    "augmented_batch",
    "context_indices",
    "draw_crops",
    "foreground_crop_origin",
    "foreground_floor",
    "foreground_mask",
    "nsn2n_step",
    "random_turn",
    "recorrupted_step",
    "train_network",
]

log = logging.getLogger(__name__)

_FOREGROUND_LEVEL = 0.1  # network units above the fill value that count as "something to denoise"
#: Magnitude images (MR): the foreground also stands this many quiet-tile noise sigmas above the fill.
MAGNITUDE_FLOOR_SIGMAS = 2.5
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
        foreground: (D, H, W) bool crops are drawn on (the run's); ``None``: computed from ``fill``.
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
        foreground: torch.Tensor | None = None,
    ) -> None:
        self.volume = volume
        self.weights = weights
        self.valid = valid
        side = min(crop_size, volume.shape[1], volume.shape[2])  # square: rot90 must keep the shape
        self.crop = (side, side)
        self.foreground = foreground_mask(volume, valid, fill) if foreground is None else foreground
        self.rng = np.random.default_rng(seed)
        self.n_items = volume.shape[0] - 1  # pairs (i, i+1)

    def _crop_origin(self, index: int) -> tuple[int, int]:
        return foreground_crop_origin(self.foreground[index], self.crop, self.rng)

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
            items.append(random_turn(torch.stack([a, b, weight.to(a.dtype), valid.to(a.dtype)]), self.rng))
        batch = torch.stack(items)  # (B, 4, c, c)
        return Batch(batch[:, 0:1], batch[:, 1:2], batch[:, 2:3] > 0.5, batch[:, 3:4] > 0.5)


def foreground_mask(
    volume: torch.Tensor, valid: torch.Tensor, fill: float, floor: float = _FOREGROUND_LEVEL
) -> torch.Tensor:
    """(D, H, W) bool: valid pixels that differ from the padding fill by more than ``floor`` network units
    (:func:`foreground_floor`): what is worth training on and what the noise figures describe."""
    return valid & ((volume - fill).abs() > floor)


def foreground_floor(volume: torch.Tensor, valid: torch.Tensor, modality: str) -> float:
    """How far (network units) a pixel must be from the fill to be foreground, for a normalised volume.

    ``_FOREGROUND_LEVEL`` (0.1), and for MR at least ``MAGNITUDE_FLOOR_SIGMAS`` (2.5) times the pixel noise
    sigma of the quietest tiles (:func:`nsn2n.weight_map.pixel_noise_sigma`). A magnitude image has a
    noise floor: air reads Rayleigh noise of mean 1.25 sigma, so on a noisy MR series (sigma 9 % of the
    tissue intensity) about half of the air rises above 0.1 by its noise alone and counts as foreground,
    picked by its own noise, which then sets the tissue's noise level too low. The quiet tiles of an MR
    series are mostly air (they read about 0.65 sigma), so the floor sits near 1.6 sigma: it about halves that
    air (unit test) and, on the tuning set, leaves the 5 % MR series alone; a higher floor also dropped
    dark tissue of the thick MR series, whose level then read 25 % high (bench/README.md, 2026-11-30).
    """
    if modality != "MR":
        return _FOREGROUND_LEVEL
    return max(_FOREGROUND_LEVEL, MAGNITUDE_FLOOR_SIGMAS * pixel_noise_sigma(volume, valid))


def context_indices(index: int, depth: int, context: int) -> list[int]:
    """Slices ``index - context .. index + context`` of a ``depth``-slice volume, mirrored at its ends.

    Mirroring (``-1 -> 1``, ``depth -> depth - 2``) gives the first and last slices real neighbours
    with independent noise, the same at training and inference.
    """
    out = []
    for offset in range(-context, context + 1):
        j = index + offset
        if j < 0:
            j = -j
        if j > depth - 1:
            j = 2 * (depth - 1) - j
        out.append(min(max(j, 0), depth - 1))
    return out


@dataclass
class RecorruptedBatch:
    """One batch of the recorrupted formulation.

    Attributes:
        inputs: (B, 2c+1, s, s): neighbours, the recorrupted slice ``x_i + alpha z`` in the middle, neighbours.
        target: (B, 1, s, s): ``x_i - z / alpha``.
        valid: (B, 1, s, s) bool: pixels that count in the loss (not padding in the slice).
    """

    inputs: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor


class RecorruptedSampler:
    """Draws augmented random crops for the recorrupted formulation (see the module docstring).

    Args:
        volume: (D, H, W) normalised float tensor (on the training device).
        valid: (D, H, W) bool, False for padding.
        noise_model: the volume's noise model, in normalised units.
        context_slices: neighbours on either side in the input.
        alpha: recorruption scale: input ``+ alpha z``, target ``- z / alpha``.
        sigma_scale: level of ``z`` relative to the noise model's (see
            :attr:`nsn2n.config.DenoiseConfig.recorruption_sigma_scale`).
        crop_size: crop side; clipped to the shorter side of the slice (crops stay square).
        fill: normalised fill value of padding (foreground = differs from it).
        seed: seed of the crop, augmentation and noise generators.
        foreground: (D, H, W) bool crops are drawn on (the run's); ``None``: computed from ``fill``.
    """

    def __init__(
        self,
        volume: torch.Tensor,
        valid: torch.Tensor,
        noise_model: NoiseModel,
        *,
        context_slices: int,
        alpha: float,
        sigma_scale: float = 1.0,
        crop_size: int,
        fill: float,
        seed: int,
        foreground: torch.Tensor | None = None,
    ) -> None:
        self.volume = volume
        self.valid = valid
        self.noise_model = noise_model
        self.context = context_slices
        self.alpha = alpha
        side = min(crop_size, volume.shape[1], volume.shape[2])
        self.crop = (side, side)
        self.foreground = foreground_mask(volume, valid, fill) if foreground is None else foreground
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=volume.device).manual_seed(seed)
        self.sigma = noise_model.sigma_maps(volume.device, sigma_scale)

    def sample(self, batch_size: int) -> RecorruptedBatch:
        """``batch_size`` items, each with one random rot90 and flip on all its crops."""
        depth = self.volume.shape[0]
        picks = draw_crops(self.foreground, self.crop, batch_size, self.rng)
        sigma = torch.stack([self.sigma.slice(i)[ys, xs] for i, ys, xs in picks])
        noise = self.noise_model.sample(sigma, self.generator)
        items = []
        for (i, ys, xs), z in zip(picks, noise, strict=True):
            valid = self.valid[i, ys, xs]
            z = z * valid
            slice_i = self.volume[i, ys, xs]
            channels = [self.volume[j, ys, xs] for j in context_indices(i, depth, self.context)]
            channels[self.context] = slice_i + self.alpha * z
            items.append(torch.stack([*channels, slice_i - z / self.alpha, valid.to(z.dtype)]))
        return augmented_batch(items, self.context, self.rng)


def draw_crops(
    foreground: torch.Tensor, crop: tuple[int, int], count: int, rng: np.random.Generator
) -> list[tuple[int, slice, slice]]:
    """``count`` random ``(slice index, rows, columns)`` crops of a (D, H, W) ``foreground``: the slice
    uniformly, the window by :func:`foreground_crop_origin`."""
    crops = []
    for _ in range(count):
        i = int(rng.integers(0, foreground.shape[0]))
        y, x = foreground_crop_origin(foreground[i], crop, rng)
        crops.append((i, slice(y, y + crop[0]), slice(x, x + crop[1])))
    return crops


def random_turn(stack: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """``(C, s, s)`` crops of one item turned by a random rot90 and, at random, flipped: the same for all
    its channels (the augmentation of every sampler)."""
    stack = torch.rot90(stack, int(rng.integers(0, 4)), dims=(1, 2))
    return stack.flip(2) if rng.integers(0, 2) else stack


def augmented_batch(items: list[torch.Tensor], context: int, rng: np.random.Generator) -> RecorruptedBatch:
    """A :class:`RecorruptedBatch` of per-item stacks ``(2 context + 1 inputs, target, valid)``, each item
    turned by one random rot90 and flip (the same for all its channels)."""
    batch = torch.stack([random_turn(stack, rng) for stack in items])
    n = 2 * context + 1
    return RecorruptedBatch(batch[:, :n], batch[:, n : n + 1], batch[:, n + 1 : n + 2] > 0.5)


def foreground_crop_origin(
    foreground: torch.Tensor, crop: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """A crop origin whose crop holds at least ``_MIN_FOREGROUND`` foreground, else the best of a few draws."""
    ch, cw = crop
    h, w = foreground.shape
    best, best_fraction = (0, 0), -1.0
    for _ in range(6):
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        fraction = float(foreground[y : y + ch, x : x + cw].float().mean())
        if fraction >= _MIN_FOREGROUND:
            return y, x
        if fraction > best_fraction:
            best, best_fraction = (y, x), fraction
    return best


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


StepFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


def nsn2n_step(config: DenoiseConfig) -> StepFn:
    """The NS-N2N loss for one batch: f on x_a, x_b and their mean in one forward pass."""

    def step(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mid = 0.5 * (batch.x_a + batch.x_b)
        out = model(channels_last(torch.cat([batch.x_a, batch.x_b, mid]))).float()
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


def recorrupted_step(model: torch.nn.Module, batch: RecorruptedBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error between f(recorrupted input) and the recorrupted target over the valid pixels."""
    out = model(channels_last(batch.inputs)).float()
    weight = batch.valid.to(out.dtype)
    loss = (weight * (out - batch.target) ** 2).sum() / weight.sum().clamp_min(1.0)
    return loss, {"recon": float(loss.detach())}


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
    sampler: PairSampler | RecorruptedSampler,
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
        with autocast(device, config.mixed_precision):
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
