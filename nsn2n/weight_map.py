"""Weight maps W_i: where neighbouring slices i and i+1 show the same anatomy.

NS-N2N uses slice i+1 as a Noise2Noise target for slice i only in *matched* regions. A region is
matched when the two slices agree after strong low-pass filtering, i.e. when their difference there
is explained by noise alone:

    L_k  = Median_m( Bilateral_{sigma, r * sigma_n}( x_k ) )    k in {i, i+1}, in-plane filters
    D_i  = L_i - L_{i+1}
    s_i  = noise scale of D_i  (see below)
    W_i  = 1[ |D_i| <= k * s_i ]  and both pixels not padding

Threshold rule (our decision, replacing the fixed tau = 0.015 of re-implementations, which does not
transfer between CT windows, MR and dose levels): the threshold is ``k`` standard deviations of the
*noise* in the pair's low-pass residual, so it adapts to the noise level of each volume and pair.

The low-pass guide is edge-preserving (the paper's guide is NLM + median; re-implementations found a
bilateral + median guide as good and far cheaper): a bilateral filter whose spatial sigma is
``lowpass_sigma_px`` and whose range sigma is ``guide_range_k`` times the pixel noise sigma_n, followed by
a median. Why edge-preserving: a plain (Gaussian) low-pass smears a sharp edge that moved by a pixel or
less between the slices into a small difference that passes the threshold, and the network then learns
to blur every high-contrast edge (air/tissue in CT). sigma_n is the quiet-tile MAD (below) of the raw
neighbouring-slice differences divided by sqrt(2), the median over the volume's pairs.

Estimating the noise scale of the residual is the crux. The median absolute deviation (MAD) of the whole
residual is not enough: with thick slices anatomy changes everywhere a little, so the MAD of the whole
residual counts anatomy as noise, lets anatomy differences of several noise units pass as "matched" and
the result is blurred. We therefore use the *quietest tiles*: the residual is cut into 32x32 tiles, each
tile's MAD is computed over its valid, non-zero pixels, and ``s_i`` is the 25th percentile of the tile
MADs of the pair (tiles in homogeneous tissue, air or background, where the residual is noise only).
Exactly-zero residuals (noise-free padding or air outside the reconstruction circle) are left out. With
fewer than 4 usable tiles the pair's overall MAD is used. The per-pair scales are then smoothed with a
running median over 5 pairs. ``k = 3`` keeps about 99 % of noise-only pixels and rejects anatomy changes
above about three noise units.

Everything is torch (CPU or CUDA), slice by slice or in chunks of slices to bound memory (:class:`SliceTasks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

from .noise import MAD_TO_SIGMA

T = TypeVar("T")

__all__ = [
    "SliceTasks",
    "WeightMaps",
    "bilateral",
    "compute_weight_maps",
    "guide_filter",
    "median_filter",
    "pixel_noise_sigma",
    "quiet_tile_scale",
    "robust_scale",
    "slice_tasks",
]


@dataclass
class WeightMaps:
    """Weight maps of a volume of D slices.

    Attributes:
        weights: bool tensor (D-1, H, W); ``weights[i]`` is W_i for the pair (i, i+1).
        thresholds: float tensor (D-1,), the threshold used for each pair (network units).
        matched_fraction: fraction of valid pixels marked matched, over all pairs.
        pixel_sigma: pixel noise sigma (network units) used for the guide's range kernel.
    """

    weights: torch.Tensor
    thresholds: torch.Tensor
    matched_fraction: float
    pixel_sigma: float = float("nan")


class SliceTasks:
    """Runs per-slice work: on the CPU one slice per task on a thread pool, on CUDA a chunk of slices a call.

    Why on the CPU: torch splits each operation over its intra-op threads, which must all meet at the
    end of every operation. The filters here are hundreds of small elementwise operations per slice;
    on a host whose cores are shared with other jobs one descheduled thread makes the others wait (and
    spin) at every one of them. Whole slices as independent tasks on ``torch.get_num_threads()`` pool
    threads, each operation single-threaded (see :func:`slice_tasks`), need no meeting point and keep a
    slice's buffers in the core's cache. On CUDA the chunk bounds memory and keeps kernels large.

    Args:
        pool: the CPU thread pool; ``None`` runs the tasks in order in the calling thread.
        chunk: slices per call of :meth:`map_chunks`.
    """

    def __init__(self, pool: ThreadPoolExecutor | None = None, chunk: int = 1) -> None:
        self.pool = pool
        self.chunk = chunk

    def map(self, fn: Callable[[int], T], count: int) -> list[T]:
        """``[fn(i) for i in range(count)]``, in parallel on the pool."""
        if self.pool is None:
            return [fn(i) for i in range(count)]
        return list(self.pool.map(fn, range(count)))

    def map_chunks(self, fn: Callable[[slice], T], count: int) -> list[T]:
        """``fn`` on consecutive slices of ``range(count)`` of at most ``chunk`` indices each."""
        parts = [slice(start, min(start + self.chunk, count)) for start in range(0, count, self.chunk)]
        return self.map(lambda k: fn(parts[k]), len(parts))


@contextmanager
def slice_tasks(device: torch.device, cuda_chunk: int = 32) -> Iterator[SliceTasks]:
    """:class:`SliceTasks` for ``device``; on the CPU torch's intra-op threads are set to 1 meanwhile.

    The pool has as many threads as torch had intra-op threads (the configured ``num_threads``); torch
    gives each new thread the process-wide count in force when that thread first runs an operation,
    hence 1 for the pool threads, and the count is restored when the block ends.
    """
    if device.type != "cpu":
        yield SliceTasks(None, cuda_chunk)
        return
    workers = torch.get_num_threads()
    if workers <= 1:
        yield SliceTasks()
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nsn2n-slices") as pool:
            yield SliceTasks(pool)
    finally:
        torch.set_num_threads(workers)


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) -> (N, H, W) ``size`` x ``size`` median with reflected borders (``F.pad`` mode ``reflect``).

    Forgetful selection over the ``size**2`` shifted views of the padded slices: of any ``n // 2 + 2``
    window values, the smallest and the largest cannot be the median (rank ``n // 2``) of the ``n``, so
    both are dropped, the next view is added, and so on until one value is left. Only elementwise
    minimum and maximum are used, so the cost is a few hundred passes over the slices with no per-pixel
    sort, on the CPU and on CUDA alike; the result is exactly the median of the window.
    """
    if size <= 1:
        return x
    m = size // 2
    h, w = x.shape[-2:]
    padded = F.pad(x.unsqueeze(1), (m, m, m, m), mode="reflect").squeeze(1)
    views = [padded[:, dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]
    keep = len(views) // 2 + 2  # always 3 values left after the last view: keep - (n - keep) = 3
    work = views[:keep]
    for view in views[keep:]:
        work = _drop_min_and_max(work)
        work.append(view)
    return _middle_of_three(work)


def _drop_min_and_max(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """The multiset ``values`` less one minimum and one maximum, elementwise (compare-exchange network)."""
    lows, highs = [], []
    for a, b in zip(values[0::2], values[1::2], strict=False):
        lows.append(torch.minimum(a, b))
        highs.append(torch.maximum(a, b))
    if len(values) % 2:  # the odd one out: exchanged with a low, so the minimum stays among the lows
        odd, low = values[-1], lows[0]
        lows[0], odd = torch.minimum(low, odd), torch.maximum(low, odd)
        highs.append(odd)
    for j in range(1, len(lows)):  # the minimum to lows[0]
        lows[0], lows[j] = torch.minimum(lows[0], lows[j]), torch.maximum(lows[0], lows[j])
    for j in range(1, len(highs)):  # the maximum to highs[0]
        highs[0], highs[j] = torch.maximum(highs[0], highs[j]), torch.minimum(highs[0], highs[j])
    return lows[1:] + highs[1:]


def _middle_of_three(values: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of three tensors."""
    a, b, c = values
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def bilateral(slices: torch.Tensor, sigma_s: float, sigma_r: float) -> torch.Tensor:
    """Bilateral filter per slice, (N, H, W) -> (N, H, W) float32; window radius ``ceil(2 * sigma_s)``.

    Shift and accumulate: for each window offset ``o`` the weight of the pixel pair ``(p, p + o)`` is
    ``exp(-|o|^2 / 2 sigma_s^2 - (x_p - x_{p+o})^2 / 2 sigma_r^2)``, symmetric in the pair, so it is computed
    once for ``o`` and ``-o`` over the reflect-padded slices and added to both pixels' sums. Memory is a
    few copies of the slices, whatever the window.
    """
    r = max(1, math.ceil(2.0 * sigma_s))
    inv_two_var = 1.0 / (2.0 * max(float(sigma_r), 1e-12) ** 2)
    x = slices.float()
    h, w = x.shape[-2:]
    padded = F.pad(x.unsqueeze(1), (r, r, r, r), mode="reflect").squeeze(1)
    ph, pw = padded.shape[-2:]
    numerator = x.clone()  # the centre pixel, weight 1
    denominator = torch.ones_like(x)
    buffer = torch.empty_like(padded)
    for dy in range(r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue  # the other half of the window: the same pairs seen from the other pixel
            left, right = max(0, -dx), max(0, dx)
            near = padded[:, : ph - dy, left : pw - right]  # p
            far = padded[:, dy:, right : pw - left]  # p + o
            weight = buffer[:, : ph - dy, : pw - left - right]
            torch.sub(near, far, out=weight)
            weight.square_().mul_(-inv_two_var).add_(-(dy * dy + dx * dx) / (2.0 * sigma_s**2)).exp_()
            # pixel p in the slice: its pair partner p + o
            core = (slice(None), slice(r, r + h), slice(r - left, r - left + w))
            denominator.add_(weight[core])
            numerator.addcmul_(weight[core], far[core])
            # pixel q = p + o in the slice: its pair partner q - o
            core = (slice(None), slice(r - dy, r - dy + h), slice(r - dx - left, r - dx - left + w))
            denominator.add_(weight[core])
            numerator.addcmul_(weight[core], near[core])
    return numerator.div_(denominator)


def guide_filter(slices: torch.Tensor, sigma_s: float, sigma_r: float, median_size: int) -> torch.Tensor:
    """The weight map's edge-preserving low-pass: bilateral, then median (see the module docstring)."""
    return median_filter(bilateral(slices, sigma_s, sigma_r), median_size)


def pixel_noise_sigma(
    volume: torch.Tensor, valid: torch.Tensor | None, max_pairs: int = 32, *, tasks: SliceTasks | None = None
) -> float:
    """Pixel noise sigma from raw neighbouring-slice differences (quiet tiles, / sqrt 2), median over pairs."""
    depth = volume.shape[0]
    pairs = torch.linspace(0, depth - 2, min(max_pairs, depth - 1)).round().long().unique().tolist()

    def pair_scale(i: int) -> torch.Tensor:
        pair_valid = valid[i] & valid[i + 1] if valid is not None else torch.ones_like(volume[i], dtype=torch.bool)
        return quiet_tile_scale(volume[i].float() - volume[i + 1].float(), pair_valid)

    scales = (tasks or SliceTasks()).map(lambda k: pair_scale(pairs[k]), len(pairs))
    return float(torch.stack(scales).median()) / math.sqrt(2.0)


def robust_scale(diff: torch.Tensor, valid: torch.Tensor, max_samples: int = 1_000_000) -> torch.Tensor:
    """MAD-based standard deviation of ``diff`` over ``valid`` pixels with a non-zero residual.

    Returns a 0-d tensor; 0 when there is nothing to measure.
    """
    values = diff[valid & (diff != 0)]
    if values.numel() == 0:
        return torch.zeros((), device=diff.device)
    if values.numel() > max_samples:
        values = values[:: values.numel() // max_samples + 1]
    centre = values.median()
    return MAD_TO_SIGMA * (values - centre).abs().median()


def quiet_tile_scale(
    diff: torch.Tensor, valid: torch.Tensor, tile: int | None = None, quantile: float = 0.25, min_tiles: int = 4
) -> torch.Tensor:
    """Noise scale of a residual from its quietest tiles (see the module docstring); 0-d tensor.

    ``tile`` defaults to 32 pixels, 16 for slices under 128 pixels on a side.
    """
    tile = tile or (32 if min(diff.shape) >= 128 else 16)
    h, w = (diff.shape[0] // tile) * tile, (diff.shape[1] // tile) * tile
    usable = valid & (diff != 0)
    if h == 0 or w == 0:
        return robust_scale(diff, valid)
    values = diff[:h, :w].reshape(h // tile, tile, w // tile, tile).permute(0, 2, 1, 3).reshape(-1, tile * tile)
    keep = usable[:h, :w].reshape(h // tile, tile, w // tile, tile).permute(0, 2, 1, 3).reshape(-1, tile * tile)
    full = keep.float().mean(dim=1) >= 0.5
    if int(full.sum()) < min_tiles:
        return robust_scale(diff, valid)
    values = torch.where(keep, values, torch.full_like(values, float("nan")))[full]
    centre = values.nanmedian(dim=1, keepdim=True).values
    mads = MAD_TO_SIGMA * (values - centre).abs().nanmedian(dim=1).values
    return torch.quantile(mads, quantile)


def _running_median(values: torch.Tensor, width: int = 5) -> torch.Tensor:
    if values.numel() < 3:
        return values
    r = width // 2
    padded = torch.cat([values[:1].repeat(r), values, values[-1:].repeat(r)])
    return padded.unfold(0, 2 * r + 1, 1).median(dim=1).values


def compute_weight_maps(
    volume: torch.Tensor,
    valid: torch.Tensor | None,
    *,
    sigma: float,
    median_size: int,
    threshold_k: float,
    range_k: float = 2.0,
) -> WeightMaps:
    """Weight maps for every neighbouring pair of ``volume`` (D, H, W), normalised intensities.

    Slices are processed one at a time on the CPU and in chunks on CUDA (see :class:`SliceTasks`), so
    the working memory beyond the filtered volume and the maps is a few slices.

    Args:
        volume: (D, H, W) float tensor, D >= 2.
        valid: (D, H, W) bool tensor, False for padding; ``None`` = all valid.
        sigma: spatial sigma of the bilateral guide, pixels.
        median_size: odd median filter size (1 = none).
        range_k: range sigma of the bilateral guide in units of the pixel noise sigma.
        threshold_k: threshold in robust standard deviations of each pair's low-pass residual.
    """
    depth = volume.shape[0]
    if depth < 2:
        raise ValueError("weight maps need at least two slices")
    filtered = torch.empty_like(volume, dtype=torch.float32)
    weights = torch.empty((depth - 1, *volume.shape[1:]), dtype=torch.bool, device=volume.device)

    def pair_valid(i: int) -> torch.Tensor:
        return valid[i] & valid[i + 1] if valid is not None else torch.ones_like(weights[i])

    with slice_tasks(volume.device) as tasks:
        pixel_sigma = pixel_noise_sigma(volume, valid, tasks=tasks)
        sigma_r = range_k * pixel_sigma

        def guide(part: slice) -> None:
            filtered[part] = guide_filter(volume[part], sigma, sigma_r, median_size)

        tasks.map_chunks(guide, depth)
        scales = torch.stack(
            tasks.map(lambda i: quiet_tile_scale(filtered[i] - filtered[i + 1], pair_valid(i)), depth - 1)
        )
        thresholds = threshold_k * _running_median(scales)

        def threshold(i: int) -> tuple[int, int]:
            usable = pair_valid(i)
            torch.logical_and((filtered[i] - filtered[i + 1]).abs_() <= thresholds[i], usable, out=weights[i])
            return int(weights[i].sum()), int(usable.sum())

        counts = tasks.map(threshold, depth - 1)
    matched = sum(m for m, _ in counts)
    total = sum(t for _, t in counts)
    return WeightMaps(
        weights=weights, thresholds=thresholds, matched_fraction=matched / max(total, 1), pixel_sigma=pixel_sigma
    )
