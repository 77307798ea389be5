"""What every results file of the benchmark starts with, and how it is written.

Rule: every file in ``bench/results/`` is written by one command in one run; the command writes its
markdown (``--out FILE.md``) and its full progress log beside it (``FILE.log``), and the header names
the machine, the software, the git commit and the exact command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """Short commit of the tree, marked when bench/, nsn2n/ or qa_report/ have uncommitted changes."""
    if os.environ.get("BENCH_GIT_COMMIT"):  # a copy of the tree without .git (e.g. on a lent GPU machine)
        return os.environ["BENCH_GIT_COMMIT"] + " (from BENCH_GIT_COMMIT)"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "bench",
                "nsn2n",
                "qa_report",
                ":(exclude)bench/results",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # bench/results/ is excluded: a run writing its own table there is not a change to the code.
        return sha + (" (+ uncommitted changes to tracked files in bench/, nsn2n/ or qa_report/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def version(module: str) -> str:
    """``module.__version__`` or ``?``."""
    try:
        return str(__import__(module).__version__)
    except Exception:  # a missing or odd package must not stop the benchmark
        return "?"


def machine_header(module: str, argv: list[str], device: str = "cpu") -> list[str]:
    """Markdown bullet lines: machine, software, date, commit and the command line."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- machine: {cpu_model()}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), GPU: {gpu}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scikit-image {version('skimage')}, scipy {version('scipy')}; device for learned methods: {device}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, git commit: {git_commit()}",
        f"- command: `{('python -m ' + module + ' ' + shlex.join(argv)).strip()}`",
    ]


class _Tee:
    """A text stream that writes to two streams."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def write(self, text: str) -> int:
        self.first.write(text)
        self.second.write(text)
        return len(text)

    def flush(self) -> None:
        self.first.flush()
        self.second.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.first.fileno()


@contextlib.contextmanager
def log_beside(out: Path | None) -> Iterator[None]:
    """Copy everything written to stderr during the block into ``out`` with the suffix ``.log``."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".log").open("w", encoding="utf-8") as fh:
        saved = sys.stderr
        sys.stderr = _Tee(saved, fh)
        try:
            yield
        finally:
            sys.stderr = saved


def write_lines(path: Path, lines: list[str]) -> None:
    """Write markdown lines (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def fmt_spread(values: list[float], digits: int) -> str:
    """``mean ± sample std`` of several values, the value itself for one, ``–`` for none/NaN."""
    vals = np.asarray(values, dtype=float)
    vals = vals[~np.isnan(vals)] if vals.size else vals
    if vals.size == 0:
        return "–"
    if vals.size == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"
