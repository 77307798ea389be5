"""The NS-N2N training objective.

With f the denoiser, (x_a, x_b) a neighbouring slice pair, W their weight map (1 = matched region),
V the valid (non-padding) pixels and ``<.>_M = sum(M * .) / max(sum(M), 1)`` the mean over a mask:

    L        = L_recon + lambda_RC * L_RC + lambda_IC * L_IC
    L_recon  = < (f(x_a) - x_b)^2 >_W + < (f(x_b) - x_a)^2 >_W          masked Noise2Noise, both directions
    L_RC     = < (f(x_a) - f(x_b))^2 >_W                                 regional consistency
    L_IC     = < (f((x_a + x_b)/2) - sg[(f(x_a) + f(x_b))/2])^2 >_V        inter-slice continuity

Decisions where the paper is silent (docs/method.md):

* Reconstruction is symmetric and each direction is normalised by the mask sum, so crops with few
  matched pixels do not dominate the gradient.
* Regional consistency lets gradients flow through both outputs (as re-implementations do).
* Continuity is applied to every valid pixel, not only the matched ones: it is the term meant to
  regularise the regions the masked loss ignores. Its target (the mean of the two outputs) is
  detached (``sg``), so it shapes f on the averaged input instead of dragging both outputs towards it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LossTerms",
    "continuity_loss",
    "masked_mse",
    "nsn2n_loss",
    "reconstruction_loss",
    "regional_consistency_loss",
]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * (prediction - target)^2) / max(sum(mask), 1)`` over the whole batch."""
    mask = mask.to(prediction.dtype)
    return (mask * (prediction - target) ** 2).sum() / mask.sum().clamp_min(1.0)


def reconstruction_loss(
    f_a: torch.Tensor, f_b: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Masked Noise2Noise in both directions: ``<(f(x_a) - x_b)^2>_W + <(f(x_b) - x_a)^2>_W``."""
    return masked_mse(f_a, x_b, weight) + masked_mse(f_b, x_a, weight)


def regional_consistency_loss(f_a: torch.Tensor, f_b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``<(f(x_a) - f(x_b))^2>_W``: matched regions must be denoised to the same values."""
    return masked_mse(f_a, f_b, weight)


def continuity_loss(f_mid: torch.Tensor, f_a: torch.Tensor, f_b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``<(f((x_a + x_b)/2) - sg[(f(x_a) + f(x_b))/2])^2>_V`` (target detached)."""
    return masked_mse(f_mid, (0.5 * (f_a + f_b)).detach(), valid)


@dataclass
class LossTerms:
    """The total loss and its parts (parts detached, for logging)."""

    total: torch.Tensor
    recon: float
    rc: float
    ic: float


def nsn2n_loss(
    f_a: torch.Tensor,
    f_b: torch.Tensor,
    f_mid: torch.Tensor,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    weight: torch.Tensor,
    valid: torch.Tensor,
    *,
    lambda_rc: float,
    lambda_ic: float,
) -> LossTerms:
    """``L_recon + lambda_rc * L_RC + lambda_ic * L_IC`` (see the module docstring)."""
    recon = reconstruction_loss(f_a, f_b, x_a, x_b, weight)
    rc = regional_consistency_loss(f_a, f_b, weight)
    ic = continuity_loss(f_mid, f_a, f_b, valid)
    total = recon + lambda_rc * rc + lambda_ic * ic
    return LossTerms(total=total, recon=float(recon.detach()), rc=float(rc.detach()), ic=float(ic.detach()))
