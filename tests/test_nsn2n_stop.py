"""The cancellation hook of nsn2n (``should_stop``) and the model files (CPU, seconds).

``should_stop`` is asked once per training step and once per inference batch: a stop request ends a run
within one step, and a hook that never fires changes nothing. ``TrainedModel.save`` writes under unique
temporary names and reports a full disk as an ``OSError`` that keeps its error number.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import nsn2n.api
from nsn2n import DenoiseConfig, StopRequested, TrainedModel, denoise_volume
from nsn2n.inference import denoise_slices
from nsn2n.training import PairSampler, nsn2n_step, train_network
from nsn2n.unet import ResidualUNet

CONFIG = DenoiseConfig(
    max_steps=30,
    batch_size=2,
    crop_size=24,
    unet_width=8,
    unet_depth=2,
    inference_batch=2,
    log_every_s=60,
    device="cpu",
    seed=0,
    num_threads=1,  # the 2 shared cores of CI: more threads only busy-wait
)


class StopAfter:
    """A ``should_stop`` hook that says "stop" from its ``calls``-th call on, and counts its calls."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked >= self.calls


def _volume(depth: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    disc = ((yy - 16) ** 2 + (xx - 16) ** 2 < 100).astype(np.float32)
    return np.stack([100.0 * disc + 10.0 * rng.standard_normal((32, 32)) for _ in range(depth)]).astype(np.float32)


def test_training_stops_at_the_step_the_hook_says() -> None:
    torch.set_num_threads(1)
    volume = torch.from_numpy(_volume() / 100.0)
    sampler = PairSampler(volume, None, torch.ones_like(volume, dtype=torch.bool), crop_size=24, fill=0.0, seed=0)
    model = ResidualUNet(8, 2)
    before = [p.detach().clone() for p in model.parameters()]
    hook = StopAfter(4)
    with pytest.raises(StopRequested, match="stopped before step 4 of 30"):
        cpu = torch.device("cpu")
        train_network(model, sampler, nsn2n_step(CONFIG), CONFIG, steps=30, device=cpu, should_stop=hook)
    assert hook.asked == 4, "asked once per step"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "3 steps were taken"


def test_inference_stops_at_the_batch_the_hook_says() -> None:
    torch.set_num_threads(1)
    hook = StopAfter(2)
    with pytest.raises(StopRequested, match="stopped before slice 3 of 6"):
        denoise_slices(ResidualUNet(8, 2), _volume(), device=torch.device("cpu"), batch=2, should_stop=hook)
    assert hook.asked == 2, "asked once per batch"


def test_denoise_volume_stops_in_training_and_in_inference() -> None:
    with pytest.raises(StopRequested, match="train"):
        denoise_volume(_volume(), (2.0, 1.0, 1.0), "MR", CONFIG, should_stop=StopAfter(5))
    # 30 training steps ask 30 times; the 31st question is the first inference batch.
    with pytest.raises(StopRequested, match="inference"):
        denoise_volume(_volume(), (2.0, 1.0, 1.0), "MR", CONFIG, should_stop=StopAfter(31))


def test_a_hook_that_never_fires_changes_nothing() -> None:
    plain = denoise_volume(_volume(), (2.0, 1.0, 1.0), "MR", CONFIG).denoised
    hook = StopAfter(10**9)
    hooked = denoise_volume(_volume(), (2.0, 1.0, 1.0), "MR", CONFIG, should_stop=hook).denoised
    assert np.array_equal(plain, hooked)
    # once per training step, once per inference batch (6 slices / 2), once per batch of the error
    # estimate's three passes (the output and two probes) over the same 6 slices, and once per slab of the
    # non-local means blend (MR: one slab of 6 slices in the output and in each of the three passes)
    assert hook.asked == CONFIG.max_steps + 3 + 3 * 3 + 1 + 3


def _model() -> TrainedModel:
    return denoise_volume(_volume(), (2.0, 1.0, 1.0), "MR", CONFIG.replace(max_steps=2)).model


def test_model_save_leaves_only_the_model_files(tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path)
    model.save(tmp_path)  # replaces the files in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsn2n_model.json", "nsn2n_model.pt"]
    assert TrainedModel.load(tmp_path).network.width == 8


def test_model_save_on_a_full_disk_keeps_the_error_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd: int, mode: str) -> None:
            self.fh = real_fdopen(fd, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nsn2n.api.os, "fdopen", FullDisk)
    with pytest.raises(OSError) as info:
        model.save(tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == [], "no temporary file is left"
