"""The recorrupted formulation and the noise model it draws from: known answers on tiny volumes (CPU, seconds).

* The noise model measures a known level, its left/right change and a known in-plane correlation; its
  foreground and background each get their own level; its shaping kernel reproduces the short-lag
  correlation exactly.
* Its samples have the level and correlation asked for.
* Recorrupted pairs: the input's and the target's noise are uncorrelated when the synthetic noise matches
  the real one (the property that makes the target unbiased), with variances (1 + alpha^2) and
  (1 + 1 / alpha^2) times the noise variance; the context channels are the untouched neighbours.
* The loss is the masked mean squared error; the untrained network returns the middle slice.
* Context slices are mirrored at the volume's ends, the same in training and inference.
* A saved model keeps its formulation and input slices; a model saved before they existed loads as the
  paper's single-slice network.
"""

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from nsn2n import DenoiseConfig, TrainedModel, api
from nsn2n.inference import context_stack, denoise_slices
from nsn2n.intensity import IntensityNormalizer
from nsn2n.noise_model import MAX_LAG, NoiseModel, correlation_kernel, outer_pair_weights
from nsn2n.training import (
    RecorruptedBatch,
    RecorruptedSampler,
    context_indices,
    foreground_floor,
    foreground_mask,
    recorrupted_step,
)
from nsn2n.unet import ResidualUNet

CONFIG = DenoiseConfig(device="cpu", num_threads=1)


def _correlated(shape, seed: int, smooth_px: float) -> np.ndarray:
    """Unit-variance noise, Gaussian-filtered in-plane by ``smooth_px``, independent between slices."""
    noise = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), (0, smooth_px, smooth_px))
    return noise / noise.std()


def _model_of(volume: np.ndarray) -> NoiseModel:
    volume_t = torch.from_numpy(volume.astype(np.float32))
    valid_t = torch.ones_like(volume_t, dtype=torch.bool)
    maps = api.configured_weight_maps(volume_t, valid_t, CONFIG)
    return api.measure_noise_model(volume_t, valid_t, maps, CONFIG)


def test_the_noise_model_measures_level_and_in_plane_correlation():
    # A smooth ramp of anatomy along x (changes between slices: none) plus correlated noise of 0.05.
    shape = (12, 96, 96)
    clean = np.broadcast_to(np.linspace(0.5, 1.5, shape[2], dtype=np.float32), shape)
    noise = _correlated(shape, seed=0, smooth_px=1.0)
    model = _model_of(clean + 0.05 * noise)
    assert model.source == "outer pairs"
    assert model.level() == pytest.approx(0.05, rel=0.08)
    measured_lag1 = float(np.corrcoef(noise[:, :, 1:].ravel(), noise[:, :, :-1].ravel())[0, 1])
    assert measured_lag1 > 0.7  # the injected noise is strongly correlated in-plane
    assert model.lag1_correlation == pytest.approx(measured_lag1, abs=0.08)
    white = _model_of(clean + 0.05 * np.random.default_rng(1).standard_normal(shape))
    assert abs(white.lag1_correlation) < 0.05 and white.level() == pytest.approx(0.05, rel=0.08)


def test_the_noise_level_follows_a_change_across_the_slice():
    shape = (12, 64, 128)
    level = np.where(np.arange(shape[2]) < 64, 0.02, 0.08).astype(np.float32)
    volume = 1.0 + level * np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    model = _model_of(volume)
    sigma = model.sigma_map(6)
    assert np.median(sigma[:, :48]) == pytest.approx(0.02, rel=0.15)
    assert np.median(sigma[:, 80:]) == pytest.approx(0.08, rel=0.15)


def test_foreground_and_background_each_get_their_own_noise_level():
    # Tissue (left half, noise 0.05) beside background at the fill value with quieter noise (0.02), as MR
    # air (Rayleigh noise) or CT air beside the body: the background matches perfectly between slices and
    # would outweigh the tissue in every block near the edge.
    shape = (12, 96, 96)
    rng = np.random.default_rng(3)
    tissue = np.broadcast_to(np.arange(shape[2]) < 48, shape)
    volume = np.where(tissue, 1.0 + 0.05 * rng.standard_normal(shape), 0.02 * rng.standard_normal(shape))
    volume_t = torch.from_numpy(volume.astype(np.float32))
    valid_t = torch.ones_like(volume_t, dtype=torch.bool)
    foreground = foreground_mask(volume_t, valid_t, 0.0).numpy()
    assert np.array_equal(foreground, tissue)
    maps = api.configured_weight_maps(volume_t, valid_t, CONFIG)
    measured = api.measure_noise_model(volume_t, valid_t, maps, CONFIG, foreground)
    assert measured.level(foreground) == pytest.approx(0.05, rel=0.04)
    assert measured.level(~foreground) == pytest.approx(0.02, rel=0.04)  # the background keeps its own
    every_pixel = api.measure_noise_model(volume_t, valid_t, maps, CONFIG)
    assert every_pixel.level(foreground) < 0.045  # one level for both: pulled down near the edge


def test_mr_air_does_not_pass_for_foreground_by_its_own_noise():
    # Tissue (1.0) beside air, both with magnitude (Rician) noise of sigma 0.09: the air reads Rayleigh
    # noise of mean 0.11, above the plain 0.1 floor half of the time.
    rng = np.random.default_rng(0)
    shape, sigma = (8, 64, 64), 0.09
    clean = np.zeros(shape)
    clean[:, :, :32] = 1.0
    magnitude = np.hypot(clean + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    volume = torch.from_numpy(magnitude.astype(np.float32))
    valid = torch.ones_like(volume, dtype=torch.bool)
    assert foreground_floor(volume, valid, "CT") == pytest.approx(0.1)
    plain = foreground_mask(volume, valid, 0.0, foreground_floor(volume, valid, "CT")).numpy()
    magnitude_rule = foreground_mask(volume, valid, 0.0, foreground_floor(volume, valid, "MR")).numpy()
    assert plain[:, :, 32:].mean() > 0.45
    assert magnitude_rule[:, :, 32:].mean() < 0.6 * plain[:, :, 32:].mean()  # 28 % against 54 %
    assert magnitude_rule[:, :, :32].all()  # the tissue stays


def _kernel_autocorrelation(kernel: np.ndarray, lag: int) -> float:
    """Correlation at horizontal ``lag`` of white noise filtered by ``kernel`` (unit energy)."""
    return float((kernel[:, lag:] * kernel[:, : kernel.shape[1] - lag]).sum())


def test_the_shaping_kernel_reproduces_the_short_lag_correlation():
    # The autocorrelation of CT-like blotchy noise: Gaussian, 0.8 at lag 1.
    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    r2 = lags[:, None] ** 2 + lags[None, :] ** 2
    wanted = 0.8 ** r2.astype(np.float64)
    kernel = correlation_kernel(wanted)
    assert float((kernel**2).sum()) == pytest.approx(1.0, rel=1e-5)
    for lag in (1, 2, 3):
        assert _kernel_autocorrelation(kernel, lag) == pytest.approx(wanted[MAX_LAG, MAX_LAG + lag], abs=0.01)
    white = np.zeros_like(wanted)
    white[MAX_LAG, MAX_LAG] = 1.0
    assert _kernel_autocorrelation(correlation_kernel(white), 1) == pytest.approx(0.0, abs=0.01)


def test_samples_have_the_requested_level_and_the_model_correlation():
    kernel = np.zeros((5, 5), np.float32)
    kernel[2, 1:4] = 1 / np.sqrt(3)  # horizontal 3-tap box: lag-1 correlation 2/3 along x, 0 along y
    model = NoiseModel(np.full((1, 8, 8), 0.1, np.float32), kernel, (1, 64, 64), 2 / 3, "test")
    z = model.sample(torch.full((64, 64, 64), 0.1), torch.Generator().manual_seed(0)).numpy()
    assert z.std() == pytest.approx(0.1, rel=0.02)
    assert np.corrcoef(z[:, :, 1:].ravel(), z[:, :, :-1].ravel())[0, 1] == pytest.approx(2 / 3, abs=0.02)
    assert abs(np.corrcoef(z[:, 1:, :].ravel(), z[:, :-1, :].ravel())[0, 1]) < 0.02


def test_whitening_makes_the_model_s_noise_white_at_its_level():
    # Noise of a blotchy model (lag-1 correlation 0.45, well inside the filter's floor), whitened: the
    # correlation is gone and the level kept (interior pixels: the filter is circular).
    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    r2 = lags[:, None] ** 2 + lags[None, :] ** 2
    kernel = correlation_kernel(np.exp(-r2 / (2 * 0.8**2)))
    model = NoiseModel(np.full((1, 8, 8), 1.0, np.float32), kernel, (1, 64, 64), 0.46, "test")
    noise = model.sample(torch.full((96, 64, 64), 0.3), torch.Generator().manual_seed(1))
    assert np.corrcoef(noise[:, :, 1:].ravel(), noise[:, :, :-1].ravel())[0, 1] > 0.4
    white = model.whiten(noise)[:, 16:-16, 16:-16].numpy()
    assert white.std() == pytest.approx(0.3, rel=0.03)
    for a, b in ((white[:, :, 1:], white[:, :, :-1]), (white[:, 1:, :], white[:, :-1, :])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.03


def test_whitening_leaves_white_noise_and_a_constant_as_they_are():
    model = _white_model((1, 40, 48), 1.0)
    slices = torch.from_numpy(np.random.default_rng(2).standard_normal((3, 40, 48)).astype(np.float32))
    torch.testing.assert_close(model.whiten(slices), slices, atol=1e-5, rtol=0)
    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    kernel = correlation_kernel(np.exp(-(lags[:, None] ** 2 + lags[None, :] ** 2) / 2.0))
    blotchy = NoiseModel(np.ones((1, 5, 6), np.float32), kernel, (1, 40, 48), 0.6, "test")
    flat = blotchy.whiten(torch.full((2, 40, 48), 7.0))  # only frequency 0: a constant stays constant
    assert float(flat.std()) < 1e-4 * float(flat.abs().mean())


def _white_model(shape, sigma: float) -> NoiseModel:
    kernel = np.zeros((3, 3), np.float32)
    kernel[1, 1] = 1.0
    blocks = np.full((shape[0], -(-shape[1] // 8), -(-shape[2] // 8)), sigma, np.float32)
    return NoiseModel(blocks, kernel, shape, 0.0, "test")


def _white_sampler(
    volume: torch.Tensor, sigma: float, *, context: int = 1, alpha: float = 0.5, sigma_scale: float = 1.0, seed: int
) -> RecorruptedSampler:
    """A sampler of ``volume`` (no padding, 32 px crops) drawing white synthetic noise of level ``sigma``."""
    shape = tuple(volume.shape)
    return RecorruptedSampler(
        volume,
        torch.ones(shape, dtype=torch.bool),
        _white_model(shape, sigma),
        context_slices=context,
        alpha=alpha,
        sigma_scale=sigma_scale,
        crop_size=32,
        fill=0.0,
        seed=seed,
    )


def test_recorrupted_input_and_target_noises_are_uncorrelated():
    shape, sigma, alpha = (6, 48, 48), 0.05, 0.5
    clean = 1.0  # flat anatomy: every deviation from 1 is noise
    real = sigma * np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    volume = torch.from_numpy(clean + real)
    sampler = _white_sampler(volume, sigma, alpha=alpha, seed=0)
    inputs, targets = [], []
    for _ in range(40):
        batch = sampler.sample(8)
        assert batch.inputs.shape == (8, 3, 32, 32) and batch.target.shape == (8, 1, 32, 32)
        assert bool(batch.valid.all())
        inputs.append(batch.inputs[:, 1] - clean)
        targets.append(batch.target[:, 0] - clean)
    n_in, n_target = torch.cat(inputs).flatten().double(), torch.cat(targets).flatten().double()
    var = sigma**2
    assert float(n_in.var()) == pytest.approx((1 + alpha**2) * var, rel=0.05)
    assert float(n_target.var()) == pytest.approx((1 + 1 / alpha**2) * var, rel=0.05)
    assert abs(float((n_in * n_target).mean())) < 0.05 * var  # E[(n + a z)(n - z / a)] = var(n) - var(z) = 0


def test_context_channels_are_the_untouched_neighbours():
    shape = (5, 32, 32)
    volume = torch.arange(5, dtype=torch.float32)[:, None, None].expand(shape) + 1.0  # slice i holds i + 1
    sampler = _white_sampler(volume.contiguous(), 0.01, context=2, seed=1)
    batch = sampler.sample(16)
    centre = batch.inputs[:, 2].mean(dim=(1, 2)).round()  # the recorrupted slice, noise averages out
    for item in range(16):
        i = int(centre[item]) - 1
        expected = [j + 1.0 for j in context_indices(i, 5, 2)]
        for channel in (0, 1, 3, 4):
            assert torch.all(batch.inputs[item, channel] == expected[channel])


def test_context_indices_mirror_at_the_ends():
    assert context_indices(0, 5, 1) == [1, 0, 1]
    assert context_indices(4, 5, 1) == [3, 4, 3]
    assert context_indices(0, 5, 2) == [2, 1, 0, 1, 2]
    assert context_indices(2, 3, 2) == [0, 1, 2, 1, 0]
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    stack = context_stack(volume, range(4), 1)
    assert stack[:, :, 0, 0].tolist() == [[1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 2]]


def test_the_untrained_network_returns_the_middle_slice_and_the_loss_is_the_masked_mse():
    torch.manual_seed(0)
    net = ResidualUNet(width=4, depth=2, in_channels=3)
    x = torch.randn(2, 3, 20, 20)
    assert torch.equal(net(x), x[:, 1:2])
    with pytest.raises(ValueError, match="odd"):
        ResidualUNet(width=4, depth=2, in_channels=2)
    target = torch.zeros(2, 1, 20, 20)
    valid = torch.zeros(2, 1, 20, 20, dtype=torch.bool)
    valid[:, :, :10] = True
    loss, parts = recorrupted_step(net, RecorruptedBatch(x, target, valid))
    expected = float((x[:, 1:2][valid] ** 2).mean())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert parts["recon"] == pytest.approx(expected, rel=1e-5)


def test_inference_feeds_the_network_its_context():
    class MeanOfNeighbours(torch.nn.Module):
        in_channels = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * (x[:, 0:1] + x[:, 2:3])

    volume = (np.arange(4, dtype=np.float32)[:, None, None] ** 2) * np.ones((4, 16, 16), np.float32)
    out = denoise_slices(MeanOfNeighbours(), volume, device=torch.device("cpu"), batch=3, mixed_precision=False)
    assert out[:, 0, 0].tolist() == [1.0, 2.0, 5.0, 4.0]  # slices hold 0, 1, 4, 9; mirrored at both ends


def test_a_saved_model_keeps_its_formulation_and_context(tmp_path):
    net = ResidualUNet(width=4, depth=2, in_channels=5)
    normalizer = IntensityNormalizer.for_volume(np.zeros((3, 16, 16), np.float32) - 1000, "CT")
    TrainedModel(net, normalizer, "CT", formulation="recorrupted").save(tmp_path)
    loaded = TrainedModel.load(tmp_path)
    assert loaded.network.in_channels == 5 and loaded.formulation == "recorrupted"
    meta = json.loads((tmp_path / api.MODEL_INFO_FILE).read_text())
    assert meta["in_channels"] == 5 and meta["formulation"] == "recorrupted"


def test_a_model_saved_before_context_slices_loads_as_the_paper_network(tmp_path):
    net = ResidualUNet(width=4, depth=2)
    normalizer = IntensityNormalizer.for_volume(np.zeros((3, 16, 16), np.float32) - 1000, "CT")
    TrainedModel(net, normalizer, "CT").save(tmp_path)
    payload = torch.load(tmp_path / api.MODEL_FILE, weights_only=True)
    for key in ("in_channels", "formulation"):
        del payload["meta"][key]
    torch.save(payload, tmp_path / api.MODEL_FILE)
    loaded = TrainedModel.load(tmp_path)
    assert loaded.network.in_channels == 1 and loaded.formulation == "paper"


def test_outer_pairs_are_the_maps_of_slices_three_apart():
    calls = []

    def match(sub: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        calls.append(sub[:, 0, 0].tolist())
        return torch.ones((sub.shape[0] - 1, *sub.shape[1:]), dtype=torch.bool)

    volume = torch.arange(8, dtype=torch.float32)[:, None, None].expand(8, 4, 4)
    outer = outer_pair_weights(volume, None, match)
    assert calls == [[0, 3, 6], [1, 4, 7], [2, 5]]
    # pair (j, j+1) takes the map of (j-1, j+2): pairs 1..5 have one, pair 0 and pair 6 do not
    assert [bool(outer[j].all()) for j in range(7)] == [False, True, True, True, True, True, False]


def test_the_sigma_scale_sets_the_level_of_the_synthetic_noise():
    shape, sigma, alpha = (4, 40, 40), 0.05, 0.5
    volume = torch.ones(shape)  # noise-free: input minus target is (alpha + 1 / alpha) z

    def spread(scale: float) -> float:
        sampler = _white_sampler(volume, sigma, alpha=alpha, sigma_scale=scale, seed=2)
        batch = sampler.sample(32)
        return float((batch.inputs[:, 1:2] - batch.target).std()) / (alpha + 1 / alpha)

    assert spread(1.0) == pytest.approx(sigma, rel=0.03)
    assert spread(0.8) == pytest.approx(0.8 * sigma, rel=0.03)


def test_the_default_sigma_scale_depends_on_the_modality():
    assert DenoiseConfig().sigma_scale_for("CT") == 0.9
    assert DenoiseConfig().sigma_scale_for("MR") == 1.0
    assert DenoiseConfig(recorruption_sigma_scale=0.7).sigma_scale_for("MR") == 0.7
    with pytest.raises(ValueError, match="recorruption_sigma_scale"):
        DenoiseConfig(recorruption_sigma_scale=0.0)


def test_the_configured_network_reads_its_context_only_in_the_recorrupted_formulation():
    assert DenoiseConfig().input_context == 1
    assert DenoiseConfig(context_slices=2).input_context == 2
    assert DenoiseConfig(formulation="paper", context_slices=2).input_context == 0
