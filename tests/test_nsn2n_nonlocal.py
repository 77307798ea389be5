"""Non-local means (nsn2n.nonlocal_means) and its blend with the network's output in denoise_volume."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from nsn2n import ConfigError, DenoiseConfig, denoise_volume
from nsn2n.api import WHITENING_MIN_CORRELATION, _whitened_comparison, _whitens_comparison
from nsn2n.errors import StopRequested
from nsn2n.noise_model import NoiseModel, correlation_kernel
from nsn2n.nonlocal_means import NonLocalMeansParams, effective_samples, nonlocal_means
from tests.conftest import TINY


def _phantom(shape=(12, 40, 36)) -> np.ndarray:
    """Piecewise-constant volume: a sphere and a slab on a background (values 0, 1, 1.6)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    sphere = (z - shape[0] / 2) ** 2 + (y - 18) ** 2 + (x - 14) ** 2 < 8**2
    return (sphere * 1.0 + (x > 26) * 1.6).astype(np.float32)


def test_a_constant_volume_stays_constant():
    volume = torch.full((6, 20, 24), 3.5)
    out = nonlocal_means(volume, torch.full_like(volume, 0.2))
    torch.testing.assert_close(out, volume)


def test_with_flat_weights_it_is_the_mean_over_the_mirrored_search_cube():
    # h far above every patch distance: every neighbour has weight 1, so the output is the box mean over
    # the (2s+1)^3 search cube of the volume mirrored at its faces (scipy's "mirror" = torch's "reflect").
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(9, 16, 14)).astype(np.float32)
    params = NonLocalMeansParams(patch_radius=1, search_radius=2, h_factor=1e6)
    out = nonlocal_means(torch.from_numpy(volume), torch.ones(volume.shape), params).numpy()
    expected = ndimage.uniform_filter(volume.astype(np.float64), size=5, mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-4)


def _brute_force(volume: np.ndarray, sigma: float, params: NonLocalMeansParams) -> np.ndarray:
    """The rule of nsn2n.nonlocal_means written out voxel by voxel on the mirrored volume (float64)."""
    (pz, py, px), (sz, sy, sx) = params.patch_radii, params.search_radii
    r = params.reach
    padded = np.pad(volume.astype(np.float64), r, mode="reflect")
    h2 = (params.h_factor * sigma) ** 2
    out = np.empty(volume.shape)
    for z, y, x in np.ndindex(*volume.shape):
        c = (z + r, y + r, x + r)
        patch = padded[c[0] - pz : c[0] + pz + 1, c[1] - py : c[1] + py + 1, c[2] - px : c[2] + px + 1]
        total = weights = 0.0
        for dz, dy, dx in np.ndindex(2 * sz + 1, 2 * sy + 1, 2 * sx + 1):
            n = (c[0] + dz - sz, c[1] + dy - sy, c[2] + dx - sx)
            other = padded[n[0] - pz : n[0] + pz + 1, n[1] - py : n[1] + py + 1, n[2] - px : n[2] + px + 1]
            distance = np.mean((patch - other) ** 2)
            weight = np.exp(-max(distance - 2 * sigma**2, 0.0) / h2)
            total += weight * padded[n]
            weights += weight
        out[z, y, x] = total / weights
    return out


@pytest.mark.parametrize(
    "params",
    [
        NonLocalMeansParams(patch_radius=1, search_radius=2),
        NonLocalMeansParams(patch_radius=1, search_radius=2, patch_radius_z=0, search_radius_z=1),
        NonLocalMeansParams(patch_radius=2, search_radius=1, patch_radius_z=1, search_radius_z=0, h_factor=1.3),
    ],
    ids=["isotropic", "thin-z", "no-z-search"],
)
def test_it_follows_the_rule_voxel_by_voxel(params):
    # Against a direct, loop-by-loop reading of the module's rule, with patch and search radii that
    # differ through the slices: the shifted-view patch distances and the pairing of offsets are exact.
    rng = np.random.default_rng(4)
    volume = (_phantom((7, 11, 10)) + rng.normal(0, 0.3, (7, 11, 10))).astype(np.float32)
    out = nonlocal_means(torch.from_numpy(volume), torch.full(volume.shape, 0.3), params).numpy()
    np.testing.assert_allclose(out, _brute_force(volume, 0.3, params), atol=2e-5)


def test_patches_can_be_compared_on_a_map_of_the_volume():
    # Compared on a constant, every patch matches every other: each voxel becomes the plain mean over its
    # search cube of the volume itself (mirrored at the faces), whatever the volume's own patches are.
    rng = np.random.default_rng(6)
    volume = rng.normal(size=(9, 16, 14)).astype(np.float32)
    params = NonLocalMeansParams(patch_radius=1, search_radius=2)
    out = nonlocal_means(
        torch.from_numpy(volume), torch.ones(volume.shape), params, compare=lambda slab: torch.zeros_like(slab)
    ).numpy()
    expected = ndimage.uniform_filter(volume.astype(np.float64), size=5, mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-4)
    same = nonlocal_means(torch.from_numpy(volume), torch.ones(volume.shape), params, compare=lambda slab: slab)
    torch.testing.assert_close(same, nonlocal_means(torch.from_numpy(volume), torch.ones(volume.shape), params))
    with pytest.raises(ValueError, match="shape"):
        nonlocal_means(torch.from_numpy(volume), torch.ones(volume.shape), params, compare=lambda slab: slab[1:])


def test_without_search_through_the_slices_no_slice_borrows_from_another():
    # search_radius_z = 0: the neighbours are in the voxel's own slice (the patches still span slices),
    # so a slice of constant value comes out unchanged whatever its neighbours hold.
    rng = np.random.default_rng(5)
    volume = rng.normal(0, 1, (6, 12, 12)).astype(np.float32)
    volume[3] = 2.0
    params = NonLocalMeansParams(patch_radius=1, search_radius=2, search_radius_z=0)
    out = nonlocal_means(torch.from_numpy(volume), torch.ones(volume.shape), params).numpy()
    np.testing.assert_allclose(out[3], 2.0, atol=1e-6)
    assert np.abs(out[2] - volume[2]).max() > 0.1


def test_it_removes_white_noise_and_keeps_edges():
    clean = _phantom()
    sigma = 0.2
    noisy = clean + np.random.default_rng(1).normal(0, sigma, clean.shape).astype(np.float32)
    out = nonlocal_means(torch.from_numpy(noisy), torch.full(clean.shape, sigma)).numpy()
    rmse_in = np.sqrt(np.mean((noisy - clean) ** 2))
    rmse_out = np.sqrt(np.mean((out - clean) ** 2))
    assert rmse_out < 0.4 * rmse_in
    # The 1.6 step between the background and the slab survives (a box mean of 7 would halve it at x = 26/27).
    step = out[2:-2, 5:-5, 28].mean() - out[2:-2, 5:-5, 25].mean()
    assert step == pytest.approx(1.6, abs=0.1)


def test_the_local_level_sets_how_much_is_averaged():
    # The same noisy volume filtered with a level 4x too low keeps most of its noise.
    clean = _phantom()
    noisy = clean + np.random.default_rng(2).normal(0, 0.2, clean.shape).astype(np.float32)
    right = nonlocal_means(torch.from_numpy(noisy), torch.full(clean.shape, 0.2)).numpy()
    low = nonlocal_means(torch.from_numpy(noisy), torch.full(clean.shape, 0.05)).numpy()
    assert np.sqrt(np.mean((low - clean) ** 2)) > 2 * np.sqrt(np.mean((right - clean) ** 2))


def test_chosen_slices_and_slabs_give_the_same_values_as_the_whole_volume():
    rng = np.random.default_rng(3)
    volume = torch.from_numpy((_phantom() + rng.normal(0, 0.2, _phantom().shape)).astype(np.float32))
    sigma = torch.full(volume.shape, 0.2)
    whole = nonlocal_means(volume, sigma)
    picked = [0, 1, 2, 3, 7, 11]
    part = nonlocal_means(volume, sigma, NonLocalMeansParams(slab=2), slices=picked)
    torch.testing.assert_close(part, whole[picked], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("spacing", "patch_radii", "search_radii"),
    [
        ((1.5, 1.5, 1.5), (2, 2, 2), (3, 3, 3)),  # isotropic: the cube
        ((0.5, 1.0, 1.0), (2, 2, 2), (3, 3, 3)),  # slices thinner than pixels: never more than in-plane
        ((4.5, 1.5, 1.5), (1, 2, 2), (1, 3, 3)),  # 3 pixels per slice: 2/3 -> 1 and 1
        ((5.0, 1.0, 1.0), (0, 2, 2), (1, 3, 3)),  # 5 mm MR: one-slice patches, search the neighbours
        ((10.0, 0.5, 0.5), (0, 2, 2), (1, 3, 3)),  # very thick: still the neighbouring slices
        ((1.25, 0.7, 0.7), (1, 2, 2), (2, 3, 3)),  # 1.12 -> 1 and 1.68 -> 2
    ],
)
def test_thick_slices_get_a_box_of_about_the_same_millimetres(spacing, patch_radii, search_radii):
    params = NonLocalMeansParams.for_spacing(spacing, h_factor=0.7)
    assert (params.patch_radii, params.search_radii, params.h_factor) == (patch_radii, search_radii, 0.7)


def _gaussian_autocorrelation(width_px: float, half: int = 6) -> np.ndarray:
    """The autocorrelation of white noise blurred by a Gaussian of ``width_px``: exp(-r^2 / (4 w^2))."""
    lags = np.arange(-half, half + 1)
    return np.exp(-(lags[:, None] ** 2 + lags[None, :] ** 2) / (4.0 * width_px**2))


def test_effective_samples_count_voxels_for_white_noise_and_fewer_for_correlated_noise():
    white = np.zeros((5, 5))
    white[2, 2] = 1.0
    assert effective_samples((2, 2, 2), None) == effective_samples((2, 2, 2), white) == 125
    assert effective_samples((0, 1, 1), None) == 9
    # Perfectly correlated over the patch: the whole slice of a patch is one sample, whatever its size.
    assert effective_samples((1, 2, 2), np.ones((9, 9))) == pytest.approx(3.0)
    # Known answer, a 1 x 3 patch in noise whose horizontal neighbours correlate 0.5: N^2 / sum rho^2
    # over the 9 ordered voxel pairs = 9 / (3 * 1 + 4 * 0.25) (lag 2 uncorrelated).
    pair = np.zeros((3, 3))
    pair[1] = [0.5, 1.0, 0.5]
    assert effective_samples((0, 0, 1), pair) == pytest.approx(9 / 4)
    blotchy = effective_samples((2, 2, 2), _gaussian_autocorrelation(1.0))
    assert 20 < blotchy < 125 / 2
    with pytest.raises(ValueError, match="odd square"):
        effective_samples((1, 1, 1), np.ones((4, 4)))


@pytest.mark.parametrize(
    ("spacing", "width_px", "patch_radii"),
    [
        ((1.0, 1.0, 1.0), 0.0, (1, 1, 1)),  # thin slices, white noise (MR): 27 samples, the small patch
        ((1.0, 1.0, 1.0), 1.0, (2, 2, 2)),  # thin slices, blotchy noise (CT kernel): too few, 5^3
        ((5.0, 1.0, 1.0), 0.0, (0, 2, 2)),  # thick slices: 3 x 3 x 1 holds 9 samples, 5 x 5 x 1
    ],
)
def test_the_patch_is_small_where_it_still_holds_enough_noise_samples(spacing, width_px, patch_radii):
    correlation = None if width_px == 0 else _gaussian_autocorrelation(width_px)
    params = NonLocalMeansParams.for_noise(spacing, correlation, h_factor=0.7)
    assert params.patch_radii == patch_radii
    assert params.h_factor == 0.7
    assert params.search_radii == NonLocalMeansParams.for_spacing(spacing).search_radii


def test_the_noise_model_s_autocorrelation_is_its_kernel_correlated_with_itself():
    kernel = np.zeros((3, 3), np.float32)
    kernel[1, 1], kernel[1, 2] = 0.8, 0.6  # unit energy; horizontal neighbours correlate 0.48
    model = NoiseModel(np.ones((1, 1, 1), np.float32), kernel, (1, 16, 16), 0.48, "test")
    rho = model.autocorrelation
    assert rho.shape == (5, 5)
    assert rho[2, 2] == pytest.approx(1.0)
    assert rho[2, 3] == rho[2, 1] == pytest.approx(0.48)
    assert np.abs(np.delete(rho.ravel(), [11, 12, 13])).max() == pytest.approx(0.0)


def test_a_spacing_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="positive and finite"):
        NonLocalMeansParams.for_spacing((0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        NonLocalMeansParams.for_spacing((2.0, float("nan"), 1.0))


def test_patches_are_compared_whitened_for_correlated_noise_and_3d_patches_only():
    def model(lag1: float) -> NoiseModel:
        return NoiseModel(np.ones((1, 4, 4), np.float32), np.ones((1, 1), np.float32), (1, 32, 32), lag1, "test")

    thin, thick = NonLocalMeansParams.for_spacing((1.5, 1.5, 1.5)), NonLocalMeansParams.for_spacing((5.0, 1.0, 1.0))
    assert _whitens_comparison(model(0.65), thin)  # CT-like noise, 5-slice patches
    assert not _whitens_comparison(model(0.65), thick)  # single-slice patches
    assert not _whitens_comparison(model(0.02), thin)  # MR-like white noise
    assert _whitens_comparison(model(WHITENING_MIN_CORRELATION), thin)
    # The map keeps a slab's shape, and leaves a slab of white noise's model as it is.
    slab = torch.from_numpy(np.random.default_rng(7).normal(size=(5, 20, 18)).astype(np.float32))
    torch.testing.assert_close(_whitened_comparison(model(0.0))(slab), slab, atol=1e-5, rtol=0)
    kernel = correlation_kernel(_gaussian_autocorrelation(0.5**0.5))
    blotchy = NoiseModel(np.ones((1, 4, 4), np.float32), kernel, (1, 32, 32), 0.6, "test")
    assert _whitened_comparison(blotchy)(slab).shape == slab.shape


def test_it_rejects_bad_input():
    volume = torch.zeros(4, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        nonlocal_means(volume, torch.zeros(4, 8, 7))
    with pytest.raises(ValueError, match="out of range"):
        nonlocal_means(volume, torch.ones_like(volume), slices=[4])
    with pytest.raises(ValueError, match="h_factor"):
        NonLocalMeansParams(h_factor=0.0)
    with pytest.raises(ValueError, match="search_radius_z"):
        NonLocalMeansParams(search_radius_z=-1)


def test_the_weight_is_validated():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="nonlocal_weight"):
            DenoiseConfig(nonlocal_weight=bad)
    with pytest.raises(ConfigError, match="nonlocal_h_factor"):
        DenoiseConfig(nonlocal_h_factor=0.0)
    assert DenoiseConfig(nonlocal_weight=0.25).nonlocal_weight_for("CT") == 0.25
    assert DenoiseConfig(nonlocal_weight=0.0).nonlocal_weight_for("MR") == 0.0


def test_the_default_weight_is_the_modality_s():
    config = DenoiseConfig()
    assert config.nonlocal_weight_for("CT") == config.nonlocal_weight_for("ct") == 0.35
    assert config.nonlocal_weight_for("MR") == 0.7
    assert config.nonlocal_weight_for("PT") == 0.7  # modalities without their own: MR's


def test_the_output_is_the_convex_blend_of_the_network_and_the_filter():
    # One trained network, three inference-only runs (weights 0, 1 and 0.3): the blend is exactly the
    # convex combination of the other two (CT: no Rician correction after it; padding-free float input).
    rng = np.random.default_rng(4)
    clean = _phantom((8, 40, 36)) * 400.0 - 200.0
    noisy = clean + rng.normal(0, 60.0, clean.shape).astype(np.float32)
    config = dataclasses.replace(TINY, max_steps=30, nonlocal_weight=0.0)
    trained = denoise_volume(noisy, (2.0, 1.0, 1.0), "CT", config)
    runs = {
        w: denoise_volume(
            noisy, (2.0, 1.0, 1.0), "CT", dataclasses.replace(config, nonlocal_weight=w), initial_model=trained.model
        ).denoised
        for w in (0.0, 1.0, 0.3)
    }
    np.testing.assert_allclose(runs[0.0], trained.denoised, atol=1e-3)
    np.testing.assert_allclose(runs[0.3], 0.7 * runs[0.0] + 0.3 * runs[1.0], atol=0.05)
    assert np.sqrt(np.mean((runs[1.0] - clean) ** 2)) < 0.6 * 60.0  # the filter alone denoises


def test_whitened_comparison_is_opt_in_and_follows_the_noise(caplog):
    # Blotchy CT-like noise (Gaussian-filtered in-plane, lag 1 about 0.7) on 2 mm slices of 1 mm pixels
    # (3-slice patches): the opt-in whitens the comparison and changes the output; off, nothing whitens.
    rng = np.random.default_rng(8)
    clean = _phantom((10, 40, 36)) * 400.0 - 200.0
    blotchy = ndimage.gaussian_filter(rng.normal(size=clean.shape), (0, 1.0, 1.0))
    noisy = (clean + 60.0 * blotchy / blotchy.std()).astype(np.float32)
    config = dataclasses.replace(TINY, max_steps=20, nonlocal_weight=0.0)
    trained = denoise_volume(noisy, (2.0, 1.0, 1.0), "CT", config)
    outputs = {}
    for whitening in (False, True):
        caplog.clear()
        with caplog.at_level("INFO", logger="nsn2n.api"):
            run = denoise_volume(
                noisy,
                (2.0, 1.0, 1.0),
                "CT",
                dataclasses.replace(config, nonlocal_weight=1.0, nonlocal_whitening=whitening),
                initial_model=trained.model,
            )
        assert ("compared whitened" in caplog.text) == whitening
        assert run.report.noise_model.lag1_correlation > 0.3
        outputs[whitening] = run.denoised
    assert np.abs(outputs[True] - outputs[False]).max() > 1.0
    for out in outputs.values():
        assert np.sqrt(np.mean((out - clean) ** 2)) < 0.8 * 60.0


@pytest.mark.parametrize(("blur_px", "patch_radii"), [(0.0, "(1, 1, 1)"), (1.0, "(2, 2, 2)")])
def test_a_run_takes_the_small_patch_for_white_noise_only(caplog, blur_px, patch_radii):
    # Isotropic voxels: white noise (MR-like) gets the 3 x 3 x 3 patch from the run's own noise model,
    # blotchy noise (a CT kernel, lag 1 about 0.7) keeps 5 x 5 x 5.
    rng = np.random.default_rng(9)
    clean = _phantom((8, 40, 36)) * 400.0 - 200.0
    noise = rng.normal(size=clean.shape)
    if blur_px:
        noise = ndimage.gaussian_filter(noise, (0, blur_px, blur_px))
    noisy = (clean + 60.0 * noise / noise.std()).astype(np.float32)
    with caplog.at_level("INFO", logger="nsn2n.api"):
        denoise_volume(noisy, (1.0, 1.0, 1.0), "CT", dataclasses.replace(TINY, max_steps=2, nonlocal_weight=0.5))
    assert f"patch radii {patch_radii}" in caplog.text


def test_each_slab_is_announced_and_a_stop_ends_the_filtering():
    volume = torch.from_numpy(_phantom((6, 20, 18)))
    sigma = torch.full(volume.shape, 0.2)
    calls: list[tuple[int, int]] = []
    params = NonLocalMeansParams(slab=2)
    nonlocal_means(volume, sigma, params, before_slab=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 6), (2, 6), (4, 6)]

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise StopRequested("stop")

    with pytest.raises(StopRequested):
        nonlocal_means(volume, sigma, params, before_slab=stop)
