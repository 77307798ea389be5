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
* Structure (every method, same masks): the **edge band** is where the clean image's in-plane gradient
  magnitude (on the structure scale: CT W400 window, MR [0, 1]) is in the top 15 % of the evaluation
  mask, dilated by 1 px in-plane and kept inside the mask; PSNR and SSIM (mean of the 2-D SSIM map over
  the band) are computed there on the same scale. **Removed-edge correlation**: Pearson correlation, over
  the mask, between the local magnitude of the removed component ``|input - output|`` (Gaussian σ 1 px
  in-plane) and the clean gradient magnitude: about 0 when only noise was removed, positive when the
  method removed edges (anatomy).
* The no-reference removed-structure index of :mod:`qa_report.residual_structure` (input and output
  only) is reported beside them, so the flag can be checked against the with-reference measures.
* Noise figures against the truth (:func:`true_noise_figures`, :func:`reduction`, :func:`relative_error`): the
  true noise before (std of ``noisy - clean``) and RMS error after in a mask, the reduction
  ``1 - after / before``, and an estimated reduction's error relative to the true one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from qa_report.residual_structure import removed_structure_index

CT_RANGE = (-1024.0, 3071.0)
SOFT_TISSUE_WINDOW = (-160.0, 240.0)  # W400 / L40
#: Fraction of the mask with the highest clean gradient that seeds the edge band.
EDGE_QUANTILE = 0.85


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


def ssim_2d_map(ref: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel 2-D SSIM map of every axial slice (Wang's settings), shape of ``ref``."""
    return np.stack(
        [
            structural_similarity(
                r,
                t,
                data_range=data_range,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                full=True,
            )[1]
            for r, t in zip(np.asarray(ref, np.float64), np.asarray(test, np.float64), strict=True)
        ]
    )


def gradient_magnitude_2d(vol: np.ndarray) -> np.ndarray:
    """In-plane Sobel gradient magnitude of every slice (slices may be thick: no through-plane term)."""
    v = np.asarray(vol, np.float64)
    return np.hypot(ndimage.sobel(v, axis=1), ndimage.sobel(v, axis=2))


def edge_band(clean_unit: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Edge band of a clean volume on its structure scale: top gradient pixels of the mask, dilated 1 px."""
    grad = gradient_magnitude_2d(clean_unit)
    seed = mask & (grad >= np.quantile(grad[mask], EDGE_QUANTILE)) & (grad > 0)
    st = np.zeros((1, 3, 3), bool)
    st[0] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(seed, st) & mask


def removed_edge_correlation(clean_unit: np.ndarray, input_unit: np.ndarray, test_unit: np.ndarray, mask) -> float:
    """Pearson correlation (over ``mask``) of the local |input - output| with the clean gradient magnitude."""
    removed = ndimage.gaussian_filter(np.abs(np.asarray(input_unit, np.float64) - test_unit), (0, 1, 1))
    grad = gradient_magnitude_2d(clean_unit)
    a, b = removed[mask], grad[mask]
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def structure_metrics(clean_unit: np.ndarray, input_unit: np.ndarray, test_unit: np.ndarray, mask) -> dict:
    """Edge-band PSNR/SSIM and the removed-edge correlation, all on one [0, 1] structure scale."""
    band = edge_band(clean_unit, mask)
    ssim_map = ssim_2d_map(clean_unit, test_unit)
    return {
        "psnr_edge": psnr(clean_unit, test_unit, band),
        "ssim_edge": float(ssim_map[band].mean()),
        "removed_edge_corr": removed_edge_correlation(clean_unit, input_unit, test_unit, mask),
    }


def score(
    modality: str,
    clean: np.ndarray,
    noisy: np.ndarray,
    test: np.ndarray,
    mask: np.ndarray,
    ref_scale: float = 1.0,
    *,
    ssim: bool = True,
    structure: bool = True,
) -> dict[str, float]:
    """Every score of one output: the one function that scores every method of the benchmark.

    Args:
        modality: ``CT`` (HU) or ``MR`` (template units, ``ref_scale`` maps to 1).
        clean, noisy, test: reference, the method's input and its output, same shape.
        mask: evaluation mask (CT body, MR brain).
        ssim: also the (slow) SSIM entries; structure: also the edge-band and removed-structure entries.
    """
    if modality == "CT":
        scores = ct_metrics(clean, test, mask, ssim=ssim)
        unit = SOFT_TISSUE_WINDOW
    else:
        scores = mr_metrics(clean, test, mask, ref_scale, ssim=ssim)
        unit = (0.0, ref_scale)
    if structure:
        c, n, t = (to_unit(v, *unit) for v in (clean, noisy, test))
        scores |= structure_metrics(c, n, t, mask)
        scores["removed_structure_index"] = removed_structure_index(noisy, test).index
    return scores


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


def mr_metrics(
    clean: np.ndarray, test: np.ndarray, brain: np.ndarray, ref_scale: float, *, ssim: bool = True
) -> dict[str, float]:
    """MR scores on intensity/ref_scale clipped to [0, 1]: whole slab and inside the brain mask.

    The soft-tissue window does not apply to MR and is reported as NaN.
    """
    c, t = to_unit(clean, 0.0, ref_scale), to_unit(test, 0.0, ref_scale)
    scores = {"psnr": psnr(c, t), "psnr_w400": float("nan"), "psnr_body": psnr(c, t, brain)}
    if ssim:
        scores |= {"ssim": ssim_2d_mean(c, t), "ssim_w400": float("nan")}
    return scores


def true_noise_figures(
    clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
    """(true noise std before, true RMS error after) inside ``mask``."""
    before = float((noisy - clean)[mask].std())
    after = float(np.sqrt(np.mean((denoised.astype(np.float64) - clean)[mask] ** 2)))
    return before, after


def reduction(before: float, after: float | None) -> float:
    """Relative reduction ``1 - after / before`` (NaN when ``after`` is unknown or ``before`` not positive)."""
    return 1.0 - after / before if after is not None and before > 0 else float("nan")


def relative_error(estimated: float, true: float) -> float:
    """``(estimated - true) / |true|``, e.g. of a reported noise reduction; NaN when ``true`` is 0."""
    return (estimated - true) / abs(true) if true else float("nan")
