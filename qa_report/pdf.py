"""One-to-two page A4 QA report (PDF) of one denoised series, from its run record and montage.

The PDF is drawn with matplotlib's PDF backend (no pyplot, no GUI) using embedded TrueType (Type 42)
fonts, so all text is real, extractable text. Page 1 summarises the run (source/derived series,
geometry, noise before/after, the removed-structure check, method, training, timings, parameters,
warnings); page 2 shows the before/after/difference montage and the training loss curve. Long content
flows onto further pages.

The status in the title is the record's (``OK``, ``SKIPPED``, ``FAILED``), except that a written series
whose removed-structure check fired shows ``WARNING``: the series was written (the exit code does not
change), but its difference image holds anatomy and the reader should look at the montage first.

Privacy: the report is built **only** from the run record, which by design holds no patient identifiers
(no patient name, patient ID, birth date or accession number; see ``run_record.schema.json``), and from
the montage pixels. Nothing else is read, so the PDF contains no patient identifiers either. All text is
reduced to Latin-1 (non-Latin-1 characters are transliterated or replaced by '?').
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import unicodedata
from collections.abc import Mapping
from functools import cache
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.textpath import text_to_path
from PIL import Image

from .notice import NOTICE, NOTICE_DETAIL
from .run_record import noise_reduction_percent

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "display_status",
    "format_noise",
    "format_reduction",
    "latin1_safe",
    "render_report_pdf",
]

#: Method description per training formulation (the record's ``parameters.formulation``), used when the
#: record has no ``method`` section; records without a formulation predate the choice and used the paper's.
METHODS: dict[str, dict[str, Any]] = {
    "recorrupted": {
        "name": "NS-N2N, recorrupted formulation (self-supervised, this series only)",
        "summary": (
            "Self-supervised: the network is trained on this series alone, without clean references. "
            "Neighbouring slices show nearly the same anatomy with independent noise; where a pair's outer "
            "neighbours match, the pair's difference is pure noise, which gives this series' noise model "
            "(local level and in-plane texture). The network sees each slice with extra synthetic noise from "
            "that model and its neighbouring slices, and learns to predict the slice minus that noise: the "
            "target shows the slice's own anatomy, so anatomy that changes between slices is not learnt as "
            "noise. A residual clip limits each pixel's change to a few local noise standard deviations."
        ),
        "network": "2-D residual U-Net, 3 input slices (the slice and its neighbours); no normalisation layers",
        "losses": ["mean squared error against the recorrupted target (Recorrupted-to-Recorrupted)"],
    },
    "paper": {
        "name": "NS-N2N (Neighbouring-Slice Noise2Noise), paper formulation",
        "summary": (
            "Self-supervised: the network is trained on this series alone, without clean references. "
            "Neighbouring slices show nearly the same anatomy with independent noise, so each slice serves as "
            "a noisy target for its neighbour (Noise2Noise). A weight map marks the matched regions where the "
            "low-pass filtered neighbours agree within 3 robust noise units; only there is the neighbour used "
            "as a target, so the network learns to remove noise rather than anatomy that changes between slices."
        ),
        "network": "2-D residual U-Net (predicts the noise; LeakyReLU, no normalisation layers)",
        "losses": [
            "masked Noise2Noise reconstruction in matched regions (both directions)",
            "regional consistency",
            "inter-slice continuity",
        ],
    },
}
#: The description of a record that names no formulation.
DEFAULT_METHOD = METHODS["paper"]


def method_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The method description of a run record: by its formulation, overridden by its ``method`` section."""
    formulation = (record.get("parameters") or {}).get("formulation")
    base = METHODS.get(str(formulation), DEFAULT_METHOD)
    return base | dict(record.get("method") or {})


# Page geometry (points; A4 portrait).
_PAGE_W, _PAGE_H = 595.3, 841.9
_ML, _MR, _MT, _MB = 46.0, 46.0, 42.0, 48.0
_CONTENT_W = _PAGE_W - _ML - _MR
_RED = "#b3261e"
_AMBER = "#b06000"
_GREEN = "#1e7b34"
_GREY = "#5f6368"
_LIGHT = "#f1f3f4"
_RULE = "#c8ccd0"
_FONT = 8.5
_LINE = 11.5

_TRANSLIT = {
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u2192": "->",
    "\u2190": "<-",
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2248": "~",
    "\u00a0": " ",
    "\u2009": " ",
    "\u03bc": "\u00b5",
}


def latin1_safe(value: Any) -> str:
    """Return ``str(value)`` reduced to printable Latin-1: common typographic characters are
    transliterated (dashes, quotes, arrows), accents outside Latin-1 are stripped, the rest becomes '?'."""
    text = str(value)
    text = "".join(_TRANSLIT.get(ch, ch) for ch in text)
    out = []
    for ch in text:
        if ord(ch) < 256:
            out.append(ch if ch.isprintable() or ch == "\n" else " ")
            continue
        base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
        out.append(base if base and base.isprintable() else "?")
    return "".join(out)


def format_noise(value: float | None, unit: str = "") -> str:
    """Noise figure as printed in the report: 2 decimals plus unit, e.g. ``"25.31 HU"``; ``"n/a"`` if None."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f} {unit}".strip()


def format_reduction(before: float | None, after: float | None) -> str:
    """Noise reduction as printed in the report, e.g. ``"75.8 %"`` (negative = noise increased)."""
    pct = noise_reduction_percent(before, after)
    return "n/a" if pct is None else f"{pct:.1f} %"


def _fmt_value(value: Any, width: int = 40) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt_value(v, width) for v in value)
    text = latin1_safe(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _fmt_seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value >= 90:
        minutes, seconds = divmod(value, 60)
        return f"{value:.1f} s ({int(minutes)} min {seconds:02.0f} s)"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


@cache
def _font_props(size: float, weight: str) -> FontProperties:
    return FontProperties(family="DejaVu Sans", size=size, weight=weight)


def _text_width(text: str, size: float, weight: str = "normal") -> float:
    """Width in points of ``text`` set in DejaVu Sans at ``size``."""
    return text_to_path.get_text_width_height_descent(text, _font_props(size, weight), ismath=False)[0]


def _wrap(text: str, width_pt: float, size: float = _FONT, weight: str = "normal") -> list[str]:
    """Greedy word wrap measured with the real font metrics; over-long words are broken."""
    lines: list[str] = []
    for para in latin1_safe(text).split("\n"):
        line = ""
        for word in para.split():
            candidate = f"{line} {word}" if line else word
            if _text_width(candidate, size, weight) <= width_pt:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and _text_width(word, size, weight) > width_pt:
                lo, hi = 1, len(word) - 1  # longest prefix that fits (binary search)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if _text_width(word[:mid], size, weight) <= width_pt:
                        lo = mid
                    else:
                        hi = mid - 1
                lines.append(word[:lo])
                word = word[lo:]
            line = word
        lines.append(line)
    return lines or [""]


def _fit(text: str, width_pt: float, size: float = _FONT) -> str:
    """``text`` shortened with '...' so that it fits ``width_pt``."""
    text = latin1_safe(text)
    if _text_width(text, size) <= width_pt:
        return text
    while text and _text_width(text + "...", size) > width_pt:
        text = text[:-1]
    return text + "..."


class _Layout:
    """Top-down flow layout over A4 figures, in points from the top-left corner of the page."""

    def __init__(self, header: str) -> None:
        self.pages: list[Figure] = []
        self.header = header
        self.fig: Figure
        self.y = 0.0
        self.new_page()

    def new_page(self) -> None:
        self.fig = Figure(figsize=(_PAGE_W / 72.0, _PAGE_H / 72.0))
        self.pages.append(self.fig)
        self.y = _MT
        if len(self.pages) > 1:
            self.text(_ML, self.header, size=7.5, color=_GREY)
            self.text(_PAGE_W - _MR, NOTICE, size=7.5, color=_RED, weight="bold", ha="right")
            self.y += 10
            self.rule()
            self.y += 8

    def fx(self, x: float) -> float:
        return x / _PAGE_W

    def fy(self, y: float) -> float:
        return 1.0 - y / _PAGE_H

    def ensure(self, height: float) -> None:
        if self.y + height > _PAGE_H - _MB:
            self.new_page()

    def text(self, x: float, s: str, *, size: float = _FONT, y: float | None = None, **kw: Any) -> None:
        kw.setdefault("va", "top")
        self.fig.text(
            self.fx(x), self.fy(self.y if y is None else y), latin1_safe(s), fontsize=size, parse_math=False, **kw
        )

    def rule(self, color: str = _RULE, lw: float = 0.6) -> None:
        self.fig.add_artist(
            Line2D(
                [self.fx(_ML), self.fx(_PAGE_W - _MR)],
                [self.fy(self.y), self.fy(self.y)],
                transform=self.fig.transFigure,
                color=color,
                lw=lw,
            )
        )

    def rect(self, x: float, y: float, w: float, h: float, **kw: Any) -> None:
        self.fig.add_artist(
            Rectangle((self.fx(x), self.fy(y + h)), w / _PAGE_W, h / _PAGE_H, transform=self.fig.transFigure, **kw)
        )

    def section(self, title: str, min_body: float = 3 * _LINE) -> None:
        self.ensure(22 + min_body)
        self.y += 8
        self.text(_ML, title, size=11, weight="bold")
        self.y += 15
        self.rule()
        self.y += 5

    def paragraph(self, s: str, *, x: float = _ML, width: float = _CONTENT_W, size: float = _FONT, **kw: Any) -> None:
        for line in _wrap(s, width, size, kw.get("weight", "normal")):
            self.ensure(_LINE)
            self.text(x, line, size=size, **kw)
            self.y += size * 1.35

    def kv_block(self, rows: list[tuple[str, Any]], *, x: float, width: float, key_w: float = 92.0) -> float:
        """Key/value rows starting at the current y; returns the y after the block (does not move y)."""
        y = self.y
        for key, value in rows:
            lines = _wrap(_fmt_value(value, 400), width - key_w - 4)
            self.text(x, key, y=y, color=_GREY)
            for line in lines:
                self.text(x + key_w, line, y=y)
                y += _LINE
        return y

    def footers(self, left: str) -> None:
        n = len(self.pages)
        for i, fig in enumerate(self.pages, start=1):
            fig.text(
                self.fx(_ML),
                self.fy(_PAGE_H - _MB + 22),
                latin1_safe(left),
                fontsize=7,
                color=_GREY,
                va="top",
                parse_math=False,
            )
            fig.text(
                self.fx(_PAGE_W - _MR),
                self.fy(_PAGE_H - _MB + 22),
                f"Page {i} of {n}",
                fontsize=7,
                color=_GREY,
                va="top",
                ha="right",
                parse_math=False,
            )


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _creation_date(created: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return None


def display_status(record: Mapping[str, Any]) -> str:
    """The status the report shows: the record's in upper case, ``WARNING`` for a written series whose
    removed-structure check fired (see the module docstring)."""
    status = str(record.get("status") or "unknown").upper()
    if status == "OK" and _get(record, "removed_structure", "fired") is True:
        return "WARNING"
    return status


def _draw_title(doc: _Layout, record: Mapping[str, Any]) -> None:
    software = record.get("software") or {}
    doc.text(_ML, "NS-N2N denoising - QA report", size=19, weight="bold")
    doc.y += 26
    status = display_status(record)
    sub = "   |   ".join(
        [
            f"{_fmt_value(software.get('name', '?'))} {_fmt_value(software.get('version', '?'))}",
            f"run {_fmt_value(record.get('created', '?'))}",
            f"schema {_fmt_value(record.get('schema_version'))}",
        ]
    )
    doc.text(_ML, sub, size=8.5, color=_GREY)
    colour = {"OK": _GREEN, "SKIPPED": _AMBER, "WARNING": _AMBER}.get(status, _RED)
    doc.text(_PAGE_W - _MR, f"Status: {status}", size=10, weight="bold", color=colour, ha="right", y=doc.y - 26)
    doc.y += 18
    # The notice box.
    detail = _wrap(NOTICE_DETAIL, _CONTENT_W - 20, 8)
    box_h = 26 + 10.5 * len(detail)
    doc.rect(_ML, doc.y, _CONTENT_W, box_h, facecolor="#fdecea", edgecolor=_RED, lw=1.4)
    doc.text(_ML + 10, NOTICE, size=13, weight="bold", color=_RED, y=doc.y + 7)
    for i, line in enumerate(detail):
        doc.text(_ML + 10, line, size=8, color="#5c1a14", y=doc.y + 25 + 10.5 * i)
    doc.y += box_h + 4
    if record.get("error"):
        doc.y += 4
        doc.paragraph(f"Error: {record['error']}", color=_RED, weight="bold")


def _draw_series(doc: _Layout, record: Mapping[str, Any]) -> None:
    source = record.get("source") or {}
    derived = record.get("derived")
    col_w = (_CONTENT_W - 16) / 2
    doc.section("Series")
    doc.text(_ML, "Source (input)", weight="bold")
    doc.text(_ML + col_w + 16, "Derived (denoised output)", weight="bold")
    doc.y += _LINE + 2
    left = [
        ("Description", source.get("series_description") or "(none)"),
        ("Modality", source.get("modality")),
        ("Instances", source.get("n_instances")),
        ("Series UID", source.get("series_instance_uid")),
        ("Study UID", source.get("study_instance_uid")),
        ("SOP class", source.get("sop_class_uid")),
    ]
    if source.get("stack"):
        left.insert(1, ("Stack", source["stack"]))
    if isinstance(derived, Mapping):
        right = [
            ("Description", derived.get("series_description")),
            ("Series number", derived.get("series_number")),
            ("Series UID", derived.get("series_instance_uid")),
            ("Output folder", derived.get("output_folder")),
        ]
    else:
        right = [("Description", "(no derived series written)")]
    y_end = max(
        doc.kv_block(left, x=_ML, width=col_w, key_w=70), doc.kv_block(right, x=_ML + col_w + 16, width=col_w, key_w=78)
    )
    doc.y = y_end


def _draw_volume_and_noise(doc: _Layout, record: Mapping[str, Any]) -> None:
    volume = record.get("volume") or {}
    col_w = (_CONTENT_W - 16) / 2
    shape = volume.get("shape")
    spacing = volume.get("spacing_mm")
    shape_s = " x ".join(str(v) for v in shape) + "  (D x H x W)" if shape else "n/a"
    spacing_s = " x ".join(f"{v:g}" for v in spacing) + " mm  (z, y, x)" if spacing else "n/a"
    gap = volume.get("slice_gap_max_mm")
    doc.section("Volume and noise", min_body=5 * _LINE)
    y_vol = doc.kv_block(
        [
            ("Shape", shape_s),
            ("Spacing", spacing_s),
            ("Max slice gap", f"{gap:g} mm" if isinstance(gap, int | float) else "n/a"),
            ("Stored type", volume.get("dtype") or "n/a"),
            ("Device", record.get("device")),
        ],
        x=_ML,
        width=col_w,
        key_w=70,
    )

    noise = record.get("noise")
    x = _ML + col_w + 16
    if isinstance(noise, Mapping):
        unit = str(noise.get("unit") or "")
        before, after = noise.get("before"), noise.get("after")
        doc.rect(x, doc.y - 2, col_w, 64, facecolor=_LIGHT, edgecolor="none")
        doc.text(x + 8, "Noise before", color=_GREY, y=doc.y + 3)
        doc.text(x + 8 + col_w / 3, "Noise after", color=_GREY, y=doc.y + 3)
        doc.text(x + 8 + 2 * col_w / 3, "Reduction", color=_GREY, y=doc.y + 3)
        doc.text(x + 8, format_noise(before, unit), size=13, weight="bold", y=doc.y + 16)
        doc.text(x + 8 + col_w / 3, format_noise(after, unit), size=13, weight="bold", y=doc.y + 16)
        doc.text(
            x + 8 + 2 * col_w / 3,
            format_reduction(before, after),
            size=13,
            weight="bold",
            color=_GREEN,
            y=doc.y + 16,
        )
        est = _wrap("Estimator: " + str(noise.get("estimator") or "n/a"), col_w - 16, 7.5)[:2]
        rician = noise.get("rician_correction_sigma")
        if isinstance(rician, int | float):
            est.append(f"Rician noise floor removed (sigma {format_noise(rician, unit)})")
        for i, line in enumerate(est):
            doc.text(x + 8, line, size=7.5, color=_GREY, y=doc.y + 38 + 10 * i)
        y_noise = doc.y + 64
    else:
        doc.text(x, "Noise: not measured", color=_GREY)
        y_noise = doc.y + _LINE
    doc.y = max(y_vol, y_noise)


def _draw_removed_structure(doc: _Layout, record: Mapping[str, Any]) -> None:
    check = record.get("removed_structure")
    if not isinstance(check, Mapping):
        return  # not measured (series not denoised, or a record older than schema 1.2)
    doc.section("Removed structure (difference image)", min_body=4 * _LINE)
    index, threshold = check.get("index"), check.get("threshold")
    fired = check.get("fired") is True
    col_w = (_CONTENT_W - 16) / 2
    rows = [
        ("Index", f"{index:.2f}" if isinstance(index, int | float) else "n/a (no edges to measure)"),
        ("Threshold", f"{threshold:g}" if isinstance(threshold, int | float) else "n/a"),
        ("Edge pixels", check.get("edge_pixels")),
        ("Slices evaluated", check.get("slices")),
    ]
    y_rows = doc.kv_block(rows, x=_ML, width=col_w, key_w=78)
    x = _ML + col_w + 16
    verdict = "FIRED: structure removed" if fired else "quiet: noise removed"
    doc.text(x, verdict, size=11, weight="bold", color=_AMBER if fired else _GREEN)
    y_text = doc.y + 16
    explanation = (
        "The difference image holds anatomical edges: the denoiser removed structure as well as noise. "
        "Review the difference column of the montage before using this series."
        if fired
        else "The difference image holds no more energy on edges than beside them, as removed noise does."
    )
    explanation += (
        " Index: difference energy on the output's edges over the energy right beside them, minus 1 "
        "(0: noise only); the check fires above the threshold."
    )
    for line in _wrap(explanation, col_w, 7.5):
        doc.text(x, line, size=7.5, color=_GREY, y=y_text)
        y_text += 10
    doc.y = max(y_rows, y_text)


def _draw_method(doc: _Layout, record: Mapping[str, Any]) -> None:
    method = method_of(record)
    doc.section("Method", min_body=4 * _LINE)
    doc.text(_ML, method.get("name", ""), weight="bold")
    doc.y += _LINE
    doc.paragraph(method.get("summary", ""))
    doc.y += 2
    rows = [
        ("Network", method.get("network")),
        ("Losses", "; ".join(method.get("losses") or []) or None),
        ("After it", "; ".join(method.get("post_processing") or []) or None),
    ]
    doc.y = doc.kv_block(rows, x=_ML, width=_CONTENT_W, key_w=70)


def _draw_training(doc: _Layout, record: Mapping[str, Any]) -> None:
    training = record.get("training")
    model = record.get("model") or {}
    timings = record.get("timings_s") or {}
    col_w = (_CONTENT_W - 16) / 2
    doc.section("Training and timings", min_body=7 * _LINE)
    if isinstance(training, Mapping):
        final = training.get("final_loss")
        rows: list[tuple[str, Any]] = [
            ("Steps", training.get("steps")),
            ("Stopped by", str(training.get("stopped_by") or "-").replace("_", " ")),
            ("Final loss", f"{final:.4g}" if isinstance(final, int | float) else None),
        ]
    else:
        rows = [("Training", "none (no training on this series)")]
    rows += [
        ("Model loaded", model.get("loaded_from") or "none (trained from scratch)"),
        ("Fine-tune steps", model.get("finetune_steps")),
        ("Model saved", model.get("saved_to") or "not saved"),
    ]
    y_left = doc.kv_block(rows, x=_ML, width=col_w, key_w=78)

    x = _ML + col_w + 16
    total = timings.get("total")
    y = doc.y
    doc.text(x, "Stage", color=_GREY, y=y)
    doc.text(x + col_w * 0.62, "Time", color=_GREY, y=y, ha="right")
    y += _LINE + 1
    bar_x, bar_w = x + col_w * 0.66, col_w * 0.34
    for stage, value in timings.items():
        is_total = stage == "total"
        if is_total:
            doc.fig.add_artist(
                Line2D(
                    [doc.fx(x), doc.fx(x + col_w)],
                    [doc.fy(y - 2), doc.fy(y - 2)],
                    transform=doc.fig.transFigure,
                    color=_RULE,
                    lw=0.6,
                )
            )
        weight = "bold" if is_total else "normal"
        doc.text(x, stage.replace("_", " "), y=y, weight=weight)
        doc.text(x + col_w * 0.62, _fmt_seconds(value), y=y, ha="right", weight=weight)
        if not is_total and isinstance(value, int | float) and isinstance(total, int | float) and total > 0:
            frac = min(1.0, max(0.0, value / total))
            doc.rect(bar_x, y + 1.5, bar_w, 7, facecolor=_LIGHT, edgecolor="none")
            doc.rect(bar_x, y + 1.5, bar_w * frac, 7, facecolor="#7a9cc6", edgecolor="none")
        y += _LINE
    doc.y = max(y_left, y)


def _draw_parameters(doc: _Layout, record: Mapping[str, Any]) -> None:
    params = list((record.get("parameters") or {}).items())
    doc.section("Parameters", min_body=2 * _LINE)
    if not params:
        doc.text(_ML, "(none recorded)", color=_GREY)
        doc.y += _LINE
        return
    half = (len(params) + 1) // 2
    col_w = (_CONTENT_W - 16) / 2
    for i in range(half):
        doc.ensure(_LINE)
        if i % 2 == 0:
            doc.rect(_ML - 3, doc.y - 2, _CONTENT_W + 6, _LINE, facecolor=_LIGHT, edgecolor="none")
        for j, idx in enumerate((i, i + half)):
            if idx < len(params):
                key, value = params[idx]
                x = _ML + j * (col_w + 16)
                doc.text(x, _fmt_value(key, 34), color=_GREY, family="DejaVu Sans Mono", size=7.8)
                doc.text(x + col_w * 0.55, _fit(_fmt_value(value, 400), col_w * 0.45 - 4))
        doc.y += _LINE


def _draw_warnings(doc: _Layout, record: Mapping[str, Any], max_warnings: int = 30) -> None:
    warnings = [str(w) for w in record.get("warnings") or []]
    doc.section(f"Warnings ({len(warnings)})", min_body=_LINE)
    if not warnings:
        doc.text(_ML, "None.", color=_GREY)
        doc.y += _LINE
        return
    for warning in warnings[:max_warnings]:
        lines = _wrap(warning, _CONTENT_W - 12)
        for k, line in enumerate(lines):
            doc.ensure(_LINE)
            if k == 0:
                doc.rect(_ML + 1, doc.y + 2.5, 3.5, 3.5, facecolor=_AMBER, edgecolor="none")
            doc.text(_ML + 10, line)
            doc.y += _LINE
    if len(warnings) > max_warnings:
        doc.text(_ML + 10, f"... and {len(warnings) - max_warnings} more (see run.json)", color=_GREY)
        doc.y += _LINE


def _draw_montage(doc: _Layout, montage_png: bytes | None, record: Mapping[str, Any]) -> None:
    if not montage_png:
        doc.section("Representative slices", min_body=_LINE)
        doc.text(_ML, "No montage available for this series.", color=_GREY)
        doc.y += _LINE
        return
    doc.new_page()
    doc.section("Representative slices", min_body=0)
    image = np.asarray(Image.open(io.BytesIO(montage_png)).convert("RGB"))
    h, w = image.shape[:2]
    has_loss = bool(_get(record, "training", "loss_history"))
    max_h = _PAGE_H - _MB - doc.y - (215 if has_loss else 40)
    width = min(_CONTENT_W, max_h * w / h)
    height = width * h / w
    x = _ML + (_CONTENT_W - width) / 2
    ax = doc.fig.add_axes((doc.fx(x), doc.fy(doc.y + height), width / _PAGE_W, height / _PAGE_H))
    ax.imshow(image, interpolation="none")
    ax.set_axis_off()
    doc.y += height + 6
    doc.paragraph(
        "Rows: representative slices (by default at 25 / 50 / 75 % of the volume). Before and after share "
        "the same display window; "
        "the difference (before - after) uses a symmetric window centred on mid grey. Structure visible "
        "in the difference image indicates that anatomy, not only noise, was removed.",
        size=7.5,
        color=_GREY,
    )


def _draw_loss(doc: _Layout, record: Mapping[str, Any]) -> None:
    history = _get(record, "training", "loss_history") or []
    points = [(float(s), float(v)) for s, v in history if isinstance(v, int | float) and math.isfinite(v)]
    if not points:
        return
    doc.section("Training loss", min_body=150)
    steps, losses = zip(*points, strict=True)
    height = 140.0
    ax = doc.fig.add_axes((doc.fx(_ML + 40), doc.fy(doc.y + height), (_CONTENT_W - 50) / _PAGE_W, height / _PAGE_H))
    ax.plot(steps, losses, color="#3c6eb4", lw=1.2)
    positive = [v for v in losses if v > 0]
    if positive and len(positive) == len(losses) and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step", fontsize=7.5)
    ax.set_ylabel("loss", fontsize=7.5)
    ax.tick_params(labelsize=7)
    ax.grid(True, color="#e0e0e0", lw=0.5)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    doc.y += height + 24


def render_report_pdf(record: Mapping[str, Any], montage_png: bytes | None) -> bytes:
    """Render the QA report of one series as A4 PDF bytes.

    Args:
        record: the run record (see ``run_record.schema.json``); it is not re-validated here, missing
            optional parts are shown as "n/a". It contains no patient identifiers, hence neither does the
            PDF (see module docstring).
        montage_png: PNG bytes from :func:`qa_report.montage.render_montage`, or None (e.g. failed run).

    Returns:
        The PDF (normally 2 pages: summary, then montage + loss curve). Noise figures are printed with
        :func:`format_noise` / :func:`format_reduction`. Output is deterministic for the same inputs.
    """
    software = record.get("software") or {}
    source = record.get("source") or {}
    description = latin1_safe(source.get("series_description") or "")
    header = f"QA report - {source.get('modality') or '?'} series '{description}'"
    if source.get("stack"):
        header += f" [{latin1_safe(source['stack'])}]"
    rc = {"pdf.fonttype": 42, "font.family": "DejaVu Sans", "pdf.compression": 6, "svg.fonttype": "none"}
    with matplotlib.rc_context(rc):
        doc = _Layout(header)
        _draw_title(doc, record)
        _draw_series(doc, record)
        _draw_volume_and_noise(doc, record)
        _draw_removed_structure(doc, record)
        _draw_method(doc, record)
        _draw_training(doc, record)
        _draw_parameters(doc, record)
        _draw_warnings(doc, record)
        _draw_montage(doc, montage_png, record)
        _draw_loss(doc, record)
        doc.footers(f"{software.get('name', '?')} {software.get('version', '')} - {NOTICE}")
        buf = io.BytesIO()
        metadata = {
            "Title": "NS-N2N denoising QA report",
            "Subject": latin1_safe(f"{source.get('modality') or ''} series {description}").strip(),
            "Creator": latin1_safe(f"{software.get('name', '?')} {software.get('version', '')}"),
            "Keywords": "research use only; not for diagnostic use",
            "CreationDate": _creation_date(record.get("created")),
        }
        with PdfPages(buf, metadata=metadata) as pdf:
            for fig in doc.pages:
                pdf.savefig(fig)
    return buf.getvalue()
