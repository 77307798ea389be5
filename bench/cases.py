"""The benchmark's cases, split into a tuning set and a report set.

Rule: every default (NS-N2N's, and every baseline parameter) is chosen on the **tuning** set only; the
README quotes the **report** set. The two sets use disjoint slabs of each source volume (different
anatomy) and different noise seeds, so nothing scored in a report table was seen while tuning:

=============  =====================================  ================  ================  ===========
case           source (licence)                       tuning slices     report slices     noise
=============  =====================================  ================  ================  ===========
ct-thin        TotalSegmentator chest CT 1.5 mm        25-56 (32)        110-141 (32)      sinogram I0 2.5e3
ct-thick       same, 3 slices averaged = 4.5 mm        0-89 -> 30        96-185 -> 30      sinogram I0 7.5e3
lung1          pyradiomics lung1 thorax CT 5 mm        0-23 (24)         24-47 (24)        sinogram I0 1e4
mr-thin-r5     MNI ICBM152 2009a T1, 1 mm              40-71 (32)        90-121 (32)       Rician 5 %
mr-thin-r9     same                                    40-71 (32)        90-121 (32)       Rician 9 %
mr-thick-r5    same, 5 slices averaged = 5 mm          5-74 -> 14        80-149 -> 14      Rician 5 %
=============  =====================================  ================  ================  ===========

Seeds: tuning 100; report 0, 1, 2 (mean ± spread over the three).

Thick slices are made as a scanner reconstructs them: the clean thin slices are averaged in groups
(a thick slice integrates the anatomy across its thickness) and the noise is injected afterwards, per
reconstructed slice. For CT the same dose spread over a 3x thicker slice gives 3x the photons per slice,
hence I0 x 3 (noise / sqrt 3); MR keeps the same relative Rician level (a stated simplification: a real
thicker MR slice has more signal per voxel).

References: ``as-is`` (default) scores against the source volume itself. A real CT reference carries
noise of its own (10-30 HU, stated in every table), which the truth then counts as error while any
noise estimator that sees the noisy volume counts it as noise; the noise figures a method reports cannot
be checked against such a truth. ``precleaned`` first denoises the CT references
(:func:`preclean_reference`: NLM 3-D, which brings their own noise from 10-30 HU to 3-6 HU while keeping
the anatomy), then injects the same noise: the reference for ``bench.quality --reference precleaned``,
whose noise-figure rows are then a check of the estimator. MR (a noise-free template) is the same in both.

Presets: ``default`` (the slabs above, in-plane: TotalSegmentator 167x233 at 1.5 mm, lung1 2x
block-mean to 256x256, MNI cropped to 208x176), ``full`` (lung1 at 512x512 and the whole tuning/report
range of the thin CT, meant for a GPU), ``quick`` (8-slice slabs, 2x in-plane block mean, for smoke runs).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench import data, noise

#: Bump when the noise simulation or the case definitions change: cached noisy volumes are then rebuilt.
NOISE_CACHE_VERSION = "v2"

SPLITS = ("tuning", "report")
REFERENCES = ("as-is", "precleaned")
#: NLM 3-D of :func:`preclean_reference`: h = this factor times the reference's own noise, patch 5, distance 3.
PRECLEAN_H_FACTOR = 0.8
SEEDS: dict[str, tuple[int, ...]] = {"tuning": (100,), "report": (0, 1, 2)}


@dataclass(frozen=True)
class Case:
    """One benchmark case: a slab of a source volume, optionally thickened, with a noise model.

    Attributes:
        name: case name, the same in both splits (``ct-thin``, ...).
        source: ``totalseg-ct``, ``lung1``, ``mni`` (MR) or ``mni-ct`` (synthetic CT-like head).
        z_range: [start, stop) of the source's thin slices used.
        thick: thin slices averaged into one output slice (1 = thin).
        noise: ``sinogram`` (CT) or ``rician`` (MR).
        level: I0 photons per ray (sinogram) or sigma as a fraction of the MR reference intensity.
        inplane_factor: in-plane block-mean factor applied to the source.
        title: one line for the report.
        full_z_range: the larger range the ``full`` preset uses (``None``: ``z_range``).
    """

    name: str
    source: str
    z_range: tuple[int, int]
    thick: int
    noise: str
    level: float
    inplane_factor: int
    title: str
    full_z_range: tuple[int, int] | None = None


def _cases(split: str) -> dict[str, Case]:
    tuning = split == "tuning"

    def rng(t: tuple[int, int], r: tuple[int, int]) -> tuple[int, int]:
        return t if tuning else r

    cases = [
        Case(
            "ct-thin",
            "totalseg-ct",
            rng((25, 57), (110, 142)),
            1,
            "sinogram",
            2.5e3,
            1,
            "real chest CT, 1.5 mm slices (TotalSegmentator), sinogram noise I0=2.5e3",
            full_z_range=rng((0, 90), (96, 186)),
        ),
        Case(
            "ct-thick",
            "totalseg-ct",
            rng((0, 90), (96, 186)),
            3,
            "sinogram",
            7.5e3,
            1,
            "same CT reconstructed at 4.5 mm (3 slices averaged), same dose: sinogram noise I0=7.5e3",
        ),
        Case(
            "lung1",
            "lung1",
            rng((0, 24), (24, 48)),
            1,
            "sinogram",
            1e4,
            2,
            "real thorax CT, 5 mm slices (pyradiomics lung1), sinogram noise I0=1e4",
        ),
        Case(
            "mr-thin-r5",
            "mni",
            rng((40, 72), (90, 122)),
            1,
            "rician",
            0.05,
            1,
            "MNI T1 template (MR, 1 mm), Rician noise 5 %",
        ),
        Case(
            "mr-thin-r9",
            "mni",
            rng((40, 72), (90, 122)),
            1,
            "rician",
            0.09,
            1,
            "MNI T1 template (MR, 1 mm), Rician noise 9 %",
        ),
        Case(
            "mr-thick-r5",
            "mni",
            rng((5, 75), (80, 150)),
            5,
            "rician",
            0.05,
            1,
            "MNI T1 at 5 mm (5 slices averaged), Rician noise 5 %",
        ),
    ]
    return {c.name: c for c in cases}


#: Cases outside the default sets, selectable by name: the synthetic CT-like head (former thin-CT stand-in).
EXTRA: dict[str, dict[str, Case]] = {
    split: {
        "mni-ct": Case(
            "mni-ct",
            "mni-ct",
            (40, 72) if split == "tuning" else (90, 122),
            1,
            "sinogram",
            1e4,
            1,
            "MNI mapped to CT-like HU (synthetic thin-slice CT, 1 mm), sinogram noise I0=1e4",
        )
    }
    for split in SPLITS
}

CASES: dict[str, dict[str, Case]] = {split: _cases(split) for split in SPLITS}


def case(split: str, name: str) -> Case:
    """The case ``name`` of ``split`` (default sets and extras)."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; choose from {SPLITS}")
    found = CASES[split].get(name) or EXTRA[split].get(name)
    if found is None:
        raise KeyError(f"unknown case {name!r}; choose from {[*CASES[split], *EXTRA[split]]}")
    return found


def preset_case(c: Case, preset: str) -> Case:
    """Adapt a case to a preset: ``full`` (lung1 at full in-plane size, the thin CT over its whole range),
    ``quick`` (8 output slices from the start of the range, 2x in-plane block mean), ``default`` (as is)."""
    if preset == "default":
        return c
    if preset == "full":
        if c.name == "lung1":
            return replace(c, inplane_factor=1)
        return replace(c, z_range=c.full_z_range or c.z_range)
    if preset == "quick":
        start = c.z_range[0]
        return replace(c, z_range=(start, min(c.z_range[1], start + 8 * c.thick)), inplane_factor=2 * c.inplane_factor)
    raise KeyError(f"unknown preset {preset!r}")


# --- building volumes -------------------------------------------------------------------------------------


def thick_slices(vol: np.ndarray, n: int) -> np.ndarray:
    """Average groups of ``n`` consecutive slices (a thick reconstruction); a remainder is dropped."""
    if n == 1:
        return vol
    d = vol.shape[0] // n
    return vol[: d * n].reshape(d, n, *vol.shape[1:]).mean(axis=1).astype(np.float32)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def _mni_inplane_window(ct_like: np.ndarray, factor: int) -> tuple[slice, slice]:
    """The fixed 208x176 in-plane crop (after block-mean by ``factor``) centred on the head."""
    head = np.argwhere((ct_like > -500).any(axis=0))
    cy, cx = ((head.min(0) + head.max(0)) // 2) // factor
    h, w = ct_like.shape[1] // factor, ct_like.shape[2] // factor
    size_y, size_x = 208 // factor, 176 // factor
    y0 = int(np.clip(cy - size_y // 2, 0, h - size_y))
    x0 = int(np.clip(cx - size_x // 2, 0, w - size_x))
    return slice(y0, y0 + size_y), slice(x0, x0 + size_x)


class CaseStore:
    """Loads each source once, builds the clean volume of a case and its (cached) noisy versions."""

    def __init__(
        self,
        preset: str = "default",
        workers: int = 1,
        use_cache: bool = True,
        cache: Path | None = None,
        reference: str = "as-is",
    ):
        if reference not in REFERENCES:
            raise KeyError(f"unknown reference {reference!r}; choose from {REFERENCES}")
        self.preset = preset
        self.reference = reference
        self.workers = workers
        self.use_cache = use_cache
        self.cache = cache or data.CACHE_DIR
        self._sources: dict[str, dict] = {}
        self._clean: dict[tuple, data.Volume] = {}

    def _source(self, source: str) -> dict:
        if source not in self._sources:
            _log(f"loading {source}")
            if source == "totalseg-ct":
                vol, spacing = data.load_totalseg_ct(self.cache)
                self._sources[source] = {"vol": vol, "spacing": spacing}
            elif source == "lung1":
                vol, spacing = data.load_lung1(self.cache)
                self._sources[source] = {"vol": vol, "spacing": spacing}
            elif source in ("mni", "mni-ct"):
                mni = data.load_mni(self.cache)
                t1, gm, wm = mni["t1"], mni["gm"], mni["wm"]
                ct = data.mni_to_ct(t1, gm, wm, spacing_mm=float(mni["spacing"][1]))
                ref = float(np.percentile(t1[t1 > 0], 99.9))
                self._sources["mni"] = {"vol": t1, "spacing": mni["spacing"], "brain": gm + wm, "ref": ref, "ct": ct}
                self._sources["mni-ct"] = {"vol": ct, "spacing": mni["spacing"], "ct": ct}
            else:
                raise KeyError(f"unknown source {source!r}")
        return self._sources[source]

    def clean(self, c: Case) -> data.Volume:
        """The clean volume (and evaluation mask) of a case under the store's preset."""
        c = preset_case(c, self.preset)
        key = (c.source, c.z_range, c.thick, c.inplane_factor)
        if key in self._clean:
            return self._clean[key]
        src = self._source(c.source)
        z0, z1 = c.z_range
        vol = data.block_mean(thick_slices(src["vol"][z0:z1], c.thick), c.inplane_factor)
        dz, dy, dx = src["spacing"]
        spacing = (dz * c.thick, dy * c.inplane_factor, dx * c.inplane_factor)
        crop = (slice(None), slice(None))
        if c.source in ("mni", "mni-ct"):
            crop = _mni_inplane_window(src["ct"], c.inplane_factor)
            vol = np.ascontiguousarray(vol[:, crop[0], crop[1]])
        shape = "x".join(map(str, vol.shape))
        mm = f"{spacing[0]:g}x{spacing[1]:.3g}x{spacing[2]:.3g} mm"
        where = f"source slices {z0}-{z1 - 1}" + (f", {c.thick} averaged per slice" if c.thick > 1 else "")
        if c.source == "mni":
            brain = data.block_mean(thick_slices(src["brain"][z0:z1], c.thick), c.inplane_factor)
            mask = _fill_holes_per_slice(brain[:, crop[0], crop[1]] > 0.1)
            volume = data.Volume(
                c.name, vol, spacing, "MR", mask, ref_scale=src["ref"], description=f"{shape} voxels of {mm} ({where})"
            )
        else:
            volume = data.Volume(
                c.name, vol, spacing, "CT", data.body_mask_ct(vol), description=f"{shape} voxels of {mm} ({where})"
            )
            if self.reference == "precleaned":
                volume = preclean_reference(volume)
        self._clean[key] = volume
        return volume

    def noisy(self, split: str, c: Case, seed: int) -> np.ndarray:
        """The noisy volume of a case for one seed, from the cache when present."""
        vol = self.clean(c)
        pc = preset_case(c, self.preset)
        shape = "x".join(map(str, vol.clean.shape))
        ref = "-precleaned" if self.reference == "precleaned" and vol.modality == "CT" else ""
        tag = (
            f"{c.name}-{split}-{self.preset}-{pc.z_range[0]}_{pc.z_range[1]}-{shape}{ref}-s{seed}-{NOISE_CACHE_VERSION}"
        )
        path = self.cache / "noisy" / f"{tag}.npy"
        if self.use_cache and path.exists():
            return np.load(path)
        t0 = time.time()
        if c.noise == "sinogram":
            out = noise.add_sinogram_noise(vol.clean, vol.spacing[1], c.level, seed, self.workers)
        else:
            out = noise.add_rician_noise(vol.clean, c.level * vol.ref_scale, seed)
        _log(f"{c.name} ({split}, seed {seed}): noise simulated in {time.time() - t0:.1f} s")
        if self.use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, out)
        return out


def reference_own_noise(vol: data.Volume) -> float:
    """Noise already in a CT reference: median local (7x7) std in flat soft tissue of the clean volume, HU.

    Real CT references are not noise-free: their own noise bounds the PSNR any denoiser can reach, so
    every table states it next to the injected noise. Flat soft tissue = local mean in [-50, 150] HU and
    in-plane gradient (of a 2 px Gaussian) in the lowest decile there; texture still adds to it, so it is
    an upper bound. NaN for MR (the MNI template is an average of 152 brains: its noise is negligible).
    """
    if vol.modality != "CT":
        return float("nan")
    x = vol.clean.astype(np.float64)
    mean = ndimage.uniform_filter(x, (1, 7, 7))
    std = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, (1, 7, 7)) - mean * mean, 0.0))
    smooth = ndimage.gaussian_filter(x, (0, 2, 2))
    grad = np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=2))
    soft = vol.mask & (mean > -50) & (mean < 150)
    if soft.sum() < 100:
        return float("nan")
    flat = soft & (grad <= np.quantile(grad[soft], 0.1))
    return float(np.median(std[flat]))


def preclean_reference(vol: data.Volume) -> data.Volume:
    """A CT reference with its own noise removed: skimage NLM 3-D (fast mode, patch 5, search distance 3)
    with ``h`` = :data:`PRECLEAN_H_FACTOR` times its own noise (:func:`reference_own_noise`).

    Same body mask (same anatomy); the description states the own noise before and after. Used where the
    truth must be free of noise (checking a noise estimator), not for the quality tables, whose reference
    stays the real volume.
    """
    from bench.baselines import NLMParams, nlm3d

    own = reference_own_noise(vol)
    if vol.modality != "CT" or not np.isfinite(own):
        return vol
    params = NLMParams(h_factor=PRECLEAN_H_FACTOR, patch_size=5, patch_distance=3)
    cleaned = nlm3d(vol.clean.astype(np.float32), own, params).astype(np.float32)
    out = replace(vol, clean=cleaned)
    note = f"; reference pre-cleaned by NLM 3-D (h = {PRECLEAN_H_FACTOR} x {own:.1f} HU, its own noise before)"
    return replace(out, description=vol.description + note)


def _log(msg: str) -> None:
    print(f"[bench.cases] {msg}", file=sys.stderr, flush=True)
