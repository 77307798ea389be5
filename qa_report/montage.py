"""Before / after / difference montage of representative slices, as a PNG.

Layout (dark background, like a reading-room viewer)::

    +-------------------------------------------------------------+
    | title                                                       |
    |          Before            After (NS-N2N)    Difference     |
    |          W 400 L 40 HU     W 400 L 40 HU     +/-45 HU       |
    | slice  [tile 256x256]    [tile 256x256]    [tile 256x256]   |
    | ...one row per slice...                                     |
    | NOT FOR DIAGNOSTIC USE - research software      footer      |
    +-------------------------------------------------------------+

**Size rule** (exact and independent of the input size): every tile is ``TILE`` x ``TILE`` = 256 x 256
px; the slice is resampled to fit the tile with its physical aspect ratio kept (``pixel_spacing``) and
centred on the (near-black) background. The PNG is ``montage_size(n_rows)`` =
``(880, 136 + 264 * n_rows)`` px, i.e.
880 x 928 px for the default 3 slices, where ``n_rows`` is the number of *distinct* slices shown.
Row labels give the 1-based slice position in the volume ("slice k of D").

Only numpy and Pillow are used (the fonts are the DejaVu fonts that ship with matplotlib).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write_bytes
from .notice import NOTICE
from .windows import describe_difference_window, describe_window, difference_window, display_window

__all__ = [
    "DEFAULT_SLICE_FRACTIONS",
    "TILE",
    "choose_slices",
    "montage_size",
    "render_montage",
    "render_montage_image",
    "save_montage",
]

#: Side of one square tile, px.
TILE = 256
#: Space between tiles, px.
GAP = 8
#: Outer margin, px.
MARGIN = 16
#: Width of the slice-label column on the left, px.
LABEL_W = 64
#: Heights of the title band, the column-header band (2 lines) and the footer band, px.
TITLE_H = 36
HEADER_H = 44
FOOTER_H = 24
#: Default slice positions as fractions of the depth.
DEFAULT_SLICE_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75)

_BG = (18, 18, 18)
_FG = (235, 235, 235)
_DIM = (160, 160, 160)
_WARN = (255, 170, 60)
_FRAME = (70, 70, 70)
_LETTERBOX = 18  # grey level outside the resampled slice inside a tile (same as the page background)


def montage_size(n_rows: int) -> tuple[int, int]:
    """Exact ``(width, height)`` in px of a montage with ``n_rows`` slices: ``(880, 136 + 264 * n_rows)``."""
    if n_rows < 1:
        raise ValueError("a montage needs at least one row")
    width = MARGIN + LABEL_W + 3 * TILE + 2 * GAP + MARGIN
    height = MARGIN + TITLE_H + HEADER_H + n_rows * TILE + (n_rows - 1) * GAP + GAP + FOOTER_H + MARGIN
    return width, height


@cache
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    import matplotlib  # only for the location of its bundled DejaVu fonts

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:  # pragma: no cover - matplotlib always ships DejaVu
        return ImageFont.load_default(size)


def choose_slices(
    depth: int,
    padding_mask: np.ndarray | None = None,
    fractions: Sequence[float] = DEFAULT_SLICE_FRACTIONS,
) -> list[int]:
    """Pick representative slice indices: the given fractions (default 25/50/75 %) of the depth.

    With a ``padding_mask`` (D, H, W), slices that are entirely padding are skipped, i.e. the fractions
    are taken over the slices that contain data. Duplicates (tiny volumes) are removed; order ascending.
    """
    if depth < 1:
        raise ValueError("volume has no slices")
    candidates = np.arange(depth)
    if padding_mask is not None:
        has_data = ~np.asarray(padding_mask, dtype=bool).reshape(depth, -1).all(axis=1)
        if has_data.any():
            candidates = candidates[has_data]
    n = len(candidates)
    picked = {int(candidates[min(n - 1, max(0, int(f * (n - 1) + 0.5)))]) for f in fractions}  # round half up
    return sorted(picked)


def _to_grey(img: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    scaled = (np.nan_to_num(img.astype(np.float64), nan=low) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _fit_tile(grey: np.ndarray, pixel_spacing: tuple[float, float]) -> Image.Image:
    """Resample a (H, W) uint8 slice into a TILE x TILE black tile, keeping the physical aspect ratio."""
    h, w = grey.shape
    dy, dx = pixel_spacing
    phys_h, phys_w = h * dy, w * dx
    scale = TILE / max(phys_h, phys_w)
    new_w = max(1, min(TILE, round(phys_w * scale)))
    new_h = max(1, min(TILE, round(phys_h * scale)))
    src = Image.fromarray(grey, mode="L")
    resample = Image.Resampling.LANCZOS if (new_w < w or new_h < h) else Image.Resampling.BILINEAR
    img = src.resize((new_w, new_h), resample=resample)
    tile = Image.new("L", (TILE, TILE), _LETTERBOX)
    tile.paste(img, ((TILE - new_w) // 2, (TILE - new_h) // 2))
    return tile


def _text_centered(draw: ImageDraw.ImageDraw, cx: int, y: int, text: str, font, fill) -> None:
    width = draw.textlength(text, font=font)
    draw.text((cx - width / 2, y), text, font=font, fill=fill)


def _ellipsize(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def render_montage_image(
    before: np.ndarray,
    after: np.ndarray,
    modality: str,
    *,
    padding_mask: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    title: str = "NS-N2N denoising",
    noise_before: float | None = None,
    pixel_spacing: tuple[float, float] | None = None,
) -> Image.Image:
    """Render the montage as an RGB PIL image of exactly ``montage_size(n_rows)`` px.

    Args:
        before: input volume (D, H, W); CT in HU.
        after: denoised volume, same shape.
        modality: DICOM Modality; selects the display window (see ``qa_report.windows``).
        padding_mask: optional (D, H, W) bool, True = padding; ignored by the window statistics, shown
            black in before/after and mid grey (zero) in the difference.
        slices: 0-based slice indices (rows, shown in the given order, duplicates dropped; labelled
            1-based as "slice k of D"); default
            ``choose_slices(D, padding_mask)`` = 25 / 50 / 75 % of the depth.
        title: line at the top (ASCII/Latin-1 recommended; no patient identifiers).
        noise_before: noise estimate of the input (same unit as the data); sets the difference window
            to +/-3 x noise, otherwise the 99th percentile of |diff| is used.
        pixel_spacing: in-plane spacing (dy, dx) in mm for the aspect ratio; default square pixels.
    """
    before, after, padding_mask = _checked_volumes(before, after, padding_mask)
    rows = _rows(before.shape[0], padding_mask, slices)
    spacing = (1.0, 1.0) if pixel_spacing is None else (float(pixel_spacing[0]), float(pixel_spacing[1]))
    if not (spacing[0] > 0 and spacing[1] > 0):
        raise ValueError(f"pixel_spacing must be positive, got {pixel_spacing}")
    window = display_window(modality, before, padding_mask)
    noise_based = noise_before is not None and np.isfinite(noise_before) and noise_before > 0
    dwindow = difference_window(before, after, padding_mask, noise_before)

    width, height = montage_size(len(rows))
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    heads = [
        ("Before (input)", describe_window(modality, window)),
        ("After (NS-N2N)", describe_window(modality, window)),
        ("Difference (before - after)", describe_difference_window(modality, dwindow, noise_based)),
    ]
    _draw_header(draw, width, title, heads)
    y = MARGIN + TITLE_H + HEADER_H
    for z in rows:
        pad = padding_mask[z] if padding_mask is not None else None
        tiles = _row_tiles(before[z], after[z], pad, window, dwindow)
        _draw_row(canvas, draw, y, tiles, spacing, f"{z + 1}", f"of {before.shape[0]}")
        y += TILE + GAP
    _draw_footer(draw, width, height, before.shape)
    return canvas


def _checked_volumes(
    before: np.ndarray, after: np.ndarray, padding_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    before = np.asarray(before)
    after = np.asarray(after)
    if before.ndim != 3 or before.shape != after.shape:
        raise ValueError(f"before/after must be 3-D of equal shape, got {before.shape} and {after.shape}")
    if padding_mask is not None:
        padding_mask = np.asarray(padding_mask, dtype=bool)
        if padding_mask.shape != before.shape:
            raise ValueError(f"padding_mask shape {padding_mask.shape} != volume shape {before.shape}")
    return before, after, padding_mask


def _rows(depth: int, padding_mask: np.ndarray | None, slices: Sequence[int] | None) -> list[int]:
    """The slice indices shown, one a row (see :func:`render_montage_image`)."""
    if slices is None:
        return choose_slices(depth, padding_mask)
    rows = list(dict.fromkeys(int(s) for s in slices))
    if not rows:
        raise ValueError("slices is empty")
    bad = [s for s in rows if not 0 <= s < depth]
    if bad:
        raise ValueError(f"slice indices {bad} out of range 0..{depth - 1}")
    return rows


def _row_tiles(
    before: np.ndarray,
    after: np.ndarray,
    padding: np.ndarray | None,
    window: tuple[float, float],
    dwindow: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey levels of one slice before, after and of their difference (padding black / mid grey)."""
    grey_b, grey_a = _to_grey(before, window), _to_grey(after, window)
    diff = before.astype(np.float64) - after.astype(np.float64)
    if padding is not None:
        grey_b[padding] = 0
        grey_a[padding] = 0
        diff[padding] = 0.0
    return grey_b, grey_a, _to_grey(diff, dwindow)


def _column_x() -> list[int]:
    return [MARGIN + LABEL_W + i * (TILE + GAP) for i in range(3)]


def _draw_header(draw: ImageDraw.ImageDraw, width: int, title: str, heads: Sequence[tuple[str, str]]) -> None:
    """The title line and, over each column, its name and display window."""
    f_title, f_head, f_small = _font(18, True), _font(14, True), _font(12)
    draw.text((MARGIN, MARGIN + 4), _ellipsize(draw, title, f_title, width - 2 * MARGIN), font=f_title, fill=_FG)
    draw.line((MARGIN, MARGIN + TITLE_H - 4, width - MARGIN, MARGIN + TITLE_H - 4), fill=_FRAME)
    y_head = MARGIN + TITLE_H
    for cx, (head, sub) in zip(_column_x(), heads, strict=True):
        _text_centered(draw, cx + TILE // 2, y_head + 2, head, f_head, _FG)
        _text_centered(draw, cx + TILE // 2, y_head + 22, _ellipsize(draw, sub, f_small, TILE), f_small, _DIM)


def _draw_row(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    y: int,
    tiles: Sequence[np.ndarray],
    spacing: tuple[float, float],
    number: str,
    of_depth: str,
) -> None:
    """One row: the slice label on the left, then the three framed tiles."""
    for cx, grey in zip(_column_x(), tiles, strict=True):
        canvas.paste(_fit_tile(grey, spacing), (cx, y))
        draw.rectangle((cx - 1, y - 1, cx + TILE, y + TILE), outline=_FRAME)
    cy = y + TILE // 2
    _text_centered(draw, MARGIN + LABEL_W // 2 - 4, cy - 22, "slice", _font(12), _DIM)
    _text_centered(draw, MARGIN + LABEL_W // 2 - 4, cy - 6, number, _font(16, True), _FG)
    _text_centered(draw, MARGIN + LABEL_W // 2 - 4, cy + 14, of_depth, _font(12), _DIM)


def _draw_footer(draw: ImageDraw.ImageDraw, width: int, height: int, shape: tuple[int, ...]) -> None:
    """The research-use notice on the left, the volume size on the right."""
    f_small = _font(12)
    y_foot = height - MARGIN - FOOTER_H + 6
    draw.text((MARGIN, y_foot), NOTICE, font=f_small, fill=_WARN)
    foot = f"volume {shape[0]} x {shape[1]} x {shape[2]}  |  tiles {TILE} px"
    draw.text((width - MARGIN - draw.textlength(foot, font=f_small), y_foot), foot, font=f_small, fill=_DIM)


def render_montage(before: np.ndarray, after: np.ndarray, modality: str, **options: Any) -> bytes:
    """Render the montage and return it as PNG bytes (size: ``montage_size(n_rows)``; see module doc).

    Keyword arguments as for :func:`render_montage_image`. The PNG is deterministic for given inputs.
    """
    buf = io.BytesIO()
    render_montage_image(before, after, modality, **options).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def save_montage(
    path: str | os.PathLike[str],
    before: np.ndarray,
    after: np.ndarray,
    modality: str,
    **kwargs,
) -> bytes:
    """Render the montage (keyword arguments as :func:`render_montage`), write it atomically to ``path``
    (temp file in the same folder + rename; parent folders are created) and return the PNG bytes, so the
    caller can pass them on to :func:`qa_report.pdf.render_report_pdf` without rendering twice.
    """
    png = render_montage(before, after, modality, **kwargs)
    atomic_write_bytes(Path(path), png)
    return png
