"""The removed-anatomy index on synthetic volumes with known answers (numpy/scipy only, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qa_report.residual_structure import DEFAULT_THRESHOLD, evenly_spaced_slices, removed_structure_index


def _phantom(slices: int = 6, n: int = 96) -> np.ndarray:
    """Discs and a bar with 50-200 unit edges; one disc moves between slices."""
    yy, xx = np.mgrid[:n, :n]
    vol = np.empty((slices, n, n))
    for z in range(slices):
        img = np.full((n, n), 100.0)
        img[(yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.36 * n) ** 2] = 200.0
        img[(yy - 0.42 * n) ** 2 + (xx - 0.36 * n - z) ** 2 < (0.08 * n) ** 2] = 300.0
        img[int(0.3 * n) : int(0.7 * n), int(0.62 * n) : int(0.66 * n)] = 50.0
        vol[z] = img
    return vol


def _noise(shape, kind: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(shape)
    if kind == "white":
        return 20.0 * white
    if kind == "correlated":  # in-plane correlated, independent between slices (CT-like)
        blurred = ndimage.gaussian_filter(white, (0, 1, 1))
        return 20.0 * blurred / blurred.std()
    ramp = np.linspace(10.0, 40.0, shape[2])[None, None, :]  # noise level changing across the image
    return white * ramp


@pytest.mark.parametrize("kind", ["white", "correlated", "nonstationary"])
def test_pure_noise_removed_is_quiet(kind):
    rng = np.random.default_rng(1)
    clean = _phantom()
    noise = _noise(clean.shape, kind, rng)
    perfect = removed_structure_index(clean + noise, clean)
    half = removed_structure_index(clean + noise, clean + 0.5 * noise)
    assert abs(perfect.index) < 0.2 and not perfect.fires
    assert abs(half.index) < 0.2 and not half.fires


@pytest.mark.parametrize("kind", ["white", "correlated", "nonstationary"])
def test_removed_edges_fire(kind):
    rng = np.random.default_rng(2)
    clean = _phantom()
    noisy = clean + _noise(clean.shape, kind, rng)
    blurred = removed_structure_index(noisy, ndimage.gaussian_filter(noisy, (0, 2, 2)))
    assert blurred.index > 2 * DEFAULT_THRESHOLD and blurred.fires
    # Edges removed but every bit of noise kept: the difference image is pure anatomy.
    anatomy_only = removed_structure_index(noisy, noisy - (clean - ndimage.gaussian_filter(clean, (0, 3, 3))))
    assert anatomy_only.fires


def test_index_grows_with_the_amount_of_removed_anatomy():
    rng = np.random.default_rng(3)
    clean = _phantom()
    noise = _noise(clean.shape, "white", rng)
    lost = clean - ndimage.gaussian_filter(clean, (0, 2, 2))
    # output = clean - a * lost: the fraction a of the edges' high-pass part is gone (a = 1: blurred).
    values = [removed_structure_index(clean + noise, clean - a * lost).index for a in (0.0, 0.3, 1.0)]
    assert abs(values[0]) < 0.2
    assert values[0] < values[1] < values[2]


def test_scale_invariant_and_2d_input():
    rng = np.random.default_rng(4)
    clean = _phantom()
    noisy = clean + _noise(clean.shape, "white", rng)
    out = ndimage.gaussian_filter(noisy, (0, 1.5, 1.5))
    a = removed_structure_index(noisy, out).index
    b = removed_structure_index(1000.0 * noisy - 7.0, 1000.0 * out - 7.0).index
    assert a == pytest.approx(b, rel=1e-9)
    one = removed_structure_index(noisy[2], out[2])
    assert one.edge_pixels > 0 and np.isfinite(one.index)


def test_identity_and_bad_input():
    vol = _phantom(2)
    same = removed_structure_index(vol, vol)
    assert same.index == 0.0 and not same.fires
    flat = removed_structure_index(np.ones((2, 16, 16)), np.zeros((2, 16, 16)))
    assert np.isnan(flat.index) and not flat.fires  # no edges: no verdict
    with pytest.raises(ValueError, match="shape"):
        removed_structure_index(vol, vol[:1])
    valid = np.zeros(vol.shape, bool)
    valid[:, 10:80, 10:80] = True
    assert removed_structure_index(vol, vol, valid).edge_pixels > 0


def test_evenly_spaced_slices_keep_the_ends_and_the_count():
    assert list(evenly_spaced_slices(10, None)) == list(range(10))
    assert list(evenly_spaced_slices(10, 10)) == list(range(10))
    picked = evenly_spaced_slices(300, 32)
    assert len(picked) == 32 and picked[0] == 0 and picked[-1] == 299
    assert np.all(np.diff(picked) >= 9)
    assert list(evenly_spaced_slices(7, 1)) == [3]
    with pytest.raises(ValueError):
        evenly_spaced_slices(7, 0)


def test_sampled_slices_give_the_whole_volume_index_restricted_to_them():
    """Each sampled slice keeps its real neighbours for the gradient, so sampling only restricts the index."""
    rng = np.random.default_rng(5)
    clean = _phantom(slices=11)
    noisy = clean + _noise(clean.shape, "correlated", rng)
    out = ndimage.gaussian_filter(noisy, (0.7, 1.2, 1.2))  # smooths across slices too: neighbours matter
    padding = np.zeros(clean.shape, bool)
    padding[:, :, :5] = True
    picked = evenly_spaced_slices(clean.shape[0], 4)
    restricted = np.zeros(clean.shape, bool)
    restricted[picked] = True
    sampled = removed_structure_index(noisy, out, ~padding, max_slices=4)
    whole = removed_structure_index(noisy, out, ~padding & restricted)
    assert sampled.slices == 4 and whole.slices == clean.shape[0]
    assert sampled.index == pytest.approx(whole.index, rel=1e-9)
    assert sampled.edge_pixels == whole.edge_pixels
    every = removed_structure_index(noisy, out, ~padding, max_slices=clean.shape[0])
    assert every.index == removed_structure_index(noisy, out, ~padding).index


def test_record_section_and_warning_line():
    rng = np.random.default_rng(6)
    clean = _phantom()
    noisy = clean + _noise(clean.shape, "white", rng)
    fired = removed_structure_index(noisy, ndimage.gaussian_filter(noisy, (0, 2, 2)), threshold=1.5)
    quiet = removed_structure_index(noisy, clean)
    assert fired.as_dict() == {
        "index": pytest.approx(fired.index),
        "threshold": 1.5,
        "edge_pixels": fired.edge_pixels,
        "slices": clean.shape[0],
        "fired": True,
    }
    assert "\n" not in fired.warning and f"{fired.index:.2f}" in fired.warning and "removed structure" in fired.warning
    assert quiet.as_dict()["fired"] is False and quiet.warning is None
    empty = removed_structure_index(noisy, noisy, np.zeros(clean.shape, bool))
    assert empty.as_dict()["index"] is None and not empty.fires
