"""The denoiser must beat the naive through-slice average on the data it is built for (CPU, ~15 s).

A 3-slice mean is what anyone can do without training: where slices are independent it divides the noise
variance by three, and it blurs every structure that changes between slices. NS-N2N must do better on
a volume whose noise is correlated in-plane and independent between slices and whose anatomy moves from
slice to slice (as in CT): otherwise a method that trains a network per series is not worth running.
"""

import numpy as np
import scipy.ndimage as ndi

from bench.baselines import through_slice_mean
from nsn2n import DenoiseConfig, denoise_volume

FEW_STEPS = DenoiseConfig(
    max_steps=600,
    batch_size=8,
    crop_size=32,
    unet_width=8,
    unet_depth=2,
    learning_rate=3e-3,
    log_every_s=600,
    device="cpu",
    seed=3,
    num_threads=1,
)


def _moving_anatomy(depth: int = 10, size: int = 48, shift_px: float = 3.0) -> np.ndarray:
    """CT-like slab in HU whose organ and vessel move ``shift_px`` pixels per slice; a fixed bone."""
    zz, yy, xx = np.mgrid[0:depth, 0:size, 0:size].astype(np.float32)
    c = size / 2
    vol = np.full((depth, size, size), -1000.0, np.float32)
    body = ((yy - c) / (0.44 * size)) ** 2 + ((xx - c) / (0.4 * size)) ** 2 < 1
    vol[body] = 40.0
    organ = ((yy - 0.35 * size - shift_px * zz) / (0.1 * size)) ** 2 + ((xx - 0.6 * size) / (0.1 * size)) ** 2 < 1
    vol[organ & body] = 160.0
    vessel = (yy - 0.6 * size) ** 2 + (xx - 0.3 * size - shift_px * zz) ** 2 < (0.06 * size) ** 2
    vol[vessel & body] = 300.0
    bone = ((yy - 0.72 * size) / (0.08 * size)) ** 2 + ((xx - 0.62 * size) / (0.06 * size)) ** 2 < 1
    vol[bone] = 700.0
    return vol


def _correlated_noise(shape, sigma: float, seed: int) -> np.ndarray:
    """Gaussian-filtered (in-plane correlated) noise, independent between slices."""
    noise = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), (0, 1.0, 1.0))
    return (noise / noise.std() * sigma).astype(np.float32)


def test_nsn2n_beats_the_three_slice_mean_on_moving_anatomy():
    clean = _moving_anatomy()
    body = clean > -500
    noisy = clean + _correlated_noise(clean.shape, 40.0, seed=1)
    noise_only = _correlated_noise(clean.shape, 1.0, seed=1)
    assert abs(np.corrcoef(noise_only[1:].ravel(), noise_only[:-1].ravel())[0, 1]) < 0.05  # slices independent
    assert np.corrcoef(noise_only[:, :, 1:].ravel(), noise_only[:, :, :-1].ravel())[0, 1] > 0.5  # in-plane

    def rmse(vol: np.ndarray) -> float:
        return float(np.sqrt(np.mean((vol - clean)[body] ** 2)))

    mean3 = rmse(through_slice_mean(noisy, 3))
    assert mean3 < rmse(noisy)  # the naive average is a real competitor, not a straw man
    # Default (recorrupted) formulation: measured 0.85, 0.85, 0.78 of the 3-slice mean's RMSE with training
    # seeds 3, 4, 5 (a tiny network on 10 slices learns slowly from its noisier targets).
    denoised = rmse(denoise_volume(noisy, (1.0, 0.7, 0.7), "CT", FEW_STEPS).denoised)
    assert denoised < 0.92 * mean3, f"NS-N2N RMSE {denoised:.1f} HU vs 3-slice mean {mean3:.1f} HU"
    # The paper's formulation: neighbours match everywhere but on the moving organ (0.76 measured at 200 steps).
    paper = rmse(denoise_volume(noisy, (1.0, 0.7, 0.7), "CT", FEW_STEPS.replace(formulation="paper")).denoised)
    assert paper < 0.88 * mean3, f"paper NS-N2N RMSE {paper:.1f} HU vs 3-slice mean {mean3:.1f} HU"
