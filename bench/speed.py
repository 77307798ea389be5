"""Speed and memory of the application per stage, DICOM in -> derived series + QA report out.

Builds synthetic CT series (``bench/memory.py``), runs the real application on each as a subprocess
(``python app -i IN -o OUT -w WORK``) and prints, per series size, the wall and CPU seconds of every
stage (start-up with imports and the Holoscan graph, DICOM read, series to volume, weight maps, noise
estimate, training, inference, residual clip, DICOM write, QA report), training steps/s, inference
slices/s, peak RSS and, on CUDA, the peak GPU memory of the process. Stage boundaries are the arrival
times of the log lines that end them (``STAGES``); CPU seconds are those of the whole process (all
threads) at those moments.

Timings on a machine shared with other jobs are noisy: the load average is recorded for every run, and
``--baseline REF`` runs an older commit of the application on the same inputs back to back with the
current checkout, so that each stage is compared as a ratio measured under the same conditions.

Also measured:

* a study of two series (the larger alone first, then both): the pipeline streams series one at a time,
  so the study's peak RSS should stay close to that of its larger series;
* what the loader's datasets cost: every DICOM file of the input is read, pixel data included, before
  the first series is processed, and stays in memory for the whole run;
* the weight maps in-process on 16 slices of 512 x 512 (current and baseline implementation, maps
  compared), and the filter candidates per slice on one thread.

Usage::

    python -m bench.speed                        # CPU, minutes: 48x256x256 (4 steps), a 2-series study, kernels
    python -m bench.speed --baseline b5ace27     # and the same runs through commit b5ace27 first
    python -m bench.speed --full                 # 48x256x256, 300x512x512, 600x512x512 (20 steps), study 300+200
    python -m bench.speed --full --device cuda --steps 0   # on a GPU, the app's default step count
    python -m bench.speed --out bench/results/speed-cpu-2core.md --log bench/results/speed-cpu-2core.log

Run long CPU jobs with ``nice -n 10`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.memory import RunTrace, build_series, code_version, machine, run_app  # noqa: E402

#: (stage name, regular expression of the log line that ENDS the stage), in pipeline order. A stage
#: whose line is missing (no model saved, an older version's log) is merged into the next one.
STAGES: tuple[tuple[str, str | None], ...] = (
    ("start-up (imports, Holoscan graph)", r"Running Graph"),
    ("DICOM read (all files)", r"loaded \d+ instance\(s\)"),
    ("select + series to volume", r"voxels, spacing"),
    ("validate + normalise", r"NS-N2N: volume"),
    ("weight maps", r"weight maps: "),
    ("noise estimate (before)", r"noise before: "),
    ("training", r"train: done"),
    ("inference (network)", r"inference: step (\d+)/\1 \("),
    ("residual clip + noise after", r"noise after: |nsn2n\.api\) - noise: "),
    ("save model", r"model saved to"),
    ("DICOM write (derived series)", r"derived series .* written"),
    ("QA report (montage + PDF)", r"QA report written"),
    ("run record + shut-down", None),  # ends when the process exits
)
TRAINING, INFERENCE = "training", "inference (network)"

SMALL, MEDIUM, LARGE = (48, 256), (300, 512), (600, 512)


@dataclass(frozen=True)
class Case:
    """Series of a run: ``(slices, size)`` each, all in one study."""

    series: tuple[tuple[int, int], ...]

    @property
    def label(self) -> str:
        return " + ".join(f"{d}x{s}x{s}" for d, s in self.series)


@dataclass
class StageTime:
    name: str
    wall_s: float
    cpu_s: float
    peak_rss_kib: int


@dataclass
class Run:
    """One application run of one version on one case."""

    version: str
    case: Case
    trace: RunTrace
    stages: list[StageTime] = field(default_factory=list)

    def stage(self, name: str) -> StageTime | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def steps(self) -> int | None:
        for _, text in self.trace.lines:
            m = re.search(r"train: done, (\d+) steps", text)
            if m:
                return int(m.group(1))
        return None


def stage_times(trace: RunTrace) -> list[StageTime]:
    """Wall and CPU seconds and polled peak RSS per stage of the first series found in the log."""
    rows: list[StageTime] = []
    start_t, start_cpu, cursor = 0.0, 0.0, 0
    for name, pattern in STAGES:
        end_t = end_cpu = None
        if pattern is None:
            end_t, end_cpu = trace.wall_s, trace.cpu_s
        else:
            for i in range(cursor, len(trace.lines)):
                if re.search(pattern, trace.lines[i][1]):
                    end_t, end_cpu, cursor = trace.lines[i][0], trace.line_cpu_s[i], i + 1
                    break
        if end_t is None or end_cpu is None:
            continue
        peak = max((s.rss_kib for s in trace.samples if start_t <= s.t <= end_t), default=0)
        rows.append(StageTime(name, end_t - start_t, max(end_cpu - start_cpu, 0.0), peak))
        start_t, start_cpu = end_t, end_cpu
    return rows


def series_events(trace: RunTrace) -> list[tuple[str, float]]:
    """(event, seconds) for each series of a study run: conversion, training start and end, written."""
    patterns = (
        ("to volume", r"voxels, spacing"),
        ("training starts", r"noise before: "),
        ("training done", r"train: done"),
        ("derived series written", r"derived series .* written"),
    )
    return [(label, t) for t, text in trace.lines for label, p in patterns if re.search(p, text)]


# --------------------------------------------------------------------------------------------------
# inputs and versions


def build_inputs(case: Case, folder: Path, seed: int = 0) -> int:
    """Write the case's series (one study) into ``folder``; returns bytes on disk."""
    from pydicom.uid import generate_uid

    study_uid = str(generate_uid())
    total = 0
    for k, (slices, size) in enumerate(case.series):
        part = folder / f"series{k + 1}"
        total += build_series(part, slices, size, seed=seed + 1000 * k, study_uid=study_uid, series_number=3 + k)
    return total


def export_commit(ref: str, dest: Path) -> str:
    """Write the tree of commit ``ref`` into ``dest`` (``git archive``); returns its short hash."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


# --------------------------------------------------------------------------------------------------
# in-process measurements (run in a subprocess so that each version imports its own code)

WEIGHT_MAP_WORKER = r"""
import json, math, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from nsn2n.config import DenoiseConfig
from nsn2n.weight_map import compute_weight_maps
cfg = DenoiseConfig()
threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
torch.set_num_threads(threads)
depth, size, repeats = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
body = ((yy / 0.42) ** 2 + (xx / 0.36) ** 2 < 1).astype(np.float32)
organ = (((yy - 0.05) / 0.12) ** 2 + ((xx - 0.08) / 0.1) ** 2 < 1).astype(np.float32)
volume = np.stack([0.3 * body + 0.1 * np.roll(organ, k, axis=0) for k in range(depth)])
volume += rng.normal(0, 0.03, volume.shape).astype(np.float32)
valid = np.ones(volume.shape, bool)
valid[:, :, : size // 32] = False
vt, mt = torch.from_numpy(volume), torch.from_numpy(valid)
best = None
for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    maps = compute_weight_maps(vt, mt, sigma=cfg.lowpass_sigma_px, median_size=cfg.median_size,
                               threshold_k=cfg.threshold_k, range_k=cfg.guide_range_k)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if best is None or wall < best[0]:
        best = (wall, cpu)
np.save(sys.argv[5], maps.weights.numpy())
print(json.dumps({"wall_s": best[0], "cpu_s": best[1], "threads": threads,
                  "thresholds": maps.thresholds.tolist(), "matched": maps.matched_fraction,
                  "load1": os.getloadavg()[0]}))
"""

FILTER_WORKER = r"""
import json, math, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch, torch.nn.functional as F
from scipy import ndimage
from nsn2n.weight_map import bilateral, median_filter
torch.set_num_threads(1)
rng = np.random.default_rng(1)
n, size = int(sys.argv[2]), int(sys.argv[3])
x = torch.from_numpy(rng.normal(0, 1, (n, size, size)).astype(np.float32))

def unfold_median(x, k=5):
    m = k // 2
    p = F.unfold(F.pad(x.unsqueeze(1), (m, m, m, m), mode="reflect"), kernel_size=k)
    return p.median(dim=1).values.view_as(x)

def unfold_bilateral(x, s=2.0, r=0.5):
    w = math.ceil(2 * s); k = 2 * w + 1; n, h, wd = x.shape
    o = torch.arange(-w, w + 1, dtype=torch.float32); yy, xx = torch.meshgrid(o, o, indexing="ij")
    sp = torch.exp(-(yy**2 + xx**2) / (2 * s**2)).reshape(1, -1, 1)
    p = F.unfold(F.pad(x.unsqueeze(1), (w, w, w, w), mode="reflect"), kernel_size=k)
    wt = sp * torch.exp(-((p - x.reshape(n, 1, h * wd)) ** 2) / (2 * r**2))
    return ((wt * p).sum(1) / wt.sum(1)).view(n, h, wd)

candidates = {
    "5x5 median: unfold + torch.median (before)": (unfold_median, None),
    "5x5 median: scipy.ndimage.median_filter, mode mirror": (
        lambda v: torch.from_numpy(np.stack([ndimage.median_filter(s, size=5, mode="mirror") for s in v.numpy()])),
        "median",
    ),
    "5x5 median: forgetful selection over shifted views (now)": (lambda v: median_filter(v, 5), "median"),
    "bilateral r=4: unfold (before)": (unfold_bilateral, None),
    "bilateral r=4: shift and accumulate, symmetric offsets (now)": (lambda v: bilateral(v, 2.0, 0.5), "bilateral"),
}
reference = {"median": unfold_median(x), "bilateral": unfold_bilateral(x)}
rows = []
for name, (fn, ref) in candidates.items():
    out = [fn(x[i : i + 1]) for i in range(1)]  # warm-up
    t, c = time.perf_counter(), time.process_time()
    out = torch.cat([fn(x[i : i + 1]) for i in range(n)])
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    diff = float((out - reference[ref]).abs().max()) if ref else 0.0
    rows.append({"name": name, "ms_per_slice": 1000 * wall / n, "cpu_ms_per_slice": 1000 * cpu / n, "max_diff": diff})
print(json.dumps({"rows": rows, "load1": os.getloadavg()[0]}))
"""

LOADER_WORKER = r"""
import json, re, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
def rss():
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
from dicom_series import read_dicom_folder
before = rss(); t = time.perf_counter()
instances = read_dicom_folder(Path(sys.argv[2]), skip_unreadable=True)
seconds = time.perf_counter() - t
after = rss()
pixels = sum(len(ds.PixelData) for _, ds in instances if "PixelData" in ds)
print(json.dumps({"files": len(instances), "rss_growth_kib": after - before, "pixel_bytes": pixels, "read_s": seconds}))
"""


def run_worker(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=3600
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# report


def gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"


def ratio(old: float | None, new: float | None) -> str:
    """``old / new`` when either is long enough to compare (0.5 s), else blank."""
    if old is None or new is None or new <= 0 or max(old, new) < 0.5:
        return ""
    return f"{old / new:.1f}x"


def fmt_s(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def rate(count: float | None, seconds: float | None, unit: str) -> str:
    if not count or not seconds:
        return ""
    return f"{count / seconds:.3g} {unit}"


def case_table(new: Run, base: Run | None) -> list[str]:
    """Markdown table of one case: every stage of the current version, beside the baseline's when run."""
    head = "| stage | wall s | CPU s | peak RSS (polled) |"
    sep = "|---|---:|---:|---:|"
    if base:
        head = (
            "| stage | baseline wall s | wall s | speed-up (wall) | baseline CPU s | CPU s | speed-up (CPU) "
            "| peak RSS (polled) |"
        )
        sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    lines = [head, sep]
    names = [n for n, _ in STAGES if new.stage(n) or (base and base.stage(n))]
    for name in names:
        s, b = new.stage(name), base.stage(name) if base else None
        peak = gib(s.peak_rss_kib) if s and s.peak_rss_kib else "n/a"
        if base:
            lines.append(
                f"| {name} | {fmt_s(b.wall_s if b else None)} | {fmt_s(s.wall_s if s else None)} | "
                f"{ratio(b.wall_s if b else None, s.wall_s if s else None)} | {fmt_s(b.cpu_s if b else None)} | "
                f"{fmt_s(s.cpu_s if s else None)} | {ratio(b.cpu_s if b else None, s.cpu_s if s else None)} | {peak} |"
            )
        else:
            lines.append(f"| {name} | {fmt_s(s.wall_s if s else None)} | {fmt_s(s.cpu_s if s else None)} | {peak} |")
    total = (
        f"| **whole run** | {fmt_s(base.trace.wall_s)} | {fmt_s(new.trace.wall_s)} | "
        f"{ratio(base.trace.wall_s, new.trace.wall_s)} | {fmt_s(base.trace.cpu_s)} | {fmt_s(new.trace.cpu_s)} | "
        f"{ratio(base.trace.cpu_s, new.trace.cpu_s)} | {gib(new.trace.peak_rss_kib)} |"
        if base
        else f"| **whole run** | {fmt_s(new.trace.wall_s)} | {fmt_s(new.trace.cpu_s)} | {gib(new.trace.peak_rss_kib)} |"
    )
    lines.append(total)
    lines += ["", *throughput_lines(new, base)]
    return lines


def throughput_lines(new: Run, base: Run | None) -> list[str]:
    slices = new.case.series[0][0]
    out = []
    for run in (base, new):
        if run is None:
            continue
        train, infer = run.stage(TRAINING), run.stage(INFERENCE)
        lo, mean, hi = run.trace.load_range()
        gpu = run.trace.peak_gpu_mib
        out.append(
            f"- {run.version}: training {rate(run.steps, train.wall_s if train else None, 'steps/s')}"
            f" ({run.steps} steps), inference {rate(slices, infer.wall_s if infer else None, 'slices/s')}; "
            f"peak RSS **{gib(run.trace.peak_rss_kib)}**"
            + (f", peak GPU memory (nvidia-smi, process) **{gpu / 1024:.2f} GiB**" if gpu is not None else "")
            + f"; exit code {run.trace.returncode}; load average (1 min) during the run {lo:.1f}-{hi:.1f}, "
            f"mean {mean:.1f}"
        )
        if run.trace.returncode != 0:
            out += ["", "```", *[t for _, t in run.trace.lines[-12:]], "```", ""]
    return out


def study_lines(study: Run, alone: Run | None) -> list[str]:
    larger = max(study.case.series)
    lines = [f"## Study of two series ({study.case.label}), current version", ""]
    if alone is not None:
        share = study.trace.peak_rss_kib / alone.trace.peak_rss_kib
        lines.append(
            f"- Peak RSS of the study: **{gib(study.trace.peak_rss_kib)}**; of its larger series "
            f"({larger[0]}x{larger[1]}x{larger[1]}) alone: {gib(alone.trace.peak_rss_kib)}: "
            f"**{100 * (share - 1):+.1f} %**"
        )
    lo, _, hi = study.trace.load_range()
    lines.append(
        f"- Wall time {study.trace.wall_s:.1f} s, CPU {study.trace.cpu_s:.1f} s, exit code {study.trace.returncode}; "
        f"load average {lo:.1f}-{hi:.1f}"
    )
    lines += ["- Order of events (s from start):", ""]
    lines += ["| event | s |", "|---|---:|"]
    lines += [f"| {event} | {t:.1f} |" for event, t in series_events(study.trace)]
    return lines


def weight_map_lines(results: dict[str, dict], maps_equal: str | None, filters: dict | None, shape: str) -> list[str]:
    lines = [f"## Weight maps in-process ({shape}, torch threads = usable cores, best of 2)", ""]
    lines += ["| version | wall s | CPU s | s per slice | load (1 min) |", "|---|---:|---:|---:|---:|"]
    depth = int(shape.split("x")[0])
    for version, r in results.items():
        lines.append(
            f"| {version} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['wall_s'] / depth:.3f} | {r['load1']:.1f} |"
        )
    if len(results) == 2:
        old, new = results.values()
        lines += ["", f"- speed-up (wall): **{old['wall_s'] / new['wall_s']:.1f}x**; {maps_equal}"]
    if filters:
        lines += [
            "",
            f"Filter candidates, one slice at a time on one thread (load {filters['load1']:.1f}); max difference "
            "from the unfold definition:",
            "",
            "| filter | ms per slice | CPU ms per slice | max abs difference |",
            "|---|---:|---:|---:|",
        ]
        for row in filters["rows"]:
            lines.append(
                f"| {row['name']} | {row['ms_per_slice']:.1f} | {row['cpu_ms_per_slice']:.1f} | {row['max_diff']:.2g} |"
            )
    return lines


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="48x256x256, 300x512x512 and 600x512x512")
    parser.add_argument("--sizes", default=None, help="override, e.g. 48x256,300x512 (slices x side)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (0 = app defaults); 4, --full 20")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--baseline", default=None, metavar="GIT_REF", help="also run this commit, back to back")
    parser.add_argument("--baseline-sizes", default=None, help="sizes the baseline runs (default: all)")
    parser.add_argument("--no-study", action="store_true", help="skip the two-series study")
    parser.add_argument("--no-kernels", action="store_true", help="skip the in-process weight-map measurements")
    parser.add_argument("--env", action="append", default=[], metavar="NSN2N_KEY=VALUE", help="extra app settings")
    parser.add_argument("--poll-s", type=float, default=0.2)
    parser.add_argument("--tmp", type=Path, default=None, help="where to build the series (default: system temp)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--log", type=Path, default=None, help="write every run's app log here as it runs")
    args = parser.parse_args(argv)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)

    def parse_sizes(text: str) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]  # type: ignore[misc]

    sizes = parse_sizes(args.sizes) if args.sizes else ([SMALL, MEDIUM, LARGE] if args.full else [SMALL])
    base_sizes = parse_sizes(args.baseline_sizes) if args.baseline_sizes else sizes
    steps = args.steps if args.steps is not None else (20 if args.full else 4)
    study = Case((MEDIUM, (200, 512))) if args.full else Case((SMALL, (32, 256)))
    env = {"NSN2N_DEVICE": args.device, "NSN2N_LOG_EVERY_S": "10"}
    if steps:
        env["NSN2N_MAX_STEPS"] = str(steps)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("NSN2N_"):
            parser.error(f"--env expects NSN2N_KEY=VALUE, got {item!r}")
        env[key] = value
    gpu = gpu_name()
    gpu_poll = 1.0 if gpu and args.device != "cpu" else None
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text("", encoding="utf-8")

    tmp = Path(tempfile.mkdtemp(prefix="nsn2n-speed-", dir=args.tmp))
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_start = os.getloadavg()
    sections: list[str] = []
    try:
        versions: dict[str, Path] = {}
        base_label = None
        if args.baseline:
            commit = export_commit(args.baseline, tmp / "baseline")
            base_label = f"baseline {commit}"
            versions[base_label] = tmp / "baseline"
        versions["current"] = REPO

        def run(version: str, case: Case, inputs: Path) -> Run:
            tag = f"{version}-{case.label.replace(' + ', '+')}"
            if args.log:
                with open(args.log, "a", encoding="utf-8") as f:
                    f.write(f"\n===== {version}: {case.label} =====\n")
            print(f"running {version} on {case.label} ...", file=sys.stderr, flush=True)
            trace = run_app(
                inputs,
                tmp / f"out-{tag}",
                tmp / f"work-{tag}",
                env,
                args.poll_s,
                args.log,
                repo=versions[version],
                gpu_poll_s=gpu_poll,
                log_mode="a",
            )
            shutil.rmtree(tmp / f"out-{tag}", ignore_errors=True)
            shutil.rmtree(tmp / f"work-{tag}", ignore_errors=True)
            result = Run(version, case, trace, stage_times(trace))
            print(f"  {trace.wall_s:.0f} s, exit {trace.returncode}", file=sys.stderr, flush=True)
            return result

        alone_runs: dict[tuple[int, int], Run] = {}
        loader: list[str] = []
        for size in sizes:
            case = Case((size,))
            inputs = tmp / f"in-{case.label}"
            disk = build_inputs(case, inputs)
            base = run(base_label, case, inputs) if base_label and size in base_sizes else None
            new = run("current", case, inputs)
            alone_runs[size] = new
            sections += [f"## {case.label} ({disk / 2**20:.0f} MiB of DICOM)", "", *case_table(new, base), ""]
            held = run_worker(LOADER_WORKER, str(REPO), str(inputs))
            loader.append(
                f"| {case.label} | {held['files']} | {held['pixel_bytes'] / 2**20:.0f} MiB | "
                f"{held['rss_growth_kib'] / 2**10:.0f} MiB | {held['read_s']:.1f} |"
            )
            shutil.rmtree(inputs, ignore_errors=True)
        if not args.no_study:
            inputs = tmp / "in-study"
            build_inputs(study, inputs)
            larger = max(study.series)
            if larger not in alone_runs:
                alone_inputs = tmp / "in-study-larger"
                build_inputs(Case((larger,)), alone_inputs)
                alone_runs[larger] = run("current", Case((larger,)), alone_inputs)
                shutil.rmtree(alone_inputs, ignore_errors=True)
            held = run_worker(LOADER_WORKER, str(REPO), str(inputs))
            loader.append(
                f"| study {study.label} | {held['files']} | {held['pixel_bytes'] / 2**20:.0f} MiB | "
                f"{held['rss_growth_kib'] / 2**10:.0f} MiB | {held['read_s']:.1f} |"
            )
            sections += [*study_lines(run("current", study, inputs), alone_runs.get(larger)), ""]
            shutil.rmtree(inputs, ignore_errors=True)
        sections += [
            "## DICOM datasets the loader holds for the whole run (current version, in-process)",
            "",
            "The loader reads every file of the input, pixel data included, before the first series is "
            "converted, and the datasets stay referenced until the run ends.",
            "",
            "| input | files | pixel data | RSS growth of reading | read s |",
            "|---|---:|---:|---:|---:|",
            *loader,
            "",
        ]
        if not args.no_kernels:
            shape = (16, 512)
            results, arrays = {}, {}
            for version, root in versions.items():
                path = tmp / f"maps-{len(results)}.npy"
                results[version] = run_worker(WEIGHT_MAP_WORKER, str(root), *map(str, shape), "2", str(path))
                arrays[version] = path
            maps_equal = None
            if len(results) == 2:
                import numpy as np

                a, b = (np.load(p) for p in arrays.values())
                ta, tb = (np.array(r["thresholds"]) for r in results.values())
                gap = float(np.abs(ta - tb).max())
                maps_equal = (
                    f"maps differ at {int((a != b).sum())} of {a.size} pixels, thresholds by at most "
                    f"{gap:.2g} (relative {gap / float(np.abs(ta).max()):.1g})"
                )
            filters = run_worker(FILTER_WORKER, str(REPO), "8", "512")
            sections += [*weight_map_lines(results, maps_equal, filters, f"{shape[0]}x{shape[1]}x{shape[1]}"), ""]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    import torch

    header = [
        "# Speed and memory per stage: DICOM in -> derived series + QA report out",
        "",
        f"- Machine: {machine()}; GPU: {gpu or 'none'}; torch {torch.__version__}",
        f"- Code: git {code_version()}" + (f"; {base_label} (`--baseline {args.baseline}`)" if base_label else ""),
        f"- Date: {started}; command: `python -m bench.speed {argv_text}`".rstrip(),
        f"- Settings: {', '.join(f'{k}={v}' for k, v in sorted(env.items()))} (others: app.yaml defaults)",
        f"- Load average (1, 5, 15 min) at start {', '.join(f'{v:.1f}' for v in load_start)}, at end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; the CPU(s) may be shared with other jobs: compare "
        "versions by the ratios of runs made back to back, and by CPU seconds",
        "- Stage boundaries: arrival of the log line that ends each stage (`STAGES` in `bench/speed.py`); CPU s: "
        "user + system seconds of the app process (all threads) between those lines; peak RSS: getrusage of the "
        "child, per stage from /proc polling",
        "",
    ]
    text = "\n".join(header + sections) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
