"""Noise simulation for the benchmark (protocol of /work/shared/research/data-eval.md §3).

* CT: sinogram-domain Poisson ("low-dose") noise, injected per axial slice: parallel-beam ``radon``
  (360 views over 180°), Poisson counts around ``I0·exp(−p)`` (clipped to ≥ 1), the log-domain count
  error back-projected with Hann-filtered FBP. Only the *noise* goes through FBP
  (``noisy = clean + FBP(noise sinogram)``, FBP is linear), so the clean volume stays the exact ground
  truth. The noise is correlated in-plane (blotchy, lag-1 ≈ 0.5) and independent across slices —
  the situation NS-N2N is built for and pixel-independence methods (N2V, ZS-N2N) are not.
  Each slice is padded with air to a square whose reconstruction circle covers the whole rectangle, so
  every pixel gets noise (no zero-noise corners).
* MR: Rician noise ``sqrt((x + σ·n1)² + (σ·n2)²)`` with σ a fraction of a reference intensity.

Every random draw is seeded per (seed, slice), so results do not depend on the number of workers and
every method sees the same noisy volume.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV effective energy, 1/mm
N_VIEWS = 360
FILTER = "hann"


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """HU -> linear attenuation (1/mm), clipped at 0 (air/vacuum)."""
    return np.clip(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0, None)


def _pad_square(img: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad a 2-D image to a square whose inscribed circle contains the whole original rectangle."""
    h, w = img.shape
    side = math.ceil(math.hypot(h, w)) + 2
    top, left = (side - h) // 2, (side - w) // 2
    out = np.full((side, side), fill, dtype=np.float64)
    out[top : top + h, left : left + w] = img
    return out, (slice(top, top + h), slice(left, left + w))


def sinogram_noise_slice(
    clean_hu: np.ndarray,
    pixel_mm: float,
    i0: float,
    seed: int,
    index: int,
    n_views: int = N_VIEWS,
    filter_name: str = FILTER,
    electronic_sigma: float = 0.0,
) -> np.ndarray:
    """Return the HU noise image of one slice for photon count ``i0`` per unattenuated ray.

    Args:
        clean_hu: 2-D clean slice in HU.
        pixel_mm: in-plane pixel size (mm), isotropic in-plane assumed.
        i0: incident photons per ray (1e4 ≈ 40 HU in a head, halving it raises σ by √2).
        seed, index: the generator is ``default_rng([seed, index])``.
        n_views: projection angles over 180°.
        filter_name: FBP filter (``hann`` gives the correlated soft-kernel texture).
        electronic_sigma: optional additive Gaussian electronic noise in counts.
    """
    from skimage.transform import iradon, radon

    rng = np.random.default_rng([seed, index])
    mu, crop = _pad_square(hu_to_mu(np.asarray(clean_hu, dtype=np.float64)), 0.0)
    theta = np.linspace(0.0, 180.0, n_views, endpoint=False)
    p = radon(mu, theta=theta, circle=True) * pixel_mm  # line integrals (dimensionless)
    counts = rng.poisson(i0 * np.exp(-p)).astype(np.float64)
    if electronic_sigma > 0:
        counts += rng.normal(0.0, electronic_sigma, counts.shape)
    dp = -np.log(np.maximum(counts, 1.0) / i0) - p
    noise_mu = iradon(dp / pixel_mm, theta=theta, filter_name=filter_name, circle=True, output_size=mu.shape[0])
    return (noise_mu[crop] * (1000.0 / MU_WATER_PER_MM)).astype(np.float32)


def _slice_job(args: tuple) -> np.ndarray:
    return sinogram_noise_slice(*args)


def sinogram_noise(
    clean_hu: np.ndarray,
    pixel_mm: float,
    i0: float,
    seed: int,
    workers: int = 1,
    n_views: int = N_VIEWS,
    filter_name: str = FILTER,
) -> np.ndarray:
    """HU noise volume (z, y, x) for a clean CT volume, slice by slice, optionally over processes."""
    jobs = [(clean_hu[z], pixel_mm, i0, seed, z, n_views, filter_name) for z in range(clean_hu.shape[0])]
    if workers <= 1:
        out = []
        for k, job in enumerate(jobs):
            out.append(_slice_job(job))
            print(
                f"\r[bench.noise] sinogram noise I0={i0:g}: slice {k + 1}/{len(jobs)}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            out = list(pool.map(_slice_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return np.stack(out).astype(np.float32)


def add_sinogram_noise(clean_hu: np.ndarray, pixel_mm: float, i0: float, seed: int, workers: int = 1) -> np.ndarray:
    """Noisy CT = clean + FBP(sinogram noise); the clean stays the exact ground truth."""
    return (clean_hu + sinogram_noise(clean_hu, pixel_mm, i0, seed, workers)).astype(np.float32)


def add_rician_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Rician (MR magnitude) noise: ``sqrt((x + σ·n1)² + (σ·n2)²)``, n1, n2 ~ N(0, 1)."""
    rng = np.random.default_rng([seed, 0x5EC])
    n1 = rng.standard_normal(clean.shape)
    n2 = rng.standard_normal(clean.shape)
    return np.sqrt((clean + sigma * n1) ** 2 + (sigma * n2) ** 2).astype(np.float32)


# --- measuring noise ---------------------------------------------------------------------------------


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def noise_stats(noise: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Std, lag-1 in-plane correlation (mean of x and y) and lag-1 inter-slice correlation of a noise field.

    ``mask`` (same shape) restricts every pair to voxels where both ends are inside.
    """
    m = np.ones(noise.shape, bool) if mask is None else mask
    stats = {"std": float(noise[m].std())}
    mx = m[:, :, 1:] & m[:, :, :-1]
    my = m[:, 1:, :] & m[:, :-1, :]
    stats["lag1_inplane"] = 0.5 * (
        _corr(noise[:, :, 1:][mx], noise[:, :, :-1][mx]) + _corr(noise[:, 1:, :][my], noise[:, :-1, :][my])
    )
    if noise.shape[0] > 1:
        mz = m[1:] & m[:-1]
        stats["lag1_slice"] = _corr(noise[1:][mz], noise[:-1][mz])
    return stats


def estimate_sigma_flat_roi(noisy: np.ndarray, mask: np.ndarray, window: int = 15, quantile: float = 0.1) -> float:
    """Noise σ from flat regions of the *noisy* volume (no ground truth used).

    ``skimage.restoration.estimate_sigma`` (wavelet MAD) under-estimates correlated noise several-fold,
    so baselines get σ from flat ROIs instead: inside ``mask`` (eroded by half a window), take the
    voxels whose heavily smoothed image has the lowest ``quantile`` of gradient magnitude, and return the
    median local (``window``×``window`` in-plane) standard deviation there.
    """
    x = noisy.astype(np.float64)
    size = (1, window, window)
    mean = ndimage.uniform_filter(x, size)
    var = np.maximum(ndimage.uniform_filter(x * x, size) - mean * mean, 0.0)
    smooth = ndimage.gaussian_filter(x, (0, 3, 3))
    grad = np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=2))
    st = np.zeros((1, 3, 3), bool)
    st[0] = True
    inner = ndimage.binary_erosion(mask, st, iterations=window // 2)
    if inner.sum() < 100:
        inner = mask
    cand = inner & (grad <= np.quantile(grad[inner], quantile))
    return float(np.median(np.sqrt(var[cand])))
