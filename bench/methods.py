"""The benchmark's methods: one runner per method, the tuned baseline parameters, and an output cache.

Every method gets the same noisy volume and is scored by the same code (:func:`bench.metrics.score`).
Classical baselines take their parameters from ``bench/tuned.json``, which only
``python -m bench.tune_baselines`` writes, from a sweep on the **tuning** set
(``bench/results/tuning-baselines.md``). Outputs are cached in ``bench/.cache/outputs/`` keyed by the
case, seed, method and its exact parameters (for NS-N2N: the config and a digest of the ``nsn2n``
sources), so the noise-truth and removed-anatomy tables reuse what the quality run computed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import baselines, data

REPO = Path(__file__).resolve().parent.parent
TUNED_PATH = REPO / "bench" / "tuned.json"
OUTPUT_CACHE = data.CACHE_DIR / "outputs"

LEARNED = ("nsn2n", "nomask", "oracle", "zsn2n")

METHODS: dict[str, str] = {
    "noisy": "noisy input",
    "nsn2n": "NS-N2N (default config)",
    "nomask": "NS-N2N without weight map (neighbour N2N)",
    "zsn2n": "ZS-N2N (shared net, random crops)",
    "nlm3d": "NLM 3-D (skimage, tuned)",
    "bm4d": "BM4D (estimated PSD, tuned)",
    "bm4d-white": "BM4D (white σ̂, tuned)",
    "oracle": "supervised oracle (clean target)",
    "mean3": "through-slice 3-slice mean (naive)",
    "gauss": "Gaussian σ=2 px 3-D (over-smoothing control)",
}


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- tuned parameters -----------------------------------------------------------------------------------


def load_tuned(path: Path = TUNED_PATH) -> dict:
    """The tuned baseline parameters (``{"nlm3d": {"CT": {...}, "MR": {...}}, "bm4d": ..., ...}``)."""
    return json.loads(path.read_text()) if path.exists() else {}


def nlm_params(modality: str, tuned: dict | None = None) -> baselines.NLMParams:
    """NLM parameters of a modality from ``bench/tuned.json`` (the dataclass defaults if not tuned yet)."""
    values = (load_tuned() if tuned is None else tuned).get("nlm3d", {}).get(modality, {})
    return baselines.NLMParams(**values)


def bm4d_params(method: str, modality: str, tuned: dict | None = None) -> baselines.BM4DParams:
    """BM4D parameters (``bm4d`` = estimated PSD, ``bm4d-white`` = white sigma) of a modality."""
    values = (load_tuned() if tuned is None else tuned).get(method, {}).get(modality, {})
    return baselines.BM4DParams(psd=method == "bm4d", **values)


# --- running --------------------------------------------------------------------------------------------


@dataclass
class Context:
    """Everything a method runner needs for one case and seed."""

    vol: data.Volume
    noisy: np.ndarray
    steps: int | None  # training steps of learned methods (None: use budget_s)
    budget_s: float | None  # wall-clock training budget of NS-N2N (None: use steps)
    device: str
    base_config: object  # nsn2n.DenoiseConfig with the --set overrides
    preset: str
    sigma_hat: float
    tuned: dict


@dataclass
class Outcome:
    """A method's output on one case."""

    denoised: np.ndarray | None
    seconds: float
    device: str
    note: str = ""
    #: ``(before, after)`` noise figures the method itself reported (NS-N2N's run report), input units.
    reported_noise: tuple[float, float | None] | None = None


def nsn2n_config(ctx: Context, **changes):
    """The run's base config with the step count or the time budget set (fixed seed)."""
    if ctx.budget_s is not None:
        budget = {"max_steps": 1_000_000, "time_budget_s": float(ctx.budget_s)}
    else:
        budget = {"max_steps": int(ctx.steps or ctx.base_config.max_steps), "time_budget_s": None}
    return dataclasses.replace(ctx.base_config, device=ctx.device, seed=0, **budget, **changes)


def _report_device(report, fallback: str) -> str:
    return str(getattr(report, "device", None) or fallback)


def run_noisy(ctx: Context) -> Outcome:
    return Outcome(ctx.noisy, 0.0, "–")


def run_nsn2n(ctx: Context, use_weight_map: bool = True) -> Outcome:
    import nsn2n

    cfg = nsn2n_config(ctx, use_weight_map=use_weight_map)
    t0 = time.time()
    res = nsn2n.denoise_volume(ctx.noisy, spacing=ctx.vol.spacing, modality=ctx.vol.modality, config=cfg)
    seconds = time.time() - t0
    steps = res.report.training.steps
    note = f"{steps} steps"
    noise = (res.report.noise.before, res.report.noise.after)
    return Outcome(np.asarray(res.denoised, np.float32), seconds, _report_device(res.report, ctx.device), note, noise)


def run_nomask(ctx: Context) -> Outcome:
    return run_nsn2n(ctx, use_weight_map=False)


def run_oracle(ctx: Context) -> Outcome:
    from bench.oracle import fit_supervised_oracle

    cfg = nsn2n_config(ctx)
    t0 = time.time()
    res = fit_supervised_oracle(ctx.noisy, ctx.vol.clean, ctx.vol.spacing, ctx.vol.modality, cfg)
    return Outcome(np.asarray(res.denoised, np.float32), time.time() - t0, res.device)


def run_zsn2n(ctx: Context) -> Outcome:
    crop = 48 if ctx.preset == "quick" else 96
    cfg = baselines.ZSN2NConfig(steps=int(ctx.steps or 300), crop=crop)
    t0 = time.time()
    out = baselines.zsn2n(ctx.noisy, cfg, device=ctx.device)
    return Outcome(out, time.time() - t0, ctx.device)


def run_nlm3d(ctx: Context) -> Outcome:
    t0 = time.time()
    out = baselines.nlm3d(ctx.noisy, ctx.sigma_hat, nlm_params(ctx.vol.modality, ctx.tuned))
    return Outcome(out, time.time() - t0, "cpu")


def _run_bm4d(ctx: Context, method: str) -> Outcome:
    if not baselines.bm4d_available():
        return Outcome(None, 0.0, "–", "skipped: run bench/setup_bm4d.sh (bm4d, non-commercial licence)")
    t0 = time.time()
    params = bm4d_params(method, ctx.vol.modality, ctx.tuned)
    out = baselines.bm4d(ctx.noisy, ctx.vol.modality, params, sigma=ctx.sigma_hat)
    return Outcome(out, time.time() - t0, "cpu")


def run_bm4d(ctx: Context) -> Outcome:
    return _run_bm4d(ctx, "bm4d")


def run_bm4d_white(ctx: Context) -> Outcome:
    return _run_bm4d(ctx, "bm4d-white")


def run_mean3(ctx: Context) -> Outcome:
    t0 = time.time()
    return Outcome(baselines.through_slice_mean(ctx.noisy, 3), time.time() - t0, "cpu")


def run_gauss(ctx: Context) -> Outcome:
    t0 = time.time()
    return Outcome(baselines.gaussian_smooth(ctx.noisy, 2.0), time.time() - t0, "cpu")


RUNNERS: dict[str, Callable[[Context], Outcome]] = {
    "noisy": run_noisy,
    "nsn2n": run_nsn2n,
    "nomask": run_nomask,
    "zsn2n": run_zsn2n,
    "nlm3d": run_nlm3d,
    "bm4d": run_bm4d,
    "bm4d-white": run_bm4d_white,
    "oracle": run_oracle,
    "mean3": run_mean3,
    "gauss": run_gauss,
}


@functools.cache
def nsn2n_source_digest() -> str:
    """sha256 (12 hex) of the imported nsn2n package's .py files: identifies the exact core that ran.

    Read once per process (the first call; ``bench.quality`` calls it at start): the package is imported
    once, so an edit of its files while a long run goes on must not relabel that run's outputs."""
    import nsn2n

    digest = hashlib.sha256()
    for path in sorted(Path(nsn2n.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def method_key(method: str, ctx: Context) -> str:
    """What determines a method's output besides the input: its parameters (and code, for NS-N2N)."""
    if method in ("nsn2n", "nomask", "oracle"):
        cfg = nsn2n_config(ctx, **({"use_weight_map": False} if method == "nomask" else {}))
        params: object = {"config": cfg.as_dict(), "nsn2n": nsn2n_source_digest()}
    elif method == "zsn2n":
        params = {"steps": ctx.steps, "preset": ctx.preset, "device": ctx.device}
    elif method == "nlm3d":
        params = dataclasses.asdict(nlm_params(ctx.vol.modality, ctx.tuned))
    elif method in ("bm4d", "bm4d-white"):
        params = dataclasses.asdict(bm4d_params(method, ctx.vol.modality, ctx.tuned))
    else:
        params = {}
    text = json.dumps({"method": method, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_method(
    method: str, ctx: Context, cache_tag: str | None = None, fresh: bool = False, cached_only: bool = False
) -> Outcome:
    """Run one method (or reuse its cached output); a failure becomes a table note, not an exception.

    ``cache_tag`` names the input (case, split, preset, seed); ``None`` disables the cache.
    ``cached_only``: never compute; a method without a cached output gets a note instead.
    """
    path = None
    if cache_tag is not None and method != "noisy":
        path = OUTPUT_CACHE / f"{cache_tag}-{method}-{method_key(method, ctx)}.npy"
        meta = path.with_suffix(".json")
        if not fresh and path.exists() and meta.exists():
            info = json.loads(meta.read_text())
            log(f"{method}: reusing cached output {path.name} (computed {info.get('date', '?')})")
            noise = info.get("reported_noise")
            return Outcome(
                np.load(path),
                float(info["seconds"]),
                str(info["device"]),
                str(info.get("note", "")),
                tuple(noise) if noise else None,
            )
    if cached_only and method != "noisy":
        return Outcome(None, 0.0, "–", "not run here (no cached output; run bench.quality first)")
    try:
        out = RUNNERS[method](ctx)
    except Exception as exc:  # any failure of a method is reported in its row
        import traceback

        traceback.print_exc(file=sys.stderr)
        first = (str(exc).splitlines() or [""])[0][:200].replace("|", "/")
        return Outcome(None, 0.0, "–", f"FAILED: {type(exc).__name__}: {first}")
    if path is not None and out.denoised is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out.denoised)
        info = {
            "seconds": out.seconds,
            "device": out.device,
            "note": out.note,
            "reported_noise": out.reported_noise,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        path.with_suffix(".json").write_text(json.dumps(info))
    return out
