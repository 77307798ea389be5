"""Collaborative Wiener filtering with a pilot (nsn2n.collaborative_wiener): known answers on tiny volumes."""

import numpy as np
import pytest
import torch

from nsn2n.collaborative_wiener import (
    CollaborativeWienerParams,
    coefficient_variance,
    collaborative_wiener,
    dct_matrix,
)
from nsn2n.noise_model import NoiseModel, correlation_kernel

SMALL = CollaborativeWienerParams(block=4, group=8, search_radius=3, stride=2, slice_radius=1)


def _phantom(shape=(5, 24, 28)) -> torch.Tensor:
    """Piecewise-constant anatomy: a disc that grows through the slices and a bright band."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    disc = (y - 12) ** 2 + (x - 10) ** 2 < (5 + z) ** 2
    return torch.from_numpy((disc * 1.0 + (x > 20) * 0.6).astype(np.float32))


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean((a - b) ** 2)))


def test_the_dct_matrix_is_orthonormal():
    d = dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8), atol=1e-6, rtol=0)


def test_white_noise_has_unit_variance_in_every_coefficient():
    torch.testing.assert_close(coefficient_variance(None, 4), torch.ones(4, 4))
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    torch.testing.assert_close(coefficient_variance(delta, 4), torch.ones(4, 4), atol=1e-6, rtol=0)


def test_correlated_noise_puts_its_variance_in_the_low_frequencies():
    acf = np.zeros((7, 7))
    acf[3, 3] = 1.0
    acf[3, 2] = acf[3, 4] = acf[2, 3] = acf[4, 3] = 0.6
    variance = coefficient_variance(acf, 4)
    assert float(variance.sum()) == pytest.approx(16.0, rel=1e-5)  # orthonormal: the total is kept
    assert float(variance[0, 0]) > 2.0 > 0.5 > float(variance[3, 3])


def test_without_noise_the_input_comes_back():
    clean = _phantom()
    out = collaborative_wiener(clean, clean, torch.full_like(clean, 1e-6), params=SMALL)
    torch.testing.assert_close(out, clean, atol=1e-4, rtol=0)


def test_with_the_clean_signal_as_pilot_most_of_the_noise_goes():
    clean = _phantom()
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    out = collaborative_wiener(noisy, clean, torch.full_like(clean, 0.2), params=SMALL)
    assert _rmse(out, clean) < 0.5 * _rmse(noisy, clean)


def test_with_a_smoothed_pilot_the_result_beats_the_noisy_input():
    clean = _phantom()
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    pilot = torch.nn.functional.avg_pool2d(noisy[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    out = collaborative_wiener(noisy, pilot, torch.full_like(clean, 0.2), params=SMALL)
    assert _rmse(out, clean) < 0.8 * _rmse(noisy, clean)


def test_a_subset_of_slices_gives_the_values_of_the_whole_volume():
    clean = _phantom()
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    pilot = 0.5 * (noisy + clean)
    sigma = torch.full_like(clean, 0.2)
    whole = collaborative_wiener(noisy, pilot, sigma, params=SMALL)
    part = collaborative_wiener(noisy, pilot, sigma, params=SMALL, slices=[3, 0])
    torch.testing.assert_close(part, whole[[3, 0]], atol=1e-5, rtol=1e-5)


def test_correlated_noise_uses_the_noise_models_autocorrelation():
    kernel = correlation_kernel(np.pad(np.array([[0.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.0]]), 5))
    model = NoiseModel(np.ones((5, 3, 4), np.float32), kernel, (5, 24, 28), 0.5, "outer pairs")
    clean = _phantom()
    noise = model.sample(torch.full(clean.shape, 0.2), torch.Generator().manual_seed(3))
    out = collaborative_wiener(clean + noise, clean, torch.full_like(clean, 0.2), model.autocorrelation, SMALL)
    assert _rmse(out, clean) < 0.5 * _rmse(clean + noise, clean)


def test_slices_smaller_than_a_block_return_the_pilot():
    noisy, pilot = torch.rand(3, 3, 20), torch.rand(3, 3, 20)
    torch.testing.assert_close(collaborative_wiener(noisy, pilot, torch.ones_like(noisy), params=SMALL), pilot)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block": 1},
        {"group": 0},
        {"stride": 0},
        {"stride": 9},
        {"search_radius": -1},
        {"group": 500, "search_radius": 1},
    ],
)
def test_invalid_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        CollaborativeWienerParams(**kwargs)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="equal"):
        collaborative_wiener(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9), torch.zeros(3, 8, 8))


def test_groups_larger_than_a_corner_s_search_window_still_give_the_input_back_without_noise():
    # A corner block's 2 x 2 in-plane window on 3 slices offers 12 blocks inside the slice; a group of
    # 20 takes the nearest valid positions for the rest (repeats), which must leave the rule intact.
    clean = _phantom((3, 12, 11))
    params = CollaborativeWienerParams(block=8, group=20, search_radius=1, stride=2, slice_radius=1)
    out = collaborative_wiener(clean, clean, torch.full_like(clean, 1e-6), params=params)
    torch.testing.assert_close(out, clean, atol=1e-4, rtol=0)
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    assert _rmse(collaborative_wiener(noisy, clean, torch.full_like(clean, 0.2), params=params), clean) < 0.5 * 0.2


def test_each_reference_slice_is_announced_and_a_stop_ends_the_filtering():
    clean = _phantom()
    sigma = torch.full_like(clean, 0.2)
    calls: list[tuple[int, int]] = []
    collaborative_wiener(clean, clean, sigma, params=SMALL, slices=[0, 1], before_slice=lambda *a: calls.append(a))
    assert calls == [(0, 3), (1, 3), (2, 3)]  # slices 0 and 1 gather the groups referenced on 0, 1 and 2

    def stop(done: int, total: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        collaborative_wiener(clean, clean, sigma, params=SMALL, before_slice=stop)


def test_a_held_matching_is_filled_once_and_reused():
    clean = _phantom()
    generator = torch.Generator().manual_seed(5)
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=generator)
    sigma = torch.full_like(clean, 0.2)
    groups: dict[int, torch.Tensor] = {}
    first = collaborative_wiener(noisy, clean, sigma, params=SMALL, slices=[2], groups=groups)
    torch.testing.assert_close(first, collaborative_wiener(noisy, clean, sigma, params=SMALL, slices=[2]))
    assert sorted(groups) == [1, 2, 3]  # the references whose groups reach slice 2
    assert all(g.dtype == torch.int16 and g.shape[1:] == (SMALL.group, 3) for g in groups.values())
    assert all(bool((g[:, 0] == torch.tensor([z, 0, 0], dtype=torch.int16)).all()) for z, g in groups.items())
    # Another pilot with the matching held: the groups stay those of the first pilot, so the output differs
    # from the same pilot matched afresh, and equals the held call again.
    other = clean.flip(2)
    held = collaborative_wiener(noisy, other, sigma, params=SMALL, slices=[2], groups=groups)
    assert sorted(groups) == [1, 2, 3]
    assert not torch.allclose(held, collaborative_wiener(noisy, other, sigma, params=SMALL, slices=[2]))
    torch.testing.assert_close(held, collaborative_wiener(noisy, other, sigma, params=SMALL, slices=[2], groups=groups))
