"""The benchmark's supervised oracle (bench/oracle.py) on a tiny CT slab (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import torch

from bench.oracle import SupervisedPairSampler, fit_supervised_oracle
from tests.test_nsn2n_denoise import TINY, _correlated_noise, _phantom


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_the_oracle_learns_the_clean_target():
    clean = _phantom()
    noisy = clean + _correlated_noise(clean.shape, 40.0, seed=1)
    result = fit_supervised_oracle(noisy, clean, (1.0, 0.7, 0.7), "CT", TINY.replace(max_steps=120, num_threads=1))
    assert result.training.steps == 120 and result.device == "cpu"
    assert result.denoised.shape == clean.shape and result.denoised.dtype == np.float32
    assert _rmse(result.denoised, clean) < 0.93 * _rmse(noisy, clean)


def test_supervised_crops_pair_each_slice_with_its_clean_version():
    volume = torch.arange(4 * 32 * 32, dtype=torch.float32).reshape(4, 32, 32)
    valid = torch.ones(volume.shape, dtype=torch.bool)
    sampler = SupervisedPairSampler(volume, volume + 0.5, valid, crop_size=16, fill=-1.0, seed=0)
    assert sampler.n_items == 4  # every slice is an item, not only the first of each pair
    batch = sampler.sample(6)
    torch.testing.assert_close(batch.x_b, batch.x_a + 0.5)  # same crop, same flip and rotation
    assert bool(batch.weight.all()) and bool(batch.valid.all())
