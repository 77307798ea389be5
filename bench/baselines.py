"""Baseline denoisers for the benchmark: skimage NLM 3-D, BM4D (own venv), ZS-N2N (own torch code), and
two reference points that are not competitors: a strong Gaussian (over-smoothing control) and the naive
through-slice 3-slice mean."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.noise import estimate_sigma_flat_roi

# --- noise σ / PSD from the noisy data ----------------------------------------------------------------


def noisy_support_mask(noisy: np.ndarray, modality: str) -> np.ndarray:
    """Object mask derived from the *noisy* volume only (for σ/PSD estimation, not for metrics)."""
    smooth = ndimage.gaussian_filter(noisy.astype(np.float64), (0, 2, 2))
    if modality == "CT":
        return smooth > -500
    return smooth > 0.3 * np.percentile(smooth, 99.9)


def estimate_sigma(noisy: np.ndarray, modality: str) -> float:
    """Noise σ (input units) measured in flat ROIs of the noisy volume."""
    return estimate_sigma_flat_roi(noisy, noisy_support_mask(noisy, modality))


def estimate_noise_psd(
    noisy: np.ndarray, modality: str, tile: int = 16, max_lag: int = 6, quantile: float = 0.05
) -> np.ndarray:
    """3-D noise PSD in BM4D's convention (``mean(PSD) = N·σ²``, shape of ``noisy``), from the data.

    Flat in-plane tiles (lowest ``quantile`` of smoothed-gradient energy, fully inside the noisy-derived
    object mask) are de-trended by a fitted plane; their averaged periodogram gives the in-plane
    autocorrelation, truncated to ``max_lag`` pixels with a Hann taper and re-embedded at full size.
    Noise is assumed independent across slices (true for per-slice CT reconstruction and MR).
    Small tiles matter: 32-px tiles of a thorax CT already hold structure (variance 3× too high); with
    16-px tiles BM4D scored within 0.05 dB of BM4D given the true noise periodogram.
    """
    d, h, w = noisy.shape
    tile = min(tile, h, w)
    x = noisy.astype(np.float64)
    mask = noisy_support_mask(noisy, modality)
    smooth = ndimage.gaussian_filter(x, (0, 3, 3))
    grad = np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=2))
    tiles, scores = [], []
    for z in range(d):
        for y0 in range(0, h - tile + 1, tile // 2):
            for x0 in range(0, w - tile + 1, tile // 2):
                if mask[z, y0 : y0 + tile, x0 : x0 + tile].all():
                    tiles.append(x[z, y0 : y0 + tile, x0 : x0 + tile])
                    scores.append(grad[z, y0 : y0 + tile, x0 : x0 + tile].mean())
    if not tiles:
        raise ValueError("no flat tile found for the PSD estimate")
    keep = np.argsort(scores)[: max(8, int(len(tiles) * quantile))]
    yy, xx = np.mgrid[:tile, :tile]
    design = np.stack([np.ones(tile * tile), yy.ravel(), xx.ravel()], 1)
    power = np.zeros((tile, tile))
    for k in keep:
        t = tiles[k].ravel()
        resid = t - design @ np.linalg.lstsq(design, t, rcond=None)[0]
        power += np.abs(np.fft.fft2(resid.reshape(tile, tile))) ** 2 / (tile * tile)
    acf = np.real(np.fft.ifft2(power / len(keep)))  # circular autocorrelation, acf[0, 0] = σ²
    lags = np.fft.fftfreq(tile, 1.0 / tile)
    ly, lx = np.meshgrid(lags, lags, indexing="ij")
    r = np.hypot(ly, lx)
    taper = np.where(r <= max_lag, 0.5 * (1 + np.cos(np.pi * r / (max_lag + 1))), 0.0)
    full = np.zeros((h, w))
    for iy, lyv in enumerate(lags.astype(int)):
        for ix, lxv in enumerate(lags.astype(int)):
            if taper[iy, ix] > 0:
                full[lyv % h, lxv % w] = acf[iy, ix] * taper[iy, ix]
    psd2 = np.maximum(np.real(np.fft.fft2(full)), 1e-3 * acf[0, 0])
    return np.broadcast_to(psd2 * (d * h * w), (d, h, w)).copy()


# --- classical baselines ----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
BM4D_PYTHON = REPO / "bench" / ".venv-bm4d" / "bin" / "python"
BM4D_WORKER = REPO / "bench" / "bm4d_worker.py"


@dataclass(frozen=True)
class NLMParams:
    """skimage ``denoise_nl_means`` in 3-D, fast mode: ``h = h_factor * sigma_hat``.

    ``sigma_hat`` is measured on the noisy volume (:func:`estimate_sigma`); the factor absorbs that
    estimator's bias on each kind of noise, which is why it is tuned per modality on the tuning set.
    """

    h_factor: float = 0.8
    patch_size: int = 5
    patch_distance: int = 3


def nlm3d(noisy: np.ndarray, sigma: float, params: NLMParams = NLMParams()) -> np.ndarray:
    """skimage non-local means in 3-D with ``h = params.h_factor * sigma`` (fast mode)."""
    from skimage.restoration import denoise_nl_means

    out = denoise_nl_means(
        noisy.astype(np.float64),
        patch_size=params.patch_size,
        patch_distance=params.patch_distance,
        h=params.h_factor * sigma,
        sigma=sigma,
        fast_mode=True,
        channel_axis=None,
    )
    return out.astype(np.float32)


@dataclass(frozen=True)
class BM4DParams:
    """BM4D's noise model: the estimated PSD (``psd=True``) or white noise of the estimated sigma, both
    scaled by ``sigma_scale`` (on the standard deviation; PSD scaled by its square)."""

    psd: bool = True
    sigma_scale: float = 1.0


def bm4d_available() -> bool:
    """True when ``bench/setup_bm4d.sh`` has created BM4D's own virtual environment."""
    return BM4D_PYTHON.exists()


def bm4d(noisy: np.ndarray, modality: str, params: BM4DParams = BM4DParams(), sigma: float | None = None) -> np.ndarray:
    """BM4D (non-commercial licence, never a project dependency) in its own venv, via .npy files.

    The noise model comes from the noisy volume only: :func:`estimate_noise_psd` or ``sigma``
    (default :func:`estimate_sigma`), scaled by ``params.sigma_scale``.
    """
    if not bm4d_available():
        raise FileNotFoundError(f"{BM4D_PYTHON} missing: run bench/setup_bm4d.sh (non-commercial licence)")
    with tempfile.TemporaryDirectory(prefix="bench-bm4d-") as tmp:
        src, out = Path(tmp) / "noisy.npy", Path(tmp) / "out.npy"
        np.save(src, noisy.astype(np.float32))
        cmd = [str(BM4D_PYTHON), str(BM4D_WORKER), str(src), str(out)]
        if params.psd:
            np.save(Path(tmp) / "psd.npy", estimate_noise_psd(noisy, modality) * params.sigma_scale**2)
            cmd += ["--psd", str(Path(tmp) / "psd.npy")]
        else:
            s = estimate_sigma(noisy, modality) if sigma is None else sigma
            cmd += ["--sigma", repr(float(s * params.sigma_scale))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return np.load(out)


def gaussian_smooth(noisy: np.ndarray, sigma_px: float = 2.0) -> np.ndarray:
    """A deliberately over-smoothing 'denoiser' (3-D Gaussian, sigma in pixels on every axis).

    Not a competitor: the benchmark's positive control for the removed-anatomy flag and the structure
    metrics (it removes noise and edges alike).
    """
    return ndimage.gaussian_filter(noisy.astype(np.float64), sigma_px).astype(np.float32)


def through_slice_mean(noisy: np.ndarray, n: int = 3) -> np.ndarray:
    """Naive through-slice average of ``n`` neighbouring slices (the end slices are repeated at the ends).

    Halves noise variance by ``n`` where slices are independent, and blurs any anatomy that changes
    between slices: the floor a neighbouring-slice method must beat.
    """
    return ndimage.uniform_filter1d(noisy.astype(np.float64), size=n, axis=0, mode="nearest").astype(np.float32)


# --- ZS-N2N (Mansour & Heckel, CVPR 2023) ---------------------------------------------------------


@dataclass(frozen=True)
class ZSN2NConfig:
    """ZS-N2N settings. Upstream: 2-conv 48-channel net, Adam 1e-3, 3000 iterations, StepLR(1000, 0.5).

    Upstream trains one network per 2-D image; on CPU that is far too slow for a volume, so here ONE
    network is shared by all slices and trained on random in-plane crops for ``steps`` iterations
    (StepLR at a third of the steps, as upstream's 1000/3000).
    """

    steps: int = 300
    crop: int = 96
    batch: int = 4
    lr: float = 1e-3
    channels: int = 48
    seed: int = 0


def _zsn2n_net(channels: int):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, 1, 1),
    )


def _pair_downsample(img):
    """The two fixed diagonal 2×2 sub-samplers of ZS-N2N (stride 2)."""
    import torch
    import torch.nn.functional as F

    f1 = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]]], dtype=img.dtype, device=img.device)
    f2 = torch.tensor([[[[0.5, 0.0], [0.0, 0.5]]]], dtype=img.dtype, device=img.device)
    return F.conv2d(img, f1, stride=2), F.conv2d(img, f2, stride=2)


def _zsn2n_loss(model, y):
    """Residual Noise2Noise loss between the two half images + the consistency term (upstream code)."""
    import torch.nn.functional as F

    n1, n2 = _pair_downsample(y)
    p1, p2 = n1 - model(n1), n2 - model(n2)
    loss_res = 0.5 * (F.mse_loss(n1, p2) + F.mse_loss(n2, p1))
    d1, d2 = _pair_downsample(y - model(y))
    loss_cons = 0.5 * (F.mse_loss(p1, d1) + F.mse_loss(p2, d2))
    return loss_res + loss_cons


def zsn2n(noisy: np.ndarray, cfg: ZSN2NConfig, device: str = "cpu") -> np.ndarray:
    """Denoise a (z, y, x) volume with one ZS-N2N network shared over slices (random-crop training).

    The volume is min-max normalised to [0, 1] as upstream assumes, the output clamped to [0, 1] and
    mapped back to input units.
    """
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    lo, hi = float(noisy.min()), float(noisy.max())
    vol = torch.from_numpy(((noisy - lo) / (hi - lo)).astype(np.float32))
    d, h, w = vol.shape
    ch, cw = min(cfg.crop, h) // 2 * 2, min(cfg.crop, w) // 2 * 2
    model = _zsn2n_net(cfg.channels).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.steps // 3), gamma=0.5)
    t0 = time.time()
    for step in range(cfg.steps):
        zs = torch.randint(0, d, (cfg.batch,), generator=gen)
        ys = torch.randint(0, h - ch + 1, (cfg.batch,), generator=gen)
        xs = torch.randint(0, w - cw + 1, (cfg.batch,), generator=gen)
        batch = torch.stack([vol[z, y : y + ch, x : x + cw] for z, y, x in zip(zs, ys, xs, strict=True)])
        loss = _zsn2n_loss(model, batch[:, None].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            print(
                f"\r[bench.zsn2n] step {step + 1}/{cfg.steps} loss {loss.item():.3e} {time.time() - t0:.0f}s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    print(file=sys.stderr)
    out = np.empty_like(noisy, dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for z in range(d):
            x = vol[z][None, None].to(device)
            out[z] = torch.clamp(x - model(x), 0, 1)[0, 0].cpu().numpy()
    return out * (hi - lo) + lo
