"""The noise model of a volume: its local level and in-plane correlation, measured from the volume itself.

Rule. Noise is independent between slices and anatomy is not, so where two neighbouring slices show the
same anatomy their difference ``d = (x_j - x_{j+1}) / sqrt 2`` is a sample of the noise itself, with its
in-plane correlation (a CT reconstruction kernel's "blotchy" texture) and its local level (CT noise grows
towards the middle of the body and behind dense anatomy; MR magnitude noise is nearly stationary).

Which pixels qualify decides whether the measurement is honest. A weight map computed from the same two
slices selects pixels where their low-pass difference is small, i.e. where their noise happens to be
low; the weight map of the *outer* pair ``(j-1, j+2)`` does not (their noise is independent of the two
measured), and its agreement says that the anatomy does not change across the four slices. But it cannot
see a structure present in only one of ``j`` and ``j+1`` (a vessel or nodule that a thick slice catches
and its neighbour misses), which would count as noise. So:

* the **level** of a block comes from the pixels both maps accept (outer pair and the pair itself), where
  the block has enough of them, else from the outer pair's pixels alone, else from the volume-wide
  value; it is the median of ``|d|`` (times ``1 / Phi^-1(3/4)``, the median-absolute-deviation to
  standard-deviation ratio of Gaussian noise), robust to the few pixels of anatomy that still get in.
  The pair's own map lowers the level slightly by its selection; anatomy leaking in raises it far more on
  thick slices, which is the error that matters (too much synthetic noise teaches the network to blur);
* the **correlation** comes from the outer pair's pixels only, since selecting by the pair's own low-pass
  difference would favour pixels where the correlated (low-frequency) part of the noise is small.

Where the outer pairs match too few pixels (volumes of fewer than 4 slices, very thick slices), the
pair's own weight map is used for both and the report says so.

When a **foreground** is given (pixels that differ from the padding / background fill), the level is
measured twice, as above: on pairs whose two pixels are both foreground, and on pairs whose two pixels
are both background; a pixel takes the level of its own class. The background's noise is not the
tissue's: MR magnitude noise in air is Rayleigh-distributed with 0.66 times the standard deviation it
has in tissue, and CT air outside the body is quieter than the body. Background pixels also match
perfectly between slices, so in a single level they outweigh the tissue in every block near the body's
edge (the MNI brain's level read 11 % low), and a single level measured on the tissue alone puts too much
synthetic noise into the background, which the network then denoised worse (bench/README.md,
2026-11-30). Blocks without support in a class take the smoothed level of their neighbours of that
class or, far from any, the class's volume-wide level.

* Level: ``sigma`` per ``BLOCK_PX`` x ``BLOCK_PX`` block as above, from the block's pixels in the slice's
  two pairs, smoothed over ``SMOOTH_BLOCKS`` blocks (weighted by the number of qualifying pixels).
* Correlation: the autocorrelation of ``d / sigma`` for lags up to ``MAX_LAG`` pixels over qualifying
  pixel pairs, averaged over the volume; its tapered spectrum gives a small shaping kernel ``h`` whose
  output, fed white Gaussian noise, has that autocorrelation and unit variance. The taper is flat over
  the short lags that carry most of the correlation (CT's reconstruction kernel) and falls to zero
  beyond ``MAX_LAG``: a taper that already bends at lag 1 makes the synthetic noise less blotchy than
  the real noise, and the recorrupted training then sees two different noises.
* Samples (:meth:`NoiseModel.sample`): white Gaussian noise filtered by ``h``, times the local sigma:
  synthetic noise with the volume's own statistics, which the recorrupted training adds to its input.

The level also gives the noise figure of the input that the run reports (:meth:`NoiseModel.level`): the
root mean square of the local sigma over the foreground, a measurement no training loss can influence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .noise import MAD_TO_SIGMA

__all__ = [
    "BLOCK_PX",
    "MAX_LAG",
    "WHITENING_FLOOR",
    "NoiseModel",
    "SigmaMaps",
    "block_sigma",
    "correlation_kernel",
    "estimate_noise_model",
    "outer_pair_weights",
    "sigma_from_blocks",
]

#: Block size of the local noise level (pixels).
BLOCK_PX = 8
#: Gaussian smoothing of the block levels, in blocks.
SMOOTH_BLOCKS = 1.5
#: Largest in-plane lag of the measured autocorrelation (pixels); the shaping kernel spans twice it + 3.
MAX_LAG = 6
#: Floor of the noise's amplitude response (its mean power is 1) below which :meth:`NoiseModel.whiten`
#: stops raising its gain.
WHITENING_FLOOR = 0.1
_MIN_SUPPORT = 16.0  # qualifying pixels (after smoothing) a block needs for its own level
_MIN_OUTER_FRACTION = 0.05  # below this fraction of matched outer-pair pixels, the pair's own map is used

#: ``(D', H, W) normalised slices -> (D'-1, H, W) bool weight maps`` of consecutive slices.
MatchFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def outer_pair_weights(volume: torch.Tensor, valid: torch.Tensor | None, match: MatchFn) -> torch.Tensor:
    """``(D-1, H, W)`` bool: for pair ``(j, j+1)`` the weight map of ``(j-1, j+2)``; False where none exists.

    Computed as the weight maps of the three sub-stacks of every third slice, whose consecutive slices
    are three apart.
    """
    depth = volume.shape[0]
    out = torch.zeros((depth - 1, *volume.shape[1:]), dtype=torch.bool, device=volume.device)
    for start in range(3):
        sub = volume[start::3]
        if sub.shape[0] < 2:
            continue
        maps = match(sub, None if valid is None else valid[start::3])
        pairs = torch.arange(start + 1, start + 1 + 3 * maps.shape[0], 3, device=volume.device)
        keep = pairs <= depth - 2
        out[pairs[keep]] = maps[keep]
    return out


def _pair_difference(volume: np.ndarray, masks: np.ndarray, valid: np.ndarray | None, j: int):
    mask = masks[j] if valid is None else masks[j] & valid[j] & valid[j + 1]
    diff = (volume[j].astype(np.float32) - volume[j + 1].astype(np.float32)) / np.float32(math.sqrt(2.0))
    return diff, mask


def _block_values(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(hb, wb, BLOCK_PX**2)`` float32 values of ``image`` per block, NaN where ``mask`` is False."""
    h, w = image.shape
    hb, wb = -(-h // BLOCK_PX), -(-w // BLOCK_PX)
    padded = np.full((hb * BLOCK_PX, wb * BLOCK_PX), np.nan, np.float32)
    padded[:h, :w] = np.where(mask, image, np.nan)
    return padded.reshape(hb, BLOCK_PX, wb, BLOCK_PX).transpose(0, 2, 1, 3).reshape(hb, wb, BLOCK_PX**2)


def _median_levels(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per block: ``(sigma from the median |d|, number of qualifying values)``, NaN sigma without any."""
    stacked = np.concatenate(values, axis=2)
    count = np.count_nonzero(~np.isnan(stacked), axis=2)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: NaN, handled by the count
        median = np.nanmedian(stacked, axis=2)
    return MAD_TO_SIGMA * median, count


def _overall_sigma(volume: np.ndarray, masks: np.ndarray, valid: np.ndarray | None, max_samples: int) -> float:
    """Volume-wide sigma from the median |d| of (at most about ``max_samples``) qualifying pixels; NaN if few."""
    step = max(1, int(masks.size // max_samples))
    samples = [
        np.abs(diff[mask])[::step]
        for diff, mask in (_pair_difference(volume, masks, valid, j) for j in range(volume.shape[0] - 1))
    ]
    values = np.concatenate(samples) if samples else np.empty(0, np.float32)
    return MAD_TO_SIGMA * float(np.median(values)) if values.size >= _MIN_SUPPORT else float("nan")


def block_sigma(
    volume: np.ndarray,
    masks: Sequence[np.ndarray],
    valid: np.ndarray | None = None,
    *,
    default: float = float("nan"),
    max_samples: int = 2_000_000,
) -> np.ndarray:
    """``(D, hb, wb)`` float32 local noise sigma per block (see the module docstring), volume units.

    Args:
        volume: (D, H, W).
        masks: (D-1, H, W) bool pixel selections of each pair, in order of preference: a block takes its
            level from the first selection that gives it enough qualifying pixels (after smoothing).
        valid: (D, H, W) bool, False for padding.
        default: the level where no pixel of the whole volume qualifies.
        max_samples: pixels that the volume-wide fallback level is computed from, at most (about).
    """
    depth = volume.shape[0]
    overall = default
    for mask_set in masks:
        level = _overall_sigma(volume, mask_set, valid, max_samples)
        if not math.isnan(level):
            overall = level
            break
    cache: dict[tuple[int, int], np.ndarray] = {}

    def values(m: int, j: int) -> np.ndarray:
        if (m, j) not in cache:
            diff, mask = _pair_difference(volume, masks[m], valid, j)
            cache[(m, j)] = _block_values(np.abs(diff), mask)
        return cache[(m, j)]

    out = []
    for z in range(depth):
        for key in [k for k in cache if k[1] < z - 1]:
            del cache[key]  # only the pairs of this slice and the next are ever needed again
        pairs = [j for j in (z - 1, z) if 0 <= j < depth - 1]
        level_z = None
        for m in range(len(masks)):
            level, count = _median_levels([values(m, j) for j in pairs])
            num = ndimage.gaussian_filter(np.where(count > 0, level * count, 0.0), SMOOTH_BLOCKS, mode="nearest")
            den = ndimage.gaussian_filter(count.astype(np.float64), SMOOTH_BLOCKS, mode="nearest")
            smooth = np.where(den >= _MIN_SUPPORT, num / np.maximum(den, 1e-12), np.nan)
            level_z = smooth if level_z is None else np.where(np.isnan(level_z), smooth, level_z)
        out.append(np.where(np.isnan(level_z), overall, level_z))
    return np.stack(out).astype(np.float32)


def sigma_from_blocks(blocks: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(..., hb, wb)`` block levels -> ``(..., H, W)``, linearly interpolated between block centres."""
    lead = blocks.shape[:-2]
    grid = blocks.reshape(-1, 1, *blocks.shape[-2:]).float()
    full = F.interpolate(grid, scale_factor=BLOCK_PX, mode="bilinear", align_corners=False)
    return full[..., : shape[0], : shape[1]].reshape(*lead, *shape)


def _lag_slices(n: int, lag: int) -> tuple[slice, slice]:
    return slice(max(0, lag), n + min(0, lag)), slice(max(0, -lag), n + min(0, -lag))


def _autocorrelation(volume: np.ndarray, masks: np.ndarray, valid: np.ndarray | None, blocks: np.ndarray) -> np.ndarray:
    """``(2L+1, 2L+1)`` autocorrelation of the unit-level noise samples, 1 at lag 0 (symmetrised)."""
    size = 2 * MAX_LAG + 1
    acc, count = np.zeros((size, size)), np.zeros((size, size))
    h, w = volume.shape[1:]
    for j in range(volume.shape[0] - 1):
        diff, mask = _pair_difference(volume, masks, valid, j)
        if not mask.any():
            continue
        level = sigma_from_blocks(torch.from_numpy(blocks[j : j + 2]), (h, w)).mean(0).numpy()
        unit = np.where(mask, diff / np.maximum(level, 1e-12), 0.0)
        weight = mask.astype(np.float64)
        for dy in range(-MAX_LAG, MAX_LAG + 1):
            ys, yt = _lag_slices(h, dy)
            for dx in range(-MAX_LAG, MAX_LAG + 1):
                xs, xt = _lag_slices(w, dx)
                acc[dy + MAX_LAG, dx + MAX_LAG] += float((unit[ys, xs] * unit[yt, xt]).sum())
                count[dy + MAX_LAG, dx + MAX_LAG] += float((weight[ys, xs] * weight[yt, xt]).sum())
    corr = acc / np.maximum(count, 1.0)
    corr = 0.5 * (corr + corr[::-1, ::-1])
    power = corr[MAX_LAG, MAX_LAG]
    if not (count[MAX_LAG, MAX_LAG] > 0 and math.isfinite(power) and power > 0):
        # No pixel qualified, or the differences are all zero (neighbouring slices identical where they
        # match: a noise-free or synthetic series): no correlation to measure; white noise.
        white = np.zeros((size, size))
        white[MAX_LAG, MAX_LAG] = 1.0
        return white
    return corr / power


def correlation_kernel(autocorrelation: np.ndarray, grid: int = 64) -> np.ndarray:
    """A ``(2L+3, 2L+3)`` float32 kernel ``h`` with unit energy whose output autocorrelation is the given one.

    The autocorrelation is tapered (1 up to ``L / 2`` px, then a raised cosine to 0 at ``L + 1`` px: the
    short lags are kept exactly and the spectrum stays smooth), placed on a ``grid`` x ``grid`` torus,
    and ``h`` is the inverse transform of the square root of its (non-negative part of the) spectrum.
    """
    lag = autocorrelation.shape[0] // 2
    flat = lag / 2
    torus = np.zeros((grid, grid))
    for dy in range(-lag, lag + 1):
        for dx in range(-lag, lag + 1):
            r = math.hypot(dy, dx)
            if r <= flat:
                taper = 1.0
            elif r <= lag + 1:
                taper = 0.5 * (1.0 + math.cos(math.pi * (r - flat) / (lag + 1 - flat)))
            else:
                taper = 0.0
            torus[dy % grid, dx % grid] = autocorrelation[dy + lag, dx + lag] * taper
    spectrum = np.clip(np.real(np.fft.fft2(torus)), 0.0, None)
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(spectrum))))
    half = lag + 1
    centre = grid // 2
    kernel = kernel[centre - half : centre + half + 1, centre - half : centre + half + 1]
    return (kernel / np.sqrt((kernel**2).sum())).astype(np.float32)


@dataclass(frozen=True)
class SigmaMaps:
    """A noise model's local sigma held as tensors on one device (:meth:`NoiseModel.sigma_maps`).

    Attributes:
        blocks: (D, hb, wb) levels of the foreground (of every pixel without ``foreground``).
        shape: (H, W) of a slice.
        background_blocks: (D, hb, wb) levels of the background, with ``foreground``.
        foreground: (D, H, W) bool pixels that take ``blocks``; the others take ``background_blocks``.
    """

    blocks: torch.Tensor
    shape: tuple[int, int]
    background_blocks: torch.Tensor | None = None
    foreground: torch.Tensor | None = None

    def slice(self, z: int) -> torch.Tensor:
        """``(H, W)`` float32 local noise sigma of slice ``z``: each pixel its class's level."""
        sigma = sigma_from_blocks(self.blocks[z], self.shape)
        if self.foreground is None or self.background_blocks is None:
            return sigma
        return torch.where(self.foreground[z], sigma, sigma_from_blocks(self.background_blocks[z], self.shape))


@dataclass(frozen=True)
class NoiseModel:
    """Local noise level and in-plane correlation of one volume (see the module docstring).

    Attributes:
        sigma_blocks: (D, hb, wb) float32 noise sigma per ``BLOCK_PX`` block, in the volume's units: of
            the foreground's pixels when ``foreground`` is set, else of every pixel.
        kernel: (k, k) float32 shaping kernel of unit energy (the noise's in-plane correlation).
        shape: (D, H, W) of the volume.
        lag1_correlation: the measured correlation of horizontally neighbouring pixels (0 = white noise).
        source: ``"outer pairs"`` or ``"neighbouring pairs"``: which weight maps chose the pixels.
        foreground: (D, H, W) bool pixels that take ``sigma_blocks``; the others take
            ``background_blocks``. ``None``: one level for every pixel.
        background_blocks: (D, hb, wb) float32 noise sigma of the background's pixels (with
            ``foreground``).
    """

    sigma_blocks: np.ndarray
    kernel: np.ndarray
    shape: tuple[int, int, int]
    lag1_correlation: float
    source: str
    foreground: np.ndarray | None = None
    background_blocks: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.foreground is None) != (self.background_blocks is None):
            raise ValueError("NoiseModel: foreground and background_blocks go together (both or neither)")
        if self.foreground is not None and tuple(self.foreground.shape) != tuple(self.shape):
            raise ValueError(f"NoiseModel: foreground shape {self.foreground.shape} differs from {self.shape}")

    def scaled(self, factor: float) -> NoiseModel:
        """The same model with every level multiplied by ``factor`` (e.g. to the input's units)."""
        background = None if self.background_blocks is None else self.background_blocks * np.float32(factor)
        return replace(self, sigma_blocks=self.sigma_blocks * np.float32(factor), background_blocks=background)

    def sigma_maps(self, device: torch.device | str = "cpu", scale: float = 1.0) -> SigmaMaps:
        """The local sigma times ``scale`` as tensors on ``device``, to read many slices from (e.g. training
        crops) without moving the levels again."""

        def to(blocks: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(blocks if scale == 1.0 else blocks * np.float32(scale)).to(device)

        return SigmaMaps(
            to(self.sigma_blocks),
            self.shape[1:],
            None if self.background_blocks is None else to(self.background_blocks),
            None if self.foreground is None else torch.from_numpy(self.foreground).to(device),
        )

    def sigma_map(self, z: int) -> np.ndarray:
        """``(H, W)`` float32 local noise sigma of slice ``z``."""
        return self.sigma_maps().slice(z).numpy()

    def foreground_sigma_map(self, z: int) -> np.ndarray:
        """``(H, W)`` float32 level of the foreground's noise at every pixel of slice ``z``, the background's
        too (there: the neighbouring foreground blocks' level or the volume-wide one). For a magnitude MR
        series this is the level of the complex noise everywhere, which air shows only as a Rayleigh
        floor (:mod:`nsn2n.rician`)."""
        return sigma_from_blocks(torch.from_numpy(self.sigma_blocks[z]), self.shape[1:]).numpy()

    @property
    def autocorrelation(self) -> np.ndarray:
        """``(2k-1, 2k-1)`` float64 in-plane autocorrelation of the model's noise (1 at the centre): that of
        :meth:`sample`'s output, the kernel correlated with itself."""
        k = self.kernel.astype(np.float64)
        half = k.shape[0] // 2  # the kernel is odd and centred (correlation_kernel)
        out = ndimage.correlate(np.pad(k, half), k, mode="constant")
        return out / out[2 * half, 2 * half]

    def level(self, foreground: np.ndarray | None = None) -> float:
        """Root mean square of the local sigma over ``foreground`` (D, H, W) bool, or over the volume."""
        total, count = 0.0, 0
        for z in range(self.shape[0]):
            sigma = self.sigma_map(z)
            values = sigma if foreground is None else sigma[foreground[z]]
            total += float(np.square(values, dtype=np.float64).sum())
            count += values.size
        return math.sqrt(total / count) if count else float("nan")

    def whiten(self, slices: torch.Tensor, floor: float = WHITENING_FLOOR) -> torch.Tensor:
        """``slices`` (N, h, w) filtered in-plane so that noise of this model's correlation comes out white,
        at the same level.

        Rule: the zero-phase filter ``1 / max(|H|, floor)`` (``H``: the frequency response of
        :attr:`kernel`, of unit mean power), scaled so that noise shaped by ``H`` keeps its variance; the
        floor bounds the gain where the noise has almost no power (it keeps anatomy's fine detail from
        being amplified without limit). Circular per slice, so pad the slices first where their borders
        matter. White noise (a kernel of one tap: ``|H| = 1``) passes unchanged.
        """
        h, w = slices.shape[1:]
        k = self.kernel.shape[0]
        taps = torch.zeros((h, w), dtype=torch.float32, device=slices.device)
        kernel = torch.from_numpy(self.kernel).to(slices.device)
        half = k // 2
        rows = (torch.arange(k, device=slices.device) - half) % h
        cols = (torch.arange(k, device=slices.device) - half) % w
        taps.index_put_((rows[:, None].expand(k, k), cols[None, :].expand(k, k)), kernel, accumulate=True)
        response = torch.fft.rfft2(taps).abs()
        gain = 1.0 / response.clamp_min(floor)
        # Keep noise of this correlation at its level: mean over all frequencies of |gain * H|^2 = 1
        # (the rfft's half plane, its inner columns counted twice).
        weights = torch.full_like(response, 2.0)
        weights[:, 0] = 1.0
        if w % 2 == 0:
            weights[:, -1] = 1.0
        power = float(((gain * response) ** 2 * weights).sum() / weights.sum())
        gain = gain / math.sqrt(power)
        return torch.fft.irfft2(torch.fft.rfft2(slices.float()) * gain, s=(h, w))

    def sample(self, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Synthetic noise shaped like the volume's, scaled by ``sigma`` ((N, h, w) tensor) pixel by pixel."""
        n, h, w = sigma.shape
        k = self.kernel.shape[0]
        white = torch.randn((n, 1, h + k - 1, w + k - 1), generator=generator, device=sigma.device)
        kernel = torch.from_numpy(self.kernel).to(sigma.device)[None, None]
        return F.conv2d(white, kernel)[:, 0] * sigma


def estimate_noise_model(
    volume: np.ndarray,
    adjacent_weights: torch.Tensor,
    outer_weights: torch.Tensor,
    valid: np.ndarray | None = None,
    *,
    foreground: np.ndarray | None = None,
    default_sigma: float = float("nan"),
) -> NoiseModel:
    """Measure the noise model of ``volume`` (D, H, W) (see the module docstring).

    Args:
        volume: the volume, in the units the model is wanted in.
        adjacent_weights: (D-1, H, W) bool weight maps of neighbouring pairs (the fallback).
        outer_weights: (D-1, H, W) bool, from :func:`outer_pair_weights`.
        valid: (D, H, W) bool, False for padding.
        foreground: (D, H, W) bool: its pixels and the others get a level each (module docstring);
            ``None``: one level from every pixel.
        default_sigma: the level when no pixel qualifies at all.
    """
    outer = outer_weights.cpu().numpy()
    adjacent = adjacent_weights.cpu().numpy()
    usable = outer if valid is None else outer & valid[:-1] & valid[1:]
    if usable.mean() >= _MIN_OUTER_FRACTION:
        level_masks, masks, source = [outer & adjacent, outer], outer, "outer pairs"
    else:
        level_masks, masks, source = [adjacent], adjacent, "neighbouring pairs"
    background_blocks = None
    if foreground is None:
        blocks = block_sigma(volume, level_masks, valid, default=default_sigma)
    else:
        inside = foreground[:-1] & foreground[1:]
        outside = ~foreground[:-1] & ~foreground[1:]
        blocks = block_sigma(volume, [m & inside for m in level_masks], valid, default=default_sigma)
        background_blocks = block_sigma(volume, [m & outside for m in level_masks], valid, default=default_sigma)
    autocorrelation = _autocorrelation(volume, masks, valid, blocks)
    return NoiseModel(
        sigma_blocks=blocks,
        kernel=correlation_kernel(autocorrelation),
        shape=tuple(int(n) for n in volume.shape),
        lag1_correlation=float(autocorrelation[MAX_LAG, MAX_LAG + 1]),
        source=source,
        foreground=None if foreground is None else np.asarray(foreground, dtype=bool),
        background_blocks=background_blocks,
    )
