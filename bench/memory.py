"""Peak memory and wall time per stage of one application run on a large synthetic CT series.

Builds a 600-slice 512x512 int16 CT series (~300 MB of pixels, written in chunks so this script stays
small), runs ``python app -i IN -o OUT -w WORK`` on it as a subprocess with a short training budget,
and reports:

* the child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, exact, kernel-tracked);
* an RSS timeline polled from ``/proc/<pid>/status`` every ``--poll-s`` seconds, so that the peak can be
  attributed to a stage;
* the wall time of each stage, from the moment each stage's log line arrives on the child's output.

Usage::

    python -m bench.memory                       # 600 x 512 x 512, NSN2N_MAX_STEPS=20, CPU
    python -m bench.memory --slices 60 --out bench/results/memory-small.md
    python -m bench.memory --env NSN2N_DEVICE=cuda

Prints a markdown report (and writes it to ``--out`` when given), with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.dicom_factory import add_correlated_noise, make_ct_datasets, make_phantom, write_datasets  # noqa: E402

#: (stage name, regular expression of the log line that ENDS the stage), in pipeline order.
STAGES: tuple[tuple[str, str | None], ...] = (
    ("start-up (imports, Holoscan graph)", r"\(root\) - Parsed args|nsn2n-denoise: input"),
    ("read DICOM files", r"loaded \d+ instance\(s\)"),
    ("select + series to volume", r"voxels, spacing"),
    ("weight maps", r"weight maps: "),
    ("training", r"train: done"),
    ("inference", r"noise after: |nsn2n\.api\) - noise: "),
    ("save model", r"model saved to"),
    ("write derived series", r"derived series .* written"),
    ("QA report (montage + PDF)", r"QA report written|run record "),
    ("run record + shut-down", None),  # ends when the process exits
)

DEFAULT_ENV = {
    "NSN2N_MAX_STEPS": "20",
    "NSN2N_DEVICE": "cpu",
    "NSN2N_LOG_EVERY_S": "10",
}


@dataclass
class Sample:
    t: float
    rss_kib: int
    load1: float = float("nan")
    gpu_mib: float | None = None


@dataclass
class RunTrace:
    """What one application run showed: its output lines with their arrival times and the process's
    CPU seconds (user + system, all threads) at that moment, polled samples, exit code and peaks."""

    lines: list[tuple[float, str]] = field(default_factory=list)
    line_cpu_s: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    returncode: int | None = None
    peak_rss_kib: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def peak_gpu_mib(self) -> float | None:
        values = [s.gpu_mib for s in self.samples if s.gpu_mib is not None]
        return max(values) if values else None

    def load_range(self) -> tuple[float, float, float]:
        """(min, mean, max) of the 1-minute load average polled during the run."""
        values = [s.load1 for s in self.samples if s.load1 == s.load1]
        if not values:
            return (float("nan"),) * 3
        return min(values), sum(values) / len(values), max(values)


def build_series(
    folder: Path,
    slices: int,
    size: int,
    chunk: int = 50,
    seed: int = 0,
    *,
    study_uid: str | None = None,
    series_number: int = 3,
) -> int:
    """Write a ``slices`` x ``size`` x ``size`` int16 CT series into ``folder``; returns its bytes on disk.

    Series of the same ``study_uid`` form one study; give each its own ``series_number``.
    """
    phantom = make_phantom((slices, size, size), seed=seed)
    series_uid, for_uid = (str(generate_uid()) for _ in range(2))
    study_uid = study_uid or str(generate_uid())
    spacing = (1.0, 0.7, 0.7)
    for start in range(0, slices, chunk):
        part = add_correlated_noise(phantom[start : start + chunk], sigma_hu=25.0, seed=seed + start)
        n = part.shape[0]

        def renumber(k: int, ds, start: int = start) -> None:
            ds.InstanceNumber = start + k + 1

        datasets = make_ct_datasets(
            part,
            spacing,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=for_uid,
            slice_positions=[(start + k) * spacing[0] for k in range(n)],
            series_number=series_number,
            mutate=renumber,
        )
        write_datasets(datasets, folder, filename_pattern=f"CT{series_number:03d}_{start:05d}_{{index:03d}}.dcm")
        del part, datasets
    return sum(p.stat().st_size for p in folder.iterdir())


def _rss_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc/<pid>/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _gpu_mib(pid: int) -> float | None:
    """GPU memory (MiB) that ``nvidia-smi`` reports for ``pid`` (CUDA context included), or ``None``."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(b) for a, b in (line.split(",")[:2] for line in out.splitlines() if "," in line) if int(a) == pid]
    return sum(used) if used else 0.0


def run_app(
    input_dir: Path,
    output_dir: Path,
    workdir: Path,
    env: dict[str, str],
    poll_s: float,
    log_path: Path | None = None,
    *,
    repo: Path = REPO,
    gpu_poll_s: float | None = None,
    log_mode: str = "w",
) -> RunTrace:
    """Run the application of checkout ``repo``; collect its output lines (with arrival times and the
    process's CPU seconds), an RSS and load-average timeline and, with ``gpu_poll_s``, the GPU memory of
    the process. The lines also go to ``log_path`` as they arrive (follow a long run with ``tail -f``)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NSN2N_", "HOLOSCAN_"))}
    full_env.update({"PYTHONUNBUFFERED": "1", **env})
    cmd = [sys.executable, str(repo / "app"), "-i", str(input_dir), "-o", str(output_dir), "-w", str(workdir)]
    trace = RunTrace()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=repo, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )

    def reader() -> None:
        assert proc.stdout is not None
        with open(log_path or os.devnull, log_mode, encoding="utf-8") as sink:
            for line in proc.stdout:
                cpu = _cpu_s(proc.pid)
                trace.line_cpu_s.append(cpu if cpu is not None else (trace.line_cpu_s or [0.0])[-1])
                trace.lines.append((time.monotonic() - t0, line.rstrip("\n")))
                sink.write(f"{trace.lines[-1][0]:8.1f}s {line}")
                sink.flush()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    next_gpu = 0.0
    while proc.poll() is None:
        now = time.monotonic() - t0
        gpu = None
        if gpu_poll_s is not None and now >= next_gpu:
            gpu, next_gpu = _gpu_mib(proc.pid), now + gpu_poll_s
        rss = _rss_kib(proc.pid)
        if rss is not None:
            trace.samples.append(Sample(now, rss, _load1(), gpu))
        time.sleep(poll_s)
    thread.join(timeout=10)
    trace.wall_s = time.monotonic() - t0
    trace.returncode = proc.returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    trace.cpu_s = after.ru_utime + after.ru_stime - cpu_before
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all waited-for children: exact when it grew.
    trace.peak_rss_kib = (
        after.ru_maxrss if after.ru_maxrss > before else max((s.rss_kib for s in trace.samples), default=0)
    )
    return trace


def stage_table(trace: RunTrace) -> list[tuple[str, float, float, int]]:
    """(stage, start s, end s, peak polled RSS KiB) per stage found in the log."""
    rows: list[tuple[str, float, float, int]] = []
    start, cursor = 0.0, 0
    for name, pattern in STAGES:
        end = trace.wall_s if pattern is None else None
        for i in range(cursor, len(trace.lines) if pattern else 0):
            if re.search(pattern, trace.lines[i][1]):
                end, cursor = trace.lines[i][0], i + 1
                break
        if end is None:  # stage absent from this run (e.g. no model saved): the next one absorbs it
            continue
        peak = max((s.rss_kib for s in trace.samples if start <= s.t <= end), default=0)
        rows.append((name, start, end, peak))
        start = end
    return rows


def machine() -> str:
    model, cores = platform.processor() or "?", os.cpu_count() or 0
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    mem_kib = 0
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        mem_kib = int(m.group(1)) if m else 0
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return (
        f"{model}; {cores} logical CPU(s) ({affinity} usable by this process); "
        f"{mem_kib / 2**20:.1f} GiB RAM; Linux {platform.release()}; Python {platform.python_version()}"
    )


def code_version() -> str:
    """``git describe`` of the repository (with ``-dirty`` for local changes), or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown"


def gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"


def report(args: argparse.Namespace, env: dict[str, str], series_bytes: int, trace: RunTrace) -> str:
    volume_bytes = args.slices * args.size * args.size * 2
    lines = [
        f"# Memory and time per stage: {args.slices} x {args.size} x {args.size} int16 CT",
        "",
        f"- Machine: {machine()}",
        f"- Code: git {code_version()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; command: `python -m bench.memory "
        f"{' '.join(args.argv)}`".rstrip()
        + "",
        f"- Input: {args.slices} files, {series_bytes / 2**20:.0f} MiB on disk "
        f"(stored int16 volume {volume_bytes / 2**20:.0f} MiB; as float32 {2 * volume_bytes / 2**20:.0f} MiB)",
        f"- Settings: {', '.join(f'{k}={v}' for k, v in sorted(env.items()))} (others: app.yaml defaults)",
        f"- Exit code: {trace.returncode}; wall time {trace.wall_s:.1f} s",
        f"- **Peak RSS: {gib(trace.peak_rss_kib)}** (getrusage RUSAGE_CHILDREN ru_maxrss); "
        f"peak of /proc polling every {args.poll_s} s: "
        f"{gib(max((s.rss_kib for s in trace.samples), default=0))}",
        "",
        "| stage | start (s) | duration (s) | peak RSS in stage (polled) |",
        "|---|---:|---:|---:|",
    ]
    for name, start, end, peak in stage_table(trace):
        lines.append(f"| {name} | {start:.1f} | {end - start:.1f} | {gib(peak) if peak else 'n/a'} |")
    lines += [
        "",
        "Stage boundaries are the arrival times of the log lines that end each stage (see `STAGES` in "
        "`bench/memory.py`); the model-saving stage is empty when the model is not saved.",
    ]
    if trace.returncode != 0:
        lines += ["", "Last log lines:", "", "```", *[t for _, t in trace.lines[-15:]], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--poll-s", type=float, default=0.2)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NSN2N_KEY=VALUE",
        help="extra settings for the app (repeatable); default " + " ".join(f"{k}={v}" for k, v in DEFAULT_ENV.items()),
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where to build the series (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--log", type=Path, default=None, help="write the app's log here as it runs")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(DEFAULT_ENV)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("NSN2N_"):
            parser.error(f"--env expects NSN2N_KEY=VALUE, got {item!r}")
        env[key] = value

    tmp = Path(tempfile.mkdtemp(prefix="nsn2n-memory-", dir=args.tmp))
    try:
        t = time.monotonic()
        series_bytes = build_series(tmp / "in", args.slices, args.size)
        print(
            f"built {args.slices} slices ({series_bytes / 2**20:.0f} MiB) in {time.monotonic() - t:.0f} s",
            file=sys.stderr,
        )
        trace = run_app(tmp / "in", tmp / "out", tmp / "work", env, args.poll_s, args.log)
        out_files = sum(1 for p in (tmp / "out").rglob("*.dcm")) if (tmp / "out").exists() else 0
        text = report(args, env, series_bytes, trace) + f"\nOutput: {out_files} DICOM file(s) written.\n"
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0 if trace.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
