"""Image-quality metrics for 3-D volumes (protocol of /work/shared/research/data-eval.md §4).

Every metric works on intensities mapped to [0, 1] with ``data_range=1`` passed explicitly: never let a
library infer the range (skimage infers 65535 for int16 → +24 dB; torchmetrics infers max−min).

* PSNR: global MSE over all evaluated voxels (not a mean of per-slice PSNRs).
* SSIM: 2-D, Wang et al. settings (Gaussian window σ = 1.5, population covariance), mean over axial
  slices (identical to monai ``SSIMMetric(spatial_dims=2)`` and pytorch_msssim).
* CT: HU clipped to [−1024, 3071] → [0, 1]; soft-tissue window W400/L40 ([−160, 240]) → [0, 1];
  PSNR inside a body mask.
* MR: intensity / reference (99.9th percentile of the clean template), clipped to [0, 1]; PSNR inside a
  brain mask.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

CT_RANGE = (-1024.0, 3071.0)
SOFT_TISSUE_WINDOW = (-160.0, 240.0)  # W400 / L40


def to_unit(vol: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip ``vol`` to [lo, hi] and map it linearly to [0, 1] (float64)."""
    v = np.asarray(vol, dtype=np.float64)
    return (np.clip(v, lo, hi) - lo) / (hi - lo)


def psnr(ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """PSNR in dB from the global MSE (over ``mask`` if given) with an explicit ``data_range``."""
    diff = np.asarray(ref, np.float64) - np.asarray(test, np.float64)
    if mask is not None:
        diff = diff[mask]
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim_2d_mean(ref: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over axial slices of the 2-D SSIM with Wang's settings (Gaussian σ 1.5, population cov.)."""
    vals = [
        structural_similarity(
            r, t, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for r, t in zip(np.asarray(ref, np.float64), np.asarray(test, np.float64), strict=True)
    ]
    return float(np.mean(vals))


def ct_metrics(clean_hu: np.ndarray, test_hu: np.ndarray, body: np.ndarray, *, ssim: bool = True) -> dict[str, float]:
    """CT scores: full range [−1024, 3071], soft-tissue window W400/L40, and full range in the body mask.

    ``ssim=False`` leaves out the two SSIM entries (the slow part), e.g. for sweeps that compare PSNR only.
    """
    c, t = to_unit(clean_hu, *CT_RANGE), to_unit(test_hu, *CT_RANGE)
    cw, tw = to_unit(clean_hu, *SOFT_TISSUE_WINDOW), to_unit(test_hu, *SOFT_TISSUE_WINDOW)
    scores = {"psnr": psnr(c, t), "psnr_w400": psnr(cw, tw), "psnr_body": psnr(c, t, body)}
    if ssim:
        scores |= {"ssim": ssim_2d_mean(c, t), "ssim_w400": ssim_2d_mean(cw, tw)}
    return scores


def mr_metrics(clean: np.ndarray, test: np.ndarray, brain: np.ndarray, ref_scale: float) -> dict[str, float]:
    """MR scores on intensity/ref_scale clipped to [0, 1]: whole slab and inside the brain mask.

    The soft-tissue window does not apply to MR and is reported as NaN.
    """
    c, t = to_unit(clean, 0.0, ref_scale), to_unit(test, 0.0, ref_scale)
    return {
        "psnr": psnr(c, t),
        "ssim": ssim_2d_mean(c, t),
        "psnr_w400": float("nan"),
        "ssim_w400": float("nan"),
        "psnr_body": psnr(c, t, brain),
    }
