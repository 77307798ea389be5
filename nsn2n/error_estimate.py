"""How far the denoised volume is from the clean one: a Monte-Carlo Stein's unbiased risk estimate (SURE).

Rule. The noise figure "after" is the root mean square error of the output ``f(y)`` against the clean
volume ``s``, which nobody has. For Gaussian noise ``y = s + n``, ``n ~ N(0, Sigma)``, and a weakly
differentiable denoiser, Stein's lemma gives it without ``s`` (the generalised SURE for a noise
covariance ``Sigma``; Ramani, Blu & Unser, "Monte-Carlo SURE", IEEE TIP 17(9), 2008, for the Monte-Carlo
divergence):

    E ||f(y) - s||^2  =  E ||f(y) - y||^2  -  tr(Sigma)  +  2 E[ tr(J_f(y) Sigma) ]

summed over the pixels ``p`` of a mask ``M`` (the foreground of the evaluated slices):

* ``(f(y) - y)_p^2``: the squared change the denoiser made;
* ``Sigma_pp = sigma_p^2``: the local noise variance of the noise model (:mod:`nsn2n.noise_model`);
* ``(J Sigma)_pp``, estimated as ``b_p (f(y + eps b) - f(y))_p / eps`` with ``b`` a noise sample of
  covariance ``Sigma`` (:meth:`NoiseModel.sample` scaled by the local sigma), because
  ``E[b_p (J b)_p] = (J Sigma)_pp``; averaged over ``probes`` independent draws.

Why this figure: it is what the user means by "noise after" (the error of the image they receive), and
no training loss optimises it. The paired-slice difference of the output (:mod:`nsn2n.noise`) measures
what NS-N2N's own loss drives down, so it reports success whatever the network learnt; the first term
here alone would do the same (a denoiser that returns ``y`` scores zero change), and the divergence term
is what charges a denoiser for the noise it passes through. A white-noise SURE (``Sigma = diag sigma^2``)
would charge only ``sigma_p^2 J_pp``; correlated CT noise is smoothed far less than white noise by a
smoothing denoiser, so that version claims too much reduction: ``b`` here carries the noise model's
in-plane correlation.

Slices. Noise is independent between slices, so ``Sigma`` has no cross-slice terms: perturbing several
evaluated slices at once (and leaving the others unperturbed) keeps the estimate unbiased even for a
denoiser that reads neighbouring slices or the whole volume as context. To bound the cost only up to
``max_slices`` evenly spaced slices (among those with mask pixels) are evaluated; the denoiser runs
``1 + probes`` times on them.

``eps``: the perturbation is ``eps`` times a noise sample, i.e. ``eps`` local noise sigmas. The
forward difference's second-order term ``eps/2 b^T H b`` has zero mean when multiplied by ``b_p`` (odd
moments of a zero-mean Gaussian vanish), so its bias is of order ``eps^2``; its rounding error grows as
``1 / eps``. A denoiser's non-linearity acts on the scale of the noise (a non-local-means ``h``, a residual
clip at ``k sigma``), so ``eps = 0.1`` keeps the linearisation error near 1 % of the divergence, while a
float32 pass rounds ``f`` to about ``1e-7`` of its value, far below a tenth of the noise. Run both passes
in float32: bfloat16 rounds to about ``4e-3`` of the value, comparable to ``eps`` sigma, and would swamp
the difference.

Assumptions, stated with every figure:

* the noise is Gaussian with the noise model's covariance (local sigma, in-plane correlation kernel,
  independent between slices). The estimate is only as good as the noise level: a relative error ``e``
  of sigma shifts ``tr(Sigma)`` by about ``2 e`` of the noise power, and so the estimated squared error
  after by that much of the noise power before (a 5 % sigma error moves the estimated MSE by 10 % of
  ``sigma^2``, a large share when the denoiser removed most of the noise);
* the denoiser is a fixed function while it is probed: whatever it derived from ``y`` (trained weights,
  weight maps, a clip's local sigma, a filter's noise level) is held, so its dependence on ``y`` through
  them is not in the divergence;
* the MSE estimate can come out negative (a noise model that over-estimates sigma, Monte-Carlo spread on
  tiny masks): it is clamped at zero and :attr:`ErrorEstimate.clamped` says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .noise_model import NoiseModel

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MAX_SLICES",
    "DEFAULT_PROBES",
    "DEFAULT_SEED",
    "ErrorEstimate",
    "SliceDenoiser",
    "estimate_error",
    "evaluation_slices",
]

log = logging.getLogger(__name__)

#: Slices evaluated at most (evenly spaced over the slices that have mask pixels).
DEFAULT_MAX_SLICES = 16
#: Independent noise probes averaged for the divergence term (each costs one denoiser pass).
DEFAULT_PROBES = 2
#: Perturbation size in local noise sigmas (see the module docstring).
DEFAULT_EPS = 0.1
#: Seed of the probes' generator: the same volume and denoiser give the same figure.
DEFAULT_SEED = 0

#: ``denoise(volume, slices) -> outputs``: ``volume`` is a (D, H, W) array in the units of the noise model
#: in which only the slices listed in ``slices`` may differ from the original; ``slices`` is a sorted
#: (n,) int64 array of slice indices; the result is the (n, H, W) denoised values of exactly those slices,
#: computed the same way (same precision, same fixed weight maps and clip) on every call. The denoiser may
#: read any slice of ``volume`` as context and must not modify it.
SliceDenoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ErrorEstimate:
    """Noise before and estimated root mean square error after denoising, over the same pixels.

    Attributes:
        rmse_before: root mean square of the noise model's local sigma over the evaluated pixels.
        rmse_after: estimated root mean square error of the output against the clean volume
            (``sqrt`` of the MSE estimate clamped at zero).
        mse_after_raw: the MSE estimate before clamping (may be negative, see ``clamped``).
        mean_change_sq: mean of ``(f(y) - y)^2`` over the evaluated pixels.
        mean_divergence: mean of the estimated ``(J_f Sigma)_pp``.
        clamped: True when the MSE estimate was negative and was set to zero.
        slices: the evaluated slice indices.
        pixels: number of evaluated pixels (mask pixels of those slices).
        probes: noise probes averaged.
        eps: perturbation size in local noise sigmas.
    """

    rmse_before: float
    rmse_after: float
    mse_after_raw: float
    mean_change_sq: float
    mean_divergence: float
    clamped: bool
    slices: tuple[int, ...]
    pixels: int
    probes: int
    eps: float

    @property
    def ratio(self) -> float:
        """``rmse_after / rmse_before`` (NaN when there is no noise before)."""
        return self.rmse_after / self.rmse_before if self.rmse_before > 0 else float("nan")

    @property
    def reduction(self) -> float:
        """``1 - ratio``: the fraction of the noise (in RMS) the denoiser removed; negative if it added error."""
        return 1.0 - self.ratio

    @property
    def reduction_percent(self) -> float:
        """:attr:`reduction` in percent."""
        return 100.0 * self.reduction


def evaluation_slices(mask: np.ndarray | None, depth: int, max_slices: int = DEFAULT_MAX_SLICES) -> np.ndarray:
    """Sorted int64 indices of at most ``max_slices`` slices, evenly spaced over those with mask pixels.

    Evenly spaced (not the first ones) so that the figure covers the whole extent of the volume, whose
    noise level changes along it (CT noise grows with the body's width).
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be at least 1, got {max_slices}")
    candidates = np.arange(depth) if mask is None else np.flatnonzero(mask.reshape(depth, -1).any(axis=1))
    if candidates.size <= max_slices:
        return candidates.astype(np.int64)
    picks = np.round(np.linspace(0, candidates.size - 1, max_slices)).astype(np.int64)
    return candidates[np.unique(picks)].astype(np.int64)


def _check_inputs(volume: np.ndarray, noise_model: NoiseModel, mask: np.ndarray | None) -> None:
    if volume.ndim != 3:
        raise ValueError(f"volume: expected (D, H, W), got shape {volume.shape}")
    if tuple(volume.shape) != tuple(noise_model.shape):
        raise ValueError(f"volume shape {volume.shape} differs from the noise model's {noise_model.shape}")
    if not np.issubdtype(volume.dtype, np.floating):
        raise ValueError(f"volume: expected a floating-point array, got {volume.dtype}")
    if mask is not None and mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume's {volume.shape}")


def _run(denoise: SliceDenoiser, volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
    out = np.asarray(denoise(volume, slices))
    expected = (slices.size, *volume.shape[1:])
    if out.shape != expected:
        raise ValueError(f"denoiser returned shape {out.shape}, expected {expected} (one output per listed slice)")
    return out.astype(np.float64)


def estimate_error(
    denoise: SliceDenoiser,
    volume: np.ndarray,
    noise_model: NoiseModel,
    mask: np.ndarray | None = None,
    *,
    max_slices: int = DEFAULT_MAX_SLICES,
    probes: int = DEFAULT_PROBES,
    eps: float = DEFAULT_EPS,
    seed: int = DEFAULT_SEED,
    perturb_in_place: bool = False,
) -> ErrorEstimate:
    """Estimate the RMS error of ``denoise`` against the clean volume (Monte-Carlo SURE, module docstring).

    Args:
        denoise: the denoiser (:data:`SliceDenoiser`), called ``1 + probes`` times.
        volume: (D, H, W) float noisy volume ``y``, in the noise model's units.
        noise_model: the noise model of ``volume`` (:func:`nsn2n.noise_model.estimate_noise_model`).
        mask: (D, H, W) bool pixels that count (the foreground, without padding); ``None`` = all.
        max_slices: evaluate at most this many evenly spaced slices.
        probes: noise probes averaged for the divergence term.
        eps: perturbation size in local noise sigmas.
        seed: seed of the probes.
        perturb_in_place: write the perturbed slices into ``volume`` itself while the denoiser runs and
            restore their original values exactly afterwards (also on error), instead of perturbing a
            copy: saves one volume of memory; ``volume`` must be writable and not read by anyone else
            meanwhile.

    Returns:
        :class:`ErrorEstimate` over the mask pixels of the evaluated slices.

    Raises:
        ValueError: inconsistent shapes, no pixel to evaluate, a non-positive ``eps`` or ``probes``, or a
            denoiser output of the wrong shape.
    """
    _check_inputs(volume, noise_model, mask)
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive number, got {eps}")
    slices = evaluation_slices(mask, volume.shape[0], max_slices)
    sub_mask = np.ones((slices.size, *volume.shape[1:]), bool) if mask is None else mask[slices]
    pixels = int(sub_mask.sum())
    if pixels == 0:
        raise ValueError("the mask selects no pixel: nothing to evaluate")

    sigma = np.stack([noise_model.sigma_map(int(z)) for z in slices]).astype(np.float64)
    noisy = volume[slices].astype(np.float64)
    denoised = _run(denoise, volume, slices)
    change_sq = float(np.square(denoised - noisy)[sub_mask].sum())
    noise_power = float(np.square(sigma)[sub_mask].sum())

    generator = torch.Generator().manual_seed(seed)
    sigma_t = torch.from_numpy(sigma.astype(np.float32))
    work = volume if perturb_in_place else volume.copy()
    original = volume[slices].copy()
    divergence = 0.0
    try:
        for _ in range(probes):
            probe = noise_model.sample(sigma_t, generator).numpy().astype(np.float64)
            work[slices] = original + eps * probe
            perturbed = _run(denoise, work, slices)
            divergence += float((probe * (perturbed - denoised))[sub_mask].sum()) / eps
    finally:
        work[slices] = original
    divergence /= probes

    mse_raw = (change_sq - noise_power + 2.0 * divergence) / pixels
    mse = max(mse_raw, 0.0)
    if mse_raw < 0:
        log.warning("error estimate: negative MSE estimate %.4g clamped at 0 (noise level over-estimated?)", mse_raw)
    return ErrorEstimate(
        rmse_before=math.sqrt(noise_power / pixels),
        rmse_after=math.sqrt(mse),
        mse_after_raw=mse_raw,
        mean_change_sq=change_sq / pixels,
        mean_divergence=divergence / pixels,
        clamped=mse_raw < 0,
        slices=tuple(int(z) for z in slices),
        pixels=pixels,
        probes=probes,
        eps=eps,
    )
