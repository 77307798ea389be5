"""The benchmark's supervised oracle (bench/oracle.py) on a tiny CT slab (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import torch

from bench.oracle import SupervisedContextSampler, fit_supervised_oracle
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


def test_supervised_crops_hold_the_noisy_slice_with_its_neighbours_and_its_clean_version():
    depth = 4
    # Slice z holds 1000 z + (row, column) index, so every crop says which slice and pixels it came from.
    base = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32)
    volume = torch.stack([1000.0 * z + base for z in range(depth)])
    valid = torch.ones(volume.shape, dtype=torch.bool)
    sampler = SupervisedContextSampler(volume, volume + 0.5, valid, context=1, crop_size=16, fill=-1.0, seed=0)
    batch = sampler.sample(8)
    assert batch.inputs.shape == (8, 3, 16, 16) and batch.target.shape == (8, 1, 16, 16)
    centre = batch.inputs[:, 1:2]
    torch.testing.assert_close(batch.target, centre + 0.5)  # same crop, same flip and rotation
    for item in range(8):
        z = int(centre[item].min() // 1000)
        below, above = (abs(z - 1), z + 1 if z + 1 < depth else depth - 2)  # mirrored at the ends
        torch.testing.assert_close(batch.inputs[item, 0] - centre[item, 0], torch.full((16, 16), 1000.0 * (below - z)))
        torch.testing.assert_close(batch.inputs[item, 2] - centre[item, 0], torch.full((16, 16), 1000.0 * (above - z)))
    assert bool(batch.valid.all())


def test_the_oracle_reads_the_configured_context():
    clean = _phantom()
    noisy = clean + _correlated_noise(clean.shape, 40.0, seed=1)
    config = TINY.replace(max_steps=2, num_threads=1)
    assert config.formulation == "recorrupted" and config.context_slices >= 1
    # Trains and runs the 2.5-D network (a single-slice network would fail on 2c+1 input channels and
    # vice versa); the paper's formulation reads one slice.
    for cfg in (config, config.replace(formulation="paper")):
        result = fit_supervised_oracle(noisy, clean, (1.0, 0.7, 0.7), "CT", cfg)
        assert result.denoised.shape == clean.shape
