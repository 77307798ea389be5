"""Merge the markdown outputs of several ``bench.quality`` runs into one table per volume.

``bench/run_gpu.sh`` runs the learned methods on the GPU and the CPU baselines beside them in other
processes, each writing its own markdown; this puts the rows of one volume back into one table:

    python -m bench.merge_tables main.md cpu.md bm4d.md variants.md > bench/results/quality-gpu-h200.md

Rows keep the numbers exactly as printed; they are ordered as in ``bench.quality.METHODS`` (rows with a
step count after their method). Each run's header (machine, software, command) is kept, so every row
can be traced to the command that produced it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.quality import METHODS, footer


@dataclass
class Section:
    """One ``### volume: title`` section: its note lines and its table rows by label."""

    title: str
    notes: list[str] = field(default_factory=list)
    table_head: list[str] = field(default_factory=list)
    rows: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """One ``bench.quality`` markdown output."""

    path: Path
    header: list[str]
    sections: dict[str, Section]


def parse(path: Path) -> Run:
    """Read one output: header bullets before the first section, then the sections."""
    header: list[str] = []
    sections: dict[str, Section] = {}
    current: Section | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            name = line[4:].split(":", 1)[0]
            current = sections.setdefault(name, Section(title=line))
        elif current is None:
            if line.startswith("- "):
                header.append(line)
        elif line.startswith("| method") or line.startswith("|---"):
            current.table_head.append(line)
        elif line.startswith("| "):
            current.rows[line.split("|")[1].strip()] = line
        elif line.startswith("- ") and not current.rows:
            current.notes.append(line)
        elif line.startswith(("Metrics:", "Methods:", "Total wall time")):
            current = None  # the footer: nothing after it belongs to a section
    return Run(path, header, sections)


def _order(label: str) -> tuple[int, str]:
    for rank, text in enumerate(METHODS.values()):
        if label == text or label.startswith(text + ","):
            return rank, label
    return len(METHODS), label


def merge(runs: list[Run]) -> list[str]:
    """Markdown lines: every run's header, then one merged table per volume (first-seen order)."""
    lines = ["## NS-N2N quality benchmark (merged runs)", ""]
    for run in runs:
        lines += [f"Run `{run.path.name}`:", "", *run.header, ""]
    names: list[str] = []
    for run in runs:
        names += [n for n in run.sections if n not in names]
    for name in names:
        parts = [(run, run.sections[name]) for run in runs if name in run.sections]
        first = parts[0][1]
        rows: dict[str, tuple[str, str]] = {}
        for run, section in parts:
            for label, row in section.rows.items():
                rows.setdefault(label, (row, run.path.name))
        lines += [
            first.title,
            "",
            *first.notes,
            "",
            *(first.table_head[:1] or ["| method |"]),
            *(first.table_head[1:2] or ["|---|"]),
        ]
        ordered = sorted(rows.items(), key=lambda kv: _order(kv[0]))
        lines += [row for _, (row, _) in ordered]
        sources = ", ".join(f"{label}: `{src}`" for label, (_, src) in ordered)
        lines += ["", f"Rows from: {sources}.", ""]
    return [*lines, *footer()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="bench.quality markdown outputs, main run first")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        p.error(f"not a file: {', '.join(missing)}")
    print("\n".join(merge([parse(f) for f in args.files])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
