"""The collaborative Wiener stage in denoise_volume: when it runs, what it does to the output and the noise figure."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from nsn2n import ConfigError, DenoiseConfig, denoise_volume
from nsn2n.api import WienerStage
from nsn2n.collaborative_wiener import CollaborativeWienerParams
from nsn2n.errors import StopRequested
from tests.conftest import TINY

THICK, THIN = (5.0, 1.0, 1.0), (1.0, 1.0, 1.0)
NOISE = 20.0


def _magnitude_phantom(shape=(8, 48, 44)) -> np.ndarray:
    """A positive MR-like volume (155 to 635 a.u.; with its noise too): a disc whose radius grows slowly
    from slice to slice, a bright slab and a gentle in-plane wave."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    disc = (y - 22) ** 2 + (x - 16) ** 2 < (8 + z / 4) ** 2
    return ((disc * 1.0 + (x > 30) * 1.6 + 0.3 * np.sin(y / 3.0)) * 150.0 + 200.0).astype(np.float32)


def _noisy(clean: np.ndarray, seed: int, blur_px: float = 0.0) -> np.ndarray:
    """``clean`` plus Gaussian noise of :data:`NOISE`, white or Gaussian-filtered in-plane (``blur_px``)."""
    noise = np.random.default_rng(seed).normal(size=clean.shape)
    if blur_px:
        noise = ndimage.gaussian_filter(noise, (0, blur_px, blur_px))
    return (clean + NOISE * noise / noise.std()).astype(np.float32)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def _has_stage(steps: tuple[str, ...]) -> bool:
    return any("collaborative Wiener" in step for step in steps)


@pytest.mark.parametrize(
    ("spacing", "blur_px", "changes", "runs"),
    [
        (THICK, 0.0, {}, True),  # thick slices, white noise: the default runs it
        (THIN, 0.0, {}, False),  # thin slices: the blend's patches span 3 slices already
        (THICK, 1.0, {}, False),  # in-plane correlated noise (lag 1 about 0.7)
        (THICK, 0.0, {"nonlocal_weight": 0.0}, False),  # the network alone: no blend, no stage by default
        (THICK, 0.0, {"collaborative_wiener": False}, False),
        (THIN, 1.0, {"collaborative_wiener": True, "nonlocal_weight": 0.0}, True),  # forced: the network as pilot
    ],
)
def test_the_stage_runs_after_a_blend_on_thick_slices_with_white_noise(caplog, spacing, blur_px, changes, runs):
    noisy = _noisy(_magnitude_phantom(), seed=1, blur_px=blur_px)
    config = dataclasses.replace(TINY, num_threads=1, max_steps=2, **({"nonlocal_weight": None} | changes))
    with caplog.at_level("INFO", logger="nsn2n.api"):
        report = denoise_volume(noisy, spacing, "MR", config).report
    assert _has_stage(report.post_processing) == runs
    assert ("collaborative Wiener stage:" in caplog.text) == runs
    assert report.parameters.collaborative_wiener == changes.get("collaborative_wiener")


def test_the_steps_after_the_network_are_reported_in_order():
    noisy = _noisy(_magnitude_phantom(), seed=1)
    report = denoise_volume(
        noisy, THICK, "MR", dataclasses.replace(TINY, num_threads=1, max_steps=2, nonlocal_weight=None)
    ).report
    kinds = [step.split(" ")[0] for step in report.post_processing]
    assert kinds == ["residual", "blend", "collaborative", "Rician"]
    assert report.as_dict()["post_processing"] == list(report.post_processing)


def test_on_thick_slices_with_white_noise_it_lowers_the_error_and_the_noise_figure_follows():
    # One trained network; inference without and with the stage. Over noise seeds 1-4 and training seeds
    # 3 and 5: error with / without 0.81 to 0.85; noise figure with the stage / its truth 0.86 to 1.07,
    # figure with / figure without 0.77 to 0.87 (a figure that left the stage out would read 1).
    clean = _magnitude_phantom()
    noisy = _noisy(clean, seed=1)
    config = dataclasses.replace(TINY, max_steps=200, learning_rate=1e-3, nonlocal_weight=None, num_threads=1)
    without = denoise_volume(noisy, THICK, "MR", dataclasses.replace(config, collaborative_wiener=False))
    with_stage = denoise_volume(noisy, THICK, "MR", config, initial_model=without.model)
    assert _has_stage(with_stage.report.post_processing) and not _has_stage(without.report.post_processing)
    error_without, error_with = _rmse(without.denoised, clean), _rmse(with_stage.denoised, clean)
    assert error_with < 0.92 * error_without < 0.92 * _rmse(noisy, clean)
    figure_without, figure_with = without.report.noise.after, with_stage.report.noise.after
    assert figure_with == pytest.approx(error_with, rel=0.2)
    assert figure_with < 0.93 * figure_without


def test_a_stop_request_ends_the_stage_and_progress_is_logged(caplog):
    volume = _noisy(_magnitude_phantom((4, 24, 20)), seed=2) / 100.0
    stage = WienerStage(torch.full(volume.shape, 0.2), None, CollaborativeWienerParams(), torch.device("cpu"))
    with pytest.raises(StopRequested, match="collaborative Wiener: stopped before slice 1 of 4"):
        stage(volume, volume, np.arange(4), should_stop=lambda: True)
    with caplog.at_level("INFO", logger="nsn2n.progress"):
        out = stage(volume, volume, np.array([1, 2]), should_stop=lambda: False, log_every_s=0.0)
    assert out.shape == (2, 24, 20) and out.dtype == np.float32
    assert "collaborative Wiener: step 4/4 (100%)" in caplog.text  # slices 0 to 3 hold the groups of 1 and 2


def test_the_setting_is_validated_and_read_from_text():
    assert DenoiseConfig.from_mapping({"collaborative_wiener": "false"}).collaborative_wiener is False
    assert DenoiseConfig.from_mapping({"collaborative_wiener": "null"}).collaborative_wiener is None
    with pytest.raises(ConfigError, match="collaborative_wiener"):
        DenoiseConfig(collaborative_wiener="yes")  # type: ignore[arg-type]
