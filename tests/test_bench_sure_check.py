"""bench.sure_check's helpers: the true-noise model recovers a known level and correlation, the
denoisers follow the estimator's calling convention."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench.sure_check import DENOISERS, _whole_volume, true_noise_model


def test_true_noise_model_recovers_level_and_correlation():
    rng = np.random.default_rng(0)
    kernel = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    kernel /= np.sqrt((kernel**2).sum())
    white = rng.standard_normal((6, 80, 80))
    noise = 7.0 * np.stack([ndimage.correlate(s, kernel, mode="wrap") for s in white])
    expected_lag1 = float((kernel[:, 1:] * kernel[:, :-1]).sum())  # autocorrelation of the kernel at lag 1
    model = true_noise_model(noise, np.ones(noise.shape, bool))
    assert model.level() == pytest.approx(7.0, rel=0.05)
    assert model.lag1_correlation == pytest.approx(expected_lag1, abs=0.05)
    white_model = true_noise_model(7.0 * white, np.ones(noise.shape, bool))
    assert abs(white_model.lag1_correlation) < 0.05


@pytest.mark.parametrize("name", ["gauss1", "gauss2", "mean3"])
def test_denoisers_return_the_listed_slices(name):
    volume = np.random.default_rng(1).standard_normal((5, 16, 12)).astype(np.float32)
    denoise = DENOISERS[name][1](volume, "CT")
    slices = np.array([0, 3, 4])
    out = denoise(volume, slices)
    assert out.shape == (3, 16, 12)
    assert np.allclose(out, denoise(volume, np.arange(5))[slices])


def test_whole_volume_filter_runs_once_per_distinct_volume():
    calls = []
    denoise = _whole_volume(lambda v: calls.append(1) or v * 2.0)
    volume = np.ones((3, 4, 4), np.float32)
    assert np.array_equal(denoise(volume, np.array([1])), 2.0 * volume[[1]])
    denoise(volume.copy(), np.array([0, 2]))
    assert len(calls) == 1
    volume[1] += 1.0
    denoise(volume, np.array([1]))
    assert len(calls) == 2
