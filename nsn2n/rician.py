"""The noise floor of magnitude MR images: from a denoised magnitude back to the signal (Rician bias).

Rule. An MR magnitude image is the modulus of a complex image whose real and imaginary parts carry
independent Gaussian noise of standard deviation ``sigma``. A pixel of true signal ``A`` then reads a
Rician-distributed magnitude ``M`` (Gudbjartsson & Patz, "The Rician distribution of noisy MRI data",
Magn. Reson. Med. 34(6), 1995), whose mean is not ``A`` but

    E[M] = sigma * sqrt(pi / 2) * L_{1/2}(-A^2 / (2 sigma^2))

with ``L_{1/2}`` the Laguerre function of order 1/2 (Koay & Basser, J. Magn. Reson. 179, 2006, eq. 3):
``sqrt(pi / 2) sigma`` (1.25 sigma) where there is no signal at all (air, a Rayleigh distribution), about
``sqrt(A^2 + sigma^2)`` at moderate signal and ``A + sigma^2 / (2 A)`` at high signal. The mean lies
above the signal everywhere, most in air and dark tissue (CSF in T1, cortical bone, the lung).

A denoiser trained on the noisy volume itself, with nothing but noisy targets, learns the *expected*
magnitude: it removes the noise's spread, never its mean. The signal follows by inverting the mean,
pixel by pixel, with the local ``sigma`` of the noise model (the level of the tissue, where the noise
is nearly Gaussian):

    A = mean^-1(denoised / sigma) * sigma,    0 where denoised <= sqrt(pi / 2) sigma

This is the standard correction of the noise floor (the "mean" inversion; Koay & Basser's fixed-point
variant solves for the second moment instead) applied to a denoised image, where the expected magnitude
is known far better than in a single noisy pixel.

Where it applies: magnitude data only (the caller checks: an MR series without negative values), with
the level of the complex noise. The errors are not symmetric: a level set too high maps dark tissue
(intensities under 1.25 times it) to zero, one set too low leaves part of the floor. So the run caps
the noise model's level, which anatomy that changes between thick slices raises, at an in-plane bound
(:func:`nsn2n.noise.inplane_noise_sigma`; on the bundled 7 mm MR sample 14.8 a.u. against the model's
25.6). Multi-coil magnitude images combined by sum of squares follow a
non-central chi distribution whose floor lies higher still; correcting it as Rician removes part of the
floor, never more than there is.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["RAYLEIGH_MEAN", "rician_mean", "rician_signal"]

#: Mean magnitude of pure noise (a Rayleigh distribution) in units of ``sigma``: ``sqrt(pi / 2)``.
RAYLEIGH_MEAN = math.sqrt(math.pi / 2.0)

# The mean as a function of A / sigma, tabulated for the inversion: fine steps where it bends (A < 4 sigma),
# coarser above, up to where its asymptote A + sigma^2 / (2A) is exact to 1e-5 sigma.
_TABLE_MAX = 60.0
_SNR_TABLE = np.concatenate([np.linspace(0.0, 4.0, 4001), np.linspace(4.01, _TABLE_MAX, 5600)])


def rician_mean(snr: np.ndarray | float) -> np.ndarray:
    """``E[M] / sigma`` of a Rician magnitude with signal ``A = snr * sigma`` (Koay & Basser 2006, eq. 3).

    ``L_{1/2}(-x) = e^{-x/2} [(1 + x) I_0(x/2) + x I_1(x/2)]``; written with the exponentially scaled
    Bessel functions ``i0e``, ``i1e`` so that it stays finite at any signal.
    """
    a = np.asarray(snr, dtype=np.float64)
    half_x = a * a / 4.0  # x / 2 with x = A^2 / (2 sigma^2)
    return RAYLEIGH_MEAN * ((1.0 + 2.0 * half_x) * special.i0e(half_x) + 2.0 * half_x * special.i1e(half_x))


_MEAN_TABLE = rician_mean(_SNR_TABLE)


def rician_signal(mean: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    """The signal ``A`` whose Rician mean magnitude is ``mean``, for noise level ``sigma`` (same units).

    Args:
        mean: expected magnitudes, e.g. a denoised magnitude image; any shape.
        sigma: the complex noise's standard deviation, a scalar or an array broadcastable to ``mean``;
            positive.

    Returns:
        float32 array of ``mean``'s shape: 0 where ``mean <= sqrt(pi / 2) sigma`` (no signal has a lower
        mean), the inverse of :func:`rician_mean` above, and ``mean - sigma^2 / (2 mean)`` beyond the table
        (``mean > 60 sigma``, where that asymptote is exact to 1e-5 sigma).
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), m.shape)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError("rician_signal: sigma must be positive and finite")
    ratio = m / s
    inside = np.interp(ratio, _MEAN_TABLE, _SNR_TABLE)  # clamps to 0 below the Rayleigh mean
    beyond = ratio - 0.5 / np.maximum(ratio, 1.0)
    return (np.where(ratio > _MEAN_TABLE[-1], beyond, inside) * s).astype(np.float32)
