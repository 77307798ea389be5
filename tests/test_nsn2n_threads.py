"""Torch's CPU thread count: by default the cores this process may run on, not the machine's."""

import os

import numpy as np
import pytest
import torch

from nsn2n import DenoiseConfig, denoise_volume
from nsn2n.config import usable_cpu_count

QUICK = DenoiseConfig(max_steps=2, batch_size=2, crop_size=16, unet_width=4, unet_depth=1, device="cpu", log_every_s=60)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_threads_are_the_cores_of_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert usable_cpu_count() == 3
    assert DenoiseConfig().cpu_threads == 3
    assert DenoiseConfig(num_threads=5).cpu_threads == 5


def test_a_run_sets_the_threads_where_the_device_is_chosen(monkeypatch, restore_threads):
    """A process allowed on one core of a larger machine runs torch on one thread; an explicit value wins."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 20.0, (4, 24, 24)).astype(np.float32)
    torch.set_num_threads(2)
    denoise_volume(volume, (1.0, 1.0, 1.0), "CT", QUICK)
    assert torch.get_num_threads() == 1
    denoise_volume(volume, (1.0, 1.0, 1.0), "CT", QUICK.replace(num_threads=2))
    assert torch.get_num_threads() == 2
