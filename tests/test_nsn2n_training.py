"""The training loop's divergence guard (CPU, seconds).

A one-step blow-up is simulated by scaling every weight of the network up inside the step function, as
a catastrophic optimiser step would; the guard must restore the last sane state and carry on.
"""

import math

import numpy as np
import pytest
import torch

from nsn2n import DenoiseConfig
from nsn2n.training import PairSampler, TrainingStats, nsn2n_step, train_network
from nsn2n.unet import ResidualUNet

CONFIG = DenoiseConfig(
    max_steps=80,
    batch_size=2,
    crop_size=24,
    unet_width=8,
    unet_depth=2,
    learning_rate=1e-3,
    log_every_s=60,
    device="cpu",
    seed=0,
)


def _sampler() -> PairSampler:
    rng = np.random.default_rng(0)
    volume = torch.from_numpy((1.0 + 0.05 * rng.standard_normal((6, 32, 32))).astype(np.float32))
    weights = torch.ones((5, 32, 32), dtype=torch.bool)
    valid = torch.ones((6, 32, 32), dtype=torch.bool)
    return PairSampler(volume, weights, valid, crop_size=24, fill=0.0, seed=0)


def _train(step_fn) -> tuple[torch.nn.Module, TrainingStats]:
    torch.manual_seed(0)
    model = ResidualUNet(CONFIG.unet_width, CONFIG.unet_depth)
    stats = train_network(model, _sampler(), step_fn, CONFIG, steps=CONFIG.max_steps, device=torch.device("cpu"))
    return model, stats


def _blow_up_on_calls(calls: set[int] | None, after: int | None = None):
    """nsn2n_step, but on the given calls (or every call after ``after``) the weights are scaled x30 first."""
    inner = nsn2n_step(CONFIG)
    count = 0

    def step(model, batch):
        nonlocal count
        count += 1
        if (calls and count in calls) or (after is not None and count > after):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(30.0)
        return inner(model, batch)

    return step


def test_a_blow_up_is_rolled_back_and_training_recovers():
    _, clean_stats = _train(nsn2n_step(CONFIG))
    model, stats = _train(_blow_up_on_calls({60}))
    assert clean_stats.rollbacks == 0
    assert stats.rollbacks == 1
    assert stats.steps == CONFIG.max_steps
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Back at the level of the undisturbed run, not stuck at the blown-up loss.
    assert stats.final_loss < 3 * clean_stats.final_loss, (stats.final_loss, clean_stats.final_loss)
    # The spike itself never entered the running average.
    assert max(v for _, v in stats.loss_history) < 10 * max(v for _, v in clean_stats.loss_history[1:])


def test_a_run_that_keeps_diverging_stops_with_a_clear_error():
    with pytest.raises(FloatingPointError, match=r"diverged .* after 5 rollbacks"):
        _train(_blow_up_on_calls(None, after=30))


def test_a_non_finite_loss_before_any_snapshot_is_an_error():
    def nan_step(model, batch):
        return torch.tensor(math.nan, requires_grad=True), {}

    with pytest.raises(FloatingPointError, match=r"training diverged .* at step 1"):
        _train(nan_step)
