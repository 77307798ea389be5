"""Public entry points: denoise one volume with :func:`denoise_volume`; save and load the trained model."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .collaborative_wiener import CollaborativeWienerParams, collaborative_wiener
from .config import ConfigError, DenoiseConfig
from .error_estimate import ErrorEstimate, estimate_error, evaluation_slices
from .errors import ShouldStop, StopRequested, VolumeError
from .inference import denoise_slices, network_context
from .intensity import IntensityNormalizer, output_range
from .noise import inplane_noise_sigma
from .noise_model import NoiseModel, estimate_noise_model, outer_pair_weights
from .nonlocal_means import NonLocalMeansParams, nonlocal_means
from .precision import precision_name
from .progress import ProgressLog
from .report import (
    METHODS,
    DenoiseReport,
    ModelProvenance,
    NoiseEstimate,
    NoiseModelStats,
    ResidualClipLimits,
    StageTimings,
    WeightMapStats,
)
from .residual_clip import clip_change, residual_limits
from .rician import rician_signal
from .training import (
    PairSampler,
    RecorruptedSampler,
    TrainingStats,
    foreground_floor,
    foreground_mask,
    nsn2n_step,
    recorrupted_step,
    train_network,
)
from .unet import ResidualUNet
from .weight_map import WeightMaps, compute_weight_maps

#: How the run's noise figures are measured (:class:`nsn2n.report.NoiseEstimate`).
NOISE_ESTIMATOR = (
    "before: the noise model's local sigma (nsn2n.noise_model); after: Monte-Carlo SURE of the output's "
    "RMS error (nsn2n.error_estimate); both over the foreground of up to 16 evenly spaced slices"
)

__all__ = ["MIN_SLICES", "DenoiseResult", "TrainedModel", "denoise_volume"]

log = logging.getLogger(__name__)

MODEL_FILE = "nsn2n_model.pt"
MODEL_INFO_FILE = "nsn2n_model.json"
#: NS-N2N needs a slice and its two neighbours.
MIN_SLICES = 3
#: Shortest slice side (pixels) the U-Net and the weight maps' tiles work with.
MIN_SIDE = 16


@dataclass
class TrainedModel:
    """A trained denoiser and what is needed to reuse it on another series.

    Attributes:
        network: the trained :class:`ResidualUNet` (in eval mode).
        normalizer: intensity map of the series it was trained on (CT maps are identical across series;
            for MR the new series' own map is used, the network works in normalised units).
        modality: modality it was trained on.
        formulation: what it was trained with (:attr:`DenoiseConfig.formulation`); fine-tuning keeps it.
        info: provenance (software version, config, training statistics).
    """

    network: ResidualUNet
    normalizer: IntensityNormalizer
    modality: str
    formulation: str = "recorrupted"
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Write ``nsn2n_model.pt`` (weights) and ``nsn2n_model.json`` (provenance) into ``folder``.

        Each file is written under a unique temporary name and renamed into place, so two processes saving
        into the same folder never mix their files, and an interrupted save leaves the previous model. The
        weights are serialised in memory first: ``torch.save`` to a path reports a full disk as a
        ``RuntimeError`` without the OS error number, a plain file write as an ``OSError`` that keeps it.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "nsn2n-model/1",
            "software_version": __version__,
            "modality": self.modality,
            "unet_width": self.network.width,
            "unet_depth": self.network.depth,
            "in_channels": self.network.in_channels,
            "formulation": self.formulation,
            "normalizer": self.normalizer.as_dict(),
            **self.info,
        }
        weights = io.BytesIO()
        torch.save({"state_dict": self.network.state_dict(), "meta": meta}, weights)
        _replace_file(folder / MODEL_FILE, weights.getvalue())
        _replace_file(folder / MODEL_INFO_FILE, json.dumps(meta, indent=2, default=str).encode("utf-8"))
        return folder / MODEL_FILE

    @staticmethod
    def find(folder: str | Path) -> Path | None:
        """The model file in ``folder`` (searched one level deep too), or ``None``."""
        folder = Path(folder)
        if folder.is_file() and folder.name == MODEL_FILE:
            return folder
        if not folder.is_dir():
            return None
        direct = folder / MODEL_FILE
        if direct.is_file():
            return direct
        nested = sorted(folder.glob(f"*/{MODEL_FILE}"))
        return nested[0] if nested else None

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        """Load a model saved by :meth:`save` (``path`` = the folder or the ``.pt`` file)."""
        found = cls.find(path)
        if found is None:
            raise FileNotFoundError(f"no {MODEL_FILE} in {path}")
        try:
            payload = torch.load(found, map_location="cpu", weights_only=True)
            meta = payload["meta"]
            # Models saved before context slices existed have one input slice and the paper's formulation.
            network = ResidualUNet(
                width=int(meta["unet_width"]),
                depth=int(meta["unet_depth"]),
                in_channels=int(meta.get("in_channels", 1)),
            )
            formulation = str(meta.get("formulation", "paper"))
            network.load_state_dict(payload["state_dict"])
        except Exception as exc:  # corrupt or foreign file: say which and why
            raise ValueError(f"{found}: not a usable NS-N2N model ({exc})") from exc
        network.eval()
        return cls(
            network=network,
            normalizer=IntensityNormalizer(**meta["normalizer"]),
            modality=str(meta["modality"]),
            formulation=formulation,
            info={"loaded_from": str(found)},
        )


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a uniquely named temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, eq=False)
class DenoiseResult:
    """Output of :func:`denoise_volume`.

    Attributes:
        denoised: float32 (D, H, W) in the input's units, clipped to the input dtype's range; padding
            pixels hold their original values exactly.
        model: the trained (or loaded and possibly fine-tuned) model.
        report: what the run did (:class:`nsn2n.report.DenoiseReport`; ``report.as_dict()`` for JSON).
    """

    denoised: np.ndarray
    model: TrainedModel
    report: DenoiseReport


def select_device(choice: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without a GPU is a configuration error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "'cuda' was requested but no CUDA device is available (use 'auto' or 'cpu')")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def validate_volume(volume: np.ndarray, valid: np.ndarray | None, name: str = "volume") -> None:
    """Raise :class:`VolumeError` for volumes NS-N2N cannot denoise."""
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        raise VolumeError(
            f"{name}: expected a 3-D array (slices, rows, columns), got shape "
            f"{getattr(volume, 'shape', type(volume).__name__)}"
        )
    if volume.shape[0] < MIN_SLICES:
        raise VolumeError(f"{name}: {volume.shape[0]} slice(s); NS-N2N needs at least {MIN_SLICES} neighbouring slices")
    if min(volume.shape[1:]) < MIN_SIDE:
        raise VolumeError(
            f"{name}: slices of {volume.shape[1]}x{volume.shape[2]} pixels are too small "
            f"(at least {MIN_SIDE}x{MIN_SIDE})"
        )
    if not (np.issubdtype(volume.dtype, np.number) and not np.issubdtype(volume.dtype, np.complexfloating)):
        raise VolumeError(f"{name}: unsupported data type {volume.dtype}")
    if np.issubdtype(volume.dtype, np.floating) and not np.isfinite(volume).all():
        raise VolumeError(f"{name}: contains NaN or infinite values")
    values = volume[valid] if valid is not None else volume
    if values.size == 0:
        raise VolumeError(f"{name}: every pixel is padding")
    if float(values.min()) == float(values.max()):
        raise VolumeError(f"{name}: all pixels have the same value ({float(values.min())}); nothing to denoise")
    if valid is not None and valid.shape != volume.shape:
        raise VolumeError(f"{name}: padding mask shape {valid.shape} differs from volume shape {volume.shape}")


def check_spacing(spacing: Sequence[float], config: DenoiseConfig) -> tuple[tuple[float, float, float], list[str]]:
    """``(dz, dy, dx)`` as floats and the warnings they call for (slices too far apart).

    Raises:
        VolumeError: a spacing that is not three positive numbers.
    """
    try:
        dz, dy, dx = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise VolumeError(f"spacing: expected (dz, dy, dx) in mm, got {spacing!r}") from None
    if not all(np.isfinite(v) and v > 0 for v in (dz, dy, dx)):
        raise VolumeError(f"spacing: every value must be a positive number of mm, got {(dz, dy, dx)}")
    warnings = []
    if dz > config.max_slice_gap_mm:
        warnings.append(
            f"neighbouring slices are {dz:.2f} mm apart (> {config.max_slice_gap_mm:g} mm): anatomy changes "
            "between slices, so fewer regions match: the noise is measured from fewer pixels and the neighbours "
            "help less (as context, or as the paper formulation's target); expect less noise reduction than on "
            "thin slices, and noise figures that read high (the anatomy that changes counts as noise: the level "
            "before, and with it the reported reduction; bench/README.md)"
        )
    return (dz, dy, dx), warnings


def prepare_volume(volume: np.ndarray, padding_mask: np.ndarray | None, modality: str, normalizer=None):
    """Validate ``volume``; ``(valid mask, normalizer, normalised float32 volume)``."""
    valid = None if padding_mask is None else ~padding_mask.astype(bool)
    validate_volume(volume, valid)
    normalizer = normalizer or IntensityNormalizer.for_volume(volume, modality, valid)
    normalised = normalizer.normalize(volume, valid)
    valid_full = np.ones(volume.shape, dtype=bool) if valid is None else valid
    return valid_full, normalizer, normalised


def configured_weight_maps(normalised: torch.Tensor, valid: torch.Tensor, config: DenoiseConfig) -> WeightMaps:
    """The weight maps of a normalised volume with the configured guide and threshold."""
    return compute_weight_maps(
        normalised,
        valid,
        sigma=config.lowpass_sigma_px,
        median_size=config.median_size,
        threshold_k=config.threshold_k,
        range_k=config.guide_range_k,
    )


def seed_torch(config: DenoiseConfig) -> None:
    """Seed torch's generator and set its CPU threads (:attr:`DenoiseConfig.cpu_threads`), as every run
    must before building a network."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.cpu_threads)


def infer_slices(
    network: torch.nn.Module,
    normalised: np.ndarray,
    device: torch.device,
    config: DenoiseConfig,
    modality: str,
    should_stop: ShouldStop | None = None,
) -> np.ndarray:
    """The network on every slice of a normalised volume, with the configured batch, precision and the
    self-ensemble of the modality and device (:meth:`DenoiseConfig.self_ensemble_for`)."""
    return denoise_slices(
        network,
        normalised,
        device=device,
        batch=config.inference_batch,
        self_ensemble=config.self_ensemble_for(modality, device.type),
        mixed_precision=config.mixed_precision,
        log_every_s=config.log_every_s,
        should_stop=should_stop,
    )


def to_input_units(
    normalizer: IntensityNormalizer, out_norm: np.ndarray, volume: np.ndarray, valid: np.ndarray, modality: str
) -> np.ndarray:
    """Network output back in the input's units, clipped to its range, padding restored exactly."""
    denoised = normalizer.denormalize(out_norm)
    lo, hi = output_range(volume, modality)
    np.clip(denoised, lo, hi, out=denoised)
    denoised[~valid] = volume[~valid]
    return denoised


@dataclass
class _Run:
    """One call of :func:`denoise_volume`: the volume in both units, its masks and where it runs."""

    volume: np.ndarray
    valid: np.ndarray
    normalizer: IntensityNormalizer
    normalised: np.ndarray
    volume_t: torch.Tensor
    valid_t: torch.Tensor
    device: torch.device
    spacing: tuple[float, float, float]
    modality: str
    foreground: np.ndarray
    warnings: list[str]
    should_stop: ShouldStop | None = None


def denoise_volume(
    volume: np.ndarray,
    spacing: Sequence[float],
    modality: str = "CT",
    config: DenoiseConfig | None = None,
    *,
    padding_mask: np.ndarray | None = None,
    initial_model: TrainedModel | None = None,
    finetune_steps: int = 0,
    should_stop: ShouldStop | None = None,
) -> DenoiseResult:
    """Denoise one volume with NS-N2N, training on the volume itself.

    Args:
        volume: (D, H, W) slices in spatial order; CT in Hounsfield units (RescaleSlope/Intercept
            applied), MR magnitude in its own units.
        spacing: (dz, dy, dx) in mm; dz is the distance between slice positions (not SliceThickness).
        modality: DICOM modality ("CT", "MR", ...), selects the intensity normalisation.
        config: parameters; ``None`` = defaults.
        padding_mask: (D, H, W) bool, True for padding / outside-field-of-view pixels; they are ignored in
            training and keep their exact values in the output.
        initial_model: a model from an earlier run (``-m``): with ``finetune_steps == 0`` inference only.
        finetune_steps: steps of NS-N2N fine-tuning of ``initial_model`` on this volume.
        should_stop: cancellation hook (:data:`nsn2n.errors.ShouldStop`), asked once per training step and
            once per inference batch, so that a host's stop request ends even a long run within a step.

    Returns:
        :class:`DenoiseResult`.

    Raises:
        VolumeError: the volume cannot be denoised (fewer than 3 slices, NaNs, constant, ...).
        ConfigError: an invalid configuration (e.g. ``device="cuda"`` without a GPU).
        StopRequested: ``should_stop`` returned ``True``.
    """
    config = config or DenoiseConfig()
    t_start = time.monotonic()
    run = _start(volume, spacing, (modality or "OT").upper(), config, padding_mask, initial_model)
    run.should_stop = should_stop
    maps, noise_model, noise_stats, seconds_maps = _match_neighbours(run, config)
    network, formulation, stats, seconds_train = _train(run, maps, noise_model, config, initial_model, finetune_steps)
    evaluated = set(evaluation_slices(run.foreground, volume.shape[0]).tolist())
    stationary = None if run.modality == "CT" else _capped_level(run, noise_stats.level)
    rician = _rician_correction(run, noise_model, noise_stats.level, stationary, config)
    rician_model, rician_sigma = rician if rician is not None else (None, None)
    blend = _nonlocal_blend(run, noise_model, stationary, config)
    wiener = _wiener_stage(run, noise_model, stationary, config, blend is not None)
    inference = _infer(run, network, maps, config, evaluated, rician_model, blend, wiener)
    denoised, limits, seconds_inference = inference.denoised, inference.limits, inference.seconds
    noise, seconds_noise = _measure_noise(run, network, noise_model, config, limits, blend, wiener, inference.pilot)
    timings = StageTimings(seconds_maps, seconds_train, seconds_inference, seconds_noise, time.monotonic() - t_start)
    log.info(
        "noise: %.4g %s before, %s after (%s; %s); timings %s",
        noise.before,
        noise.unit,
        "unknown" if noise.after is None else f"{noise.after:.4g}",
        _change_phrase(None if noise.after is None else noise.reduction_percent),
        NOISE_ESTIMATOR,
        ", ".join(f"{name} {seconds:.1f} s" for name, seconds in dataclasses.asdict(timings).items()),
    )
    provenance = ModelProvenance()
    if initial_model is not None:
        provenance = ModelProvenance(initial_model.info.get("loaded_from"), finetune_steps)
    steps = _post_processing(config, blend, wiener, rician_sigma, _unit(run.modality))
    report = _report(
        run, config, maps, noise_stats, formulation, stats, provenance, timings, noise, rician_sigma, steps
    )
    info = {"config": config.as_dict(), "training": report.as_dict()["training"]}
    if initial_model is not None:
        info["loaded_from"] = provenance.loaded_from
    model = TrainedModel(
        network=network, normalizer=run.normalizer, modality=run.modality, formulation=formulation, info=info
    )
    return DenoiseResult(denoised=denoised, model=model, report=report)


def _start(
    volume: np.ndarray,
    spacing: Sequence[float],
    modality: str,
    config: DenoiseConfig,
    padding_mask: np.ndarray | None,
    initial_model: TrainedModel | None,
) -> _Run:
    """Check the spacing, choose the device, seed, validate and normalise the volume."""
    spacing3, warnings = check_spacing(spacing, config)
    for w in warnings:
        log.warning(w)
    device = select_device(config.device)
    seed_torch(config)
    # A CT model's normalisation is the fixed HU map; an MR series is normalised by its own intensities.
    reuse_normalizer = initial_model.normalizer if initial_model and modality == "CT" else None
    valid, normalizer, normalised = prepare_volume(volume, padding_mask, modality, reuse_normalizer)
    log.info(
        "NS-N2N: volume %s %s, spacing %.3g x %.3g x %.3g mm, device %s, torch threads %d",
        "x".join(map(str, volume.shape)),
        modality,
        *spacing3,
        device,
        torch.get_num_threads(),
    )
    volume_t = torch.from_numpy(normalised).to(device)
    valid_t = torch.from_numpy(valid).to(device)
    return _Run(
        volume=volume,
        valid=valid,
        normalizer=normalizer,
        normalised=normalised,
        volume_t=volume_t,
        valid_t=valid_t,
        foreground=run_foreground(volume_t, valid_t, normalizer, modality),
        device=device,
        spacing=spacing3,
        modality=modality,
        warnings=warnings,
    )


def run_foreground(
    normalised_t: torch.Tensor, valid_t: torch.Tensor, normalizer: IntensityNormalizer, modality: str
) -> np.ndarray:
    """(D, H, W) bool foreground of a normalised volume, as a run has it: valid pixels farther from the fill
    than the modality's floor (:func:`nsn2n.training.foreground_floor`). The training crops, the noise
    model's two classes and the noise figures all use it."""
    fill = float(normalizer.normalised_fill)
    return foreground_mask(normalised_t, valid_t, fill, foreground_floor(normalised_t, valid_t, modality)).cpu().numpy()


def measure_noise_model(
    normalised_t: torch.Tensor,
    valid_t: torch.Tensor,
    maps: WeightMaps,
    config: DenoiseConfig,
    foreground: np.ndarray | None = None,
) -> NoiseModel:
    """The noise model of a normalised volume (:mod:`nsn2n.noise_model`), with the configured weight maps;
    its level measured on ``foreground`` ((D, H, W) bool, the run's foreground; ``None`` = all pixels)."""

    def match(sub: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        sub_valid = torch.ones_like(sub, dtype=torch.bool) if valid is None else valid
        return configured_weight_maps(sub, sub_valid, config).weights

    outer = outer_pair_weights(normalised_t, valid_t, match)
    return estimate_noise_model(
        normalised_t.cpu().numpy(),
        maps.weights,
        outer,
        valid_t.cpu().numpy(),
        foreground=foreground,
        default_sigma=maps.pixel_sigma,
    )


def _match_neighbours(run: _Run, config: DenoiseConfig) -> tuple[WeightMaps, NoiseModel, NoiseModelStats, float]:
    """Weight maps, the noise model and its summary for the report; ``(maps, model, summary, seconds)``."""
    t = time.monotonic()
    maps = configured_weight_maps(run.volume_t, run.valid_t, config)
    noise_model = measure_noise_model(run.volume_t, run.valid_t, maps, config, run.foreground)
    stats = NoiseModelStats(
        level=noise_model.level(run.foreground) * run.normalizer.scale,
        lag1_correlation=noise_model.lag1_correlation,
        source=noise_model.source,
        unit=_unit(run.modality),
    )
    seconds = time.monotonic() - t
    log.info(
        "weight maps: %d pairs, %.1f%% of pixels matched; noise model from %s: %.4g %s in the foreground, "
        "neighbouring-pixel correlation %.2f; %.2f s",
        run.volume.shape[0] - 1,
        100 * maps.matched_fraction,
        stats.source,
        stats.level,
        stats.unit,
        stats.lag1_correlation,
        seconds,
    )
    if not stats.level > 0:
        run.warnings.append(
            "no noise was measured between neighbouring slices (they are identical where they match: a "
            "noise-free, synthetic or repeated-slice series); there is nothing to learn, and the output "
            "stays close to the input"
        )
        log.warning(run.warnings[-1])
    if maps.matched_fraction < 0.2 and config.use_weight_map:
        run.warnings.append(
            f"only {100 * maps.matched_fraction:.0f}% of pixels match their neighbour slice: the noise model rests "
            "on few pixels and the neighbours add little; the denoising may be weak"
        )
        log.warning(run.warnings[-1])
    return maps, noise_model, stats, seconds


def _train(
    run: _Run,
    maps: WeightMaps,
    noise_model: NoiseModel,
    config: DenoiseConfig,
    initial_model: TrainedModel | None,
    finetune_steps: int,
) -> tuple[torch.nn.Module, str, TrainingStats, float]:
    """Train a new network, or fine-tune (or just take) ``initial_model``;
    ``(network, formulation, stats, seconds)``."""
    if initial_model is not None:
        network = initial_model.network.to(run.device)
        formulation = initial_model.formulation
        steps = finetune_steps
        log.info(
            "using the saved model from %s: %s",
            initial_model.info.get("loaded_from", "memory"),
            f"fine-tuning {steps} steps" if steps else "inference only, no training",
        )
    else:
        formulation = config.formulation
        network = ResidualUNet(config.unet_width, config.unet_depth, 2 * config.input_context + 1).to(run.device)
        steps = config.max_steps
    network = network.to(memory_format=torch.channels_last)
    t = time.monotonic()
    fill = float(run.normalizer.normalised_fill)
    foreground = torch.from_numpy(run.foreground).to(run.device)
    if formulation == "recorrupted":
        sampler = RecorruptedSampler(
            run.volume_t,
            run.valid_t,
            noise_model,
            context_slices=network_context(network),
            alpha=config.recorruption_alpha,
            sigma_scale=config.sigma_scale_for(run.modality),
            crop_size=config.crop_size,
            fill=fill,
            seed=config.seed,
            foreground=foreground,
        )
        step_fn = recorrupted_step
    else:
        sampler = PairSampler(
            run.volume_t,
            maps.weights if config.use_weight_map else None,
            run.valid_t,
            crop_size=config.crop_size,
            fill=fill,
            seed=config.seed,
            foreground=foreground,
        )
        step_fn = nsn2n_step(config)
    log.info(
        "training: %s formulation, %d input slice(s), %d steps, precision %s",
        formulation,
        2 * network_context(network) + 1,
        steps,
        precision_name(run.device, config.mixed_precision),
    )
    stats = train_network(
        network, sampler, step_fn, config, steps=steps, device=run.device, should_stop=run.should_stop
    )
    seconds = time.monotonic() - t
    if stats.rollbacks:
        run.warnings.append(
            f"training diverged {stats.rollbacks} time(s) and was rolled back to an earlier state "
            "with a halved learning rate; the result may be less denoised than usual"
        )
    return network, formulation, stats, seconds


def _change_phrase(reduction_percent: float | None) -> str:
    """``"27% lower"``, ``"3% higher"``, ``"unchanged"`` (under half a percent) or ``"change unknown"``."""
    if reduction_percent is None:
        return "change unknown"
    if abs(reduction_percent) < 0.5:
        return "unchanged"
    return f"{abs(reduction_percent):.0f}% {'lower' if reduction_percent > 0 else 'higher'}"


def _unit(modality: str) -> str:
    return "HU" if modality == "CT" else "a.u."


def _capped_level(run: _Run, level: float) -> tuple[float, float] | None:
    """``(level capped at the in-plane bound, the bound)`` in the input's units, or ``None`` without a
    positive, finite level and bound: the stationary noise level of an MR series, which the Rician
    correction and the non-local means blend share (computed once per run: the bound reads every slice).

    ``level`` is the noise model's foreground level (the run's :class:`NoiseModelStats`). On thick slices
    anatomy that changes between them raises the paired-slice level; the in-plane bound
    (:func:`nsn2n.noise.inplane_noise_sigma`, white noise) cannot see that anatomy, so the smaller of the
    two is the level of an MR series' white noise.
    """
    bound = inplane_noise_sigma(run.normalised, run.foreground) * run.normalizer.scale
    if not (math.isfinite(bound) and bound > 0 and math.isfinite(level) and level > 0):
        return None
    return min(level, bound), bound


def _levels_usable(noise_model: NoiseModel) -> bool:
    """Whether every block level of ``noise_model`` is positive and finite (a level to scale or filter with)."""
    blocks = noise_model.sigma_blocks
    return bool(np.all(np.isfinite(blocks)) and np.all(blocks > 0))


def _rician_correction(
    run: _Run,
    noise_model: NoiseModel,
    level: float,
    capped: tuple[float, float] | None,
    config: DenoiseConfig,
) -> tuple[NoiseModel, float] | None:
    """``(the noise model whose foreground level the output's Rician correction uses, that level in the
    input's units)`` (:mod:`nsn2n.rician`), or ``None`` where the run does not correct.

    It corrects MR magnitude data (no negative values, so the normalisation's offset is 0 and 0 stays 0)
    with the setting on, at the noise model's foreground level ``level`` capped at the in-plane bound
    (``capped``, from :func:`_capped_level`): a level set too high maps dark tissue to zero, while one
    set too low only leaves part of the floor. No correction without a positive, finite level and bound.
    """
    if not (config.rician_bias_correction and run.modality == "MR" and run.normalizer.offset == 0.0):
        return None
    if capped is None or not _levels_usable(noise_model):
        return None
    used, bound = capped
    log.info("Rician bias correction at %.4g a.u. (noise model %.4g, in-plane bound %.4g)", used, level, bound)
    return (noise_model if used == level else noise_model.scaled(used / level)), used


@dataclass(frozen=True)
class NonLocalBlend:
    """``(1 - weight) * network output + weight * non-local means of the input`` (:mod:`nsn2n.nonlocal_means`)
    on normalised slices, with the noise level ``sigma`` (:func:`_nonlocal_blend` says which); padding
    keeps the network's value (the output restores the input there).

    Attributes:
        weight: of the non-local means, in (0, 1].
        sigma: (D, H, W) float32 noise level, normalised units, on ``device``.
        params: the filter's parameters.
        device: where the filter runs (the run's device).
        compare: the map of each slab the filter compares patches on (``None``: the slab itself;
            :func:`_whitens_comparison` says when it is the slab whitened in-plane).
    """

    weight: float
    sigma: torch.Tensor
    params: NonLocalMeansParams
    device: torch.device
    compare: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(
        self,
        volume: np.ndarray,
        network_out: np.ndarray,
        slices: np.ndarray,
        should_stop: ShouldStop | None = None,
        log_every_s: float | None = None,
    ) -> np.ndarray:
        """Blend ``network_out`` (len(slices), H, W) with the filter of ``volume`` (D, H, W) at ``slices``.

        ``should_stop`` is asked before every slab (:class:`StopRequested`); with ``log_every_s`` the
        filter logs its progress."""
        progress = None if log_every_s is None else ProgressLog("non-local means", len(slices), log_every_s)

        def before_slab(done: int, total: int) -> None:
            if should_stop is not None and should_stop():
                raise StopRequested(f"non-local means: stopped before slice {done + 1} of {total}")
            if progress is not None:
                progress.update(done)

        volume_t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(self.device)
        wanted = [int(z) for z in slices]
        filtered = nonlocal_means(volume_t, self.sigma, self.params, wanted, before_slab, self.compare).cpu().numpy()
        if progress is not None:
            progress.update(len(wanted))
        return ((1.0 - self.weight) * network_out + self.weight * filtered).astype(np.float32)


def _nonlocal_blend(
    run: _Run, noise_model: NoiseModel, capped: tuple[float, float] | None, config: DenoiseConfig
) -> NonLocalBlend | None:
    """The run's :class:`NonLocalBlend`, or ``None`` where its weight is 0 or there is no noise level.

    The filter's noise level: on CT the noise model's local level (each pixel its class's), since CT
    noise grows towards the middle of the body and behind dense anatomy; on other modalities one level,
    the foreground level capped at the in-plane bound (``capped``, :func:`_capped_level`): MR noise is stationary,
    and the block levels of thick MR slices count anatomy that changes between them (on the thick MR of
    the benchmark's tuning set they ranged from 5 to 29 against a true 11.8, and the filter with them
    removed little noise). The patch and search box span about the same millimetres along every axis
    (:meth:`NonLocalMeansParams.for_spacing`: thick slices get fewer slices of each), and the patch is
    the small one where that still holds enough independent noise samples
    (:meth:`NonLocalMeansParams.for_noise`: thin slices with white in-plane noise); where the noise is
    correlated in-plane, patches can be compared whitened (``nonlocal_whitening``, :func:`_whitens_comparison`).
    """
    weight = config.nonlocal_weight_for(run.modality)
    if weight == 0.0:
        return None
    sigma = _filter_sigma(run, noise_model, capped)
    if sigma is None:
        return None
    params = NonLocalMeansParams.for_noise(run.spacing, noise_model.autocorrelation, h_factor=config.nonlocal_h_factor)
    whiten = config.nonlocal_whitening and _whitens_comparison(noise_model, params)
    compare = _whitened_comparison(noise_model) if whiten else None
    log.info(
        "non-local means blend: weight %.2f, h %.2f sigma, patch radii %s, search radii %s (z, y, x voxels)%s",
        weight,
        config.nonlocal_h_factor,
        params.patch_radii,
        params.search_radii,
        ", patches compared whitened" if compare is not None else "",
    )
    return NonLocalBlend(weight, sigma, params, run.device, compare)


def _filter_sigma(run: _Run, noise_model: NoiseModel, capped: tuple[float, float] | None) -> torch.Tensor | None:
    """(D, H, W) float32 noise level (normalised units, on the run's device) of the filters after the
    network (:func:`_nonlocal_blend` says which), or ``None`` where the run has none it can use."""
    if run.modality == "CT":
        if not _levels_usable(noise_model):
            return None
        maps = noise_model.sigma_maps(run.device)
        return torch.stack([maps.slice(z) for z in range(run.normalised.shape[0])])
    if capped is None:
        return None
    return torch.full(run.normalised.shape, capped[0] / run.normalizer.scale, device=run.device)


@dataclass(frozen=True)
class WienerStage:
    """Collaborative Wiener filtering of the input with the output so far as the pilot
    (:mod:`nsn2n.collaborative_wiener`, BM3D's second step), on normalised slices; padding keeps the
    pilot's value (the output restores the input there).

    Attributes:
        sigma: (D, H, W) float32 noise level, normalised units, on ``device`` (the blend's).
        autocorrelation: the noise's in-plane autocorrelation (:attr:`NoiseModel.autocorrelation`).
        params: the filter's parameters.
        device: where the filter runs (the run's device).
    """

    sigma: torch.Tensor
    autocorrelation: np.ndarray | None
    params: CollaborativeWienerParams
    device: torch.device

    def __call__(
        self,
        volume: np.ndarray,
        pilot: np.ndarray,
        slices: np.ndarray,
        should_stop: ShouldStop | None = None,
        log_every_s: float | None = None,
        groups: dict[int, torch.Tensor] | None = None,
    ) -> np.ndarray:
        """The filter of ``volume`` (D, H, W) with ``pilot`` (D, H, W: every slice, since the groups of a
        slice reach its neighbours) at ``slices``: (len(slices), H, W) float32.

        ``should_stop`` is asked before every reference slice (:class:`StopRequested`); with
        ``log_every_s`` the filter logs its progress. ``groups``: block matching to hold and fill
        (:func:`nsn2n.collaborative_wiener.collaborative_wiener`)."""
        progress: ProgressLog | None = None

        def before_slice(done: int, total: int) -> None:
            nonlocal progress
            if should_stop is not None and should_stop():
                raise StopRequested(f"collaborative Wiener: stopped before slice {done + 1} of {total}")
            if log_every_s is not None:
                progress = progress or ProgressLog("collaborative Wiener", total, log_every_s)
                progress.update(done)

        volume_t, pilot_t = (
            torch.from_numpy(np.ascontiguousarray(v, np.float32)).to(self.device) for v in (volume, pilot)
        )
        wanted = [int(z) for z in slices]
        params, correlation = self.params, self.autocorrelation
        out = collaborative_wiener(volume_t, pilot_t, self.sigma, correlation, params, wanted, before_slice, groups)
        if progress is not None:
            progress.update(progress.total)
        return out.cpu().numpy()


def _wiener_stage(
    run: _Run, noise_model: NoiseModel, capped: tuple[float, float] | None, config: DenoiseConfig, blends: bool
) -> WienerStage | None:
    """The run's :class:`WienerStage`, or ``None`` where it is off (:attr:`DenoiseConfig.collaborative_wiener`;
    its default needs a blend, ``blends``, and :func:`_wiener_applies`) or there is no noise level
    (:func:`_filter_sigma`)."""
    params = NonLocalMeansParams.for_noise(run.spacing, noise_model.autocorrelation, h_factor=config.nonlocal_h_factor)
    wanted = config.collaborative_wiener
    if not (wanted if wanted is not None else blends and _wiener_applies(noise_model, params)):
        return None
    sigma = _filter_sigma(run, noise_model, capped)
    if sigma is None:
        return None
    stage = WienerStage(sigma, noise_model.autocorrelation, CollaborativeWienerParams(), run.device)
    p = stage.params
    log.info(
        "collaborative Wiener stage: %d x %d blocks every %d px, groups of %d from %d x %d px on the slice and "
        "%d slice(s) either side%s",
        p.block,
        p.block,
        p.stride,
        p.group,
        2 * p.search_radius + 1,
        2 * p.search_radius + 1,
        p.slice_radius,
        "" if wanted is not None else " (white in-plane noise, single-slice non-local means patches)",
    )
    return stage


#: Lag-1 correlation of the noise model (as it measures it) below which the Wiener stage runs by default.
WIENER_MAX_CORRELATION = 0.15


def _wiener_applies(noise_model: NoiseModel, params: NonLocalMeansParams) -> bool:
    """Whether the collaborative Wiener stage runs, by default, after a run's blend.

    Rule: where the noise is white in-plane (the noise model's lag-1 correlation below
    :data:`WIENER_MAX_CORRELATION`: MR's thermal noise, not CT's reconstruction kernel nor an MR series
    interpolated in k-space) and the non-local means compares single-slice patches (thick slices,
    :meth:`NonLocalMeansParams.for_spacing`). Reason (bench/README.md, 2026-12-01): on the report set's
    5 mm MR with white noise it raised the brain's PSNR by 0.74 to 0.77 dB and the edge band's by 0.84
    to 0.87 on three seeds, ahead of BM4D; where patches span three slices (thin MR, thin CT) the blend
    already compares across slices and the stage lost up to 0.26 dB on two of three cases. With in-plane
    correlated noise it gained less and then lost: on the same 5 mm MR with k-space-truncated noise,
    +0.57, +0.32, -0.41 and -0.66 dB where the noise model measured lag 1 at 0.08, 0.10, 0.21 and 0.39
    (true 0.09, 0.17, 0.37, 0.57); the crossing is near 0.15. There the MR noise level, capped at the
    in-plane bound (:func:`_capped_level`), reads low (7.7 against a true 11.8 at 0.21), and the stage
    keeps what it takes for signal. On CT (lag 1 about 0.5 and more) the body's PSNR did not rise.
    """
    return noise_model.lag1_correlation < WIENER_MAX_CORRELATION and params.patch_radii[0] == 0


#: Lag-1 correlation of the noise model from which the non-local means compares whitened patches.
WHITENING_MIN_CORRELATION = 0.3


def _whitens_comparison(noise_model: NoiseModel, params: NonLocalMeansParams) -> bool:
    """Whether the non-local means compares patches whitened in-plane (:func:`_whitened_comparison`) when
    :attr:`DenoiseConfig.nonlocal_whitening` asks for it.

    Rule: where the noise is correlated in-plane (lag 1 at least :data:`WHITENING_MIN_CORRELATION`:
    CT's reconstruction kernel, not MR's thermal noise) and the patches span several slices. Reason:
    the filter's weight assumes patch differences of independent noise, ``E d^2 = 2 sigma^2`` with a
    small spread; blotchy noise spreads ``d^2`` far more, so similar patches lose weight and different
    ones gain it. On the tuning set (bench/README.md) whitening raised the thin CT's gain 5.77 -> 6.03
    dB and left the 4.5 mm CT's (3-slice patches) at 4.30 against 4.31; with single-slice patches
    (lung1's 5 mm slices) it lost 0.2 dB, and on MR (white noise) 0.1 dB.
    """
    return noise_model.lag1_correlation >= WHITENING_MIN_CORRELATION and params.patch_radii[0] >= 1


#: In-plane reflection added around a slab before it is whitened (pixels): the whitening is circular, and
#: the wrap-around of a slab's opposite borders would otherwise put edges into the compared patches there.
_WHITENING_PAD = 16


def _whitened_comparison(noise_model: NoiseModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map of a padded slab to the slab the non-local means compares patches on: whitened in-plane
    by the noise model's correlation (:meth:`NoiseModel.whiten`)."""

    def compare(slab: torch.Tensor) -> torch.Tensor:
        pad = min(_WHITENING_PAD, slab.shape[1] - 1, slab.shape[2] - 1)
        wide = F.pad(slab[None], (pad,) * 4, mode="reflect")[0] if pad > 0 else slab
        white = noise_model.whiten(wide)
        return white[:, pad : pad + slab.shape[1], pad : pad + slab.shape[2]].contiguous()

    return compare


@dataclass(frozen=True)
class _Inference:
    """What :func:`_infer` made.

    Attributes:
        denoised: the output, input units.
        limits: the residual clip's limits of the kept slices (empty without a clip): the error
            estimate probes the same clip on those slices.
        pilot: the Wiener stage's pilot (normalised output before the stage; ``None`` without the
            stage): the error estimate holds it on the slices it does not perturb.
        seconds: wall-clock time.
    """

    denoised: np.ndarray
    limits: dict[int, np.ndarray]
    pilot: np.ndarray | None
    seconds: float


def _infer(
    run: _Run,
    network: torch.nn.Module,
    maps: WeightMaps,
    config: DenoiseConfig,
    keep: Collection[int],
    rician: NoiseModel | None = None,
    blend: NonLocalBlend | None = None,
    wiener: WienerStage | None = None,
) -> _Inference:
    """Denoise every slice, clip the residual, blend, filter, correct the Rician bias, return to input units.

    ``keep``: the slices whose clip limits are returned. ``blend``: the blend with non-local means
    (:class:`NonLocalBlend`), ``None`` = the network alone. ``wiener``: the collaborative Wiener stage
    (:class:`WienerStage`) with the output so far as its pilot, ``None`` = none. ``rician``: the noise
    model whose foreground level maps the output from the expected magnitude to the signal
    (:mod:`nsn2n.rician`), ``None`` = no correction. The correction comes last: the clip bounds what the
    network changes, and the filters estimate the expected magnitude, not that known mapping.
    """
    t = time.monotonic()
    ensemble = config.self_ensemble_for(run.modality, run.device.type)
    note = ", self-ensemble of 8 flips/rotations" if ensemble else ""
    log.info("inference: %d slices%s", run.normalised.shape[0], note)
    out_norm = infer_slices(network, run.normalised, run.device, config, run.modality, run.should_stop)
    kept: dict[int, np.ndarray] = {}
    limits = residual_limits(
        run.normalised,
        maps.weights,
        k_matched=config.residual_clip_k,
        k_unmatched=config.residual_clip_unmatched_k,
        valid=run.valid,
        default_sigma=maps.pixel_sigma,
    )
    for z, limit in enumerate(limits):
        out_norm[z] = clip_change(run.normalised[z], out_norm[z], limit)
        if z in keep:
            kept[z] = limit
    every = np.arange(out_norm.shape[0])
    if blend is not None:
        out_norm = blend(run.normalised, out_norm, every, run.should_stop, config.log_every_s)
    pilot = None
    if wiener is not None:
        pilot = out_norm
        out_norm = wiener(run.normalised, pilot, every, run.should_stop, config.log_every_s)
    if rician is not None:
        for z in range(out_norm.shape[0]):
            out_norm[z] = rician_signal(out_norm[z], rician.foreground_sigma_map(z))
    denoised = to_input_units(run.normalizer, out_norm, run.volume, run.valid, run.modality)
    return _Inference(denoised, kept, pilot, time.monotonic() - t)


def _measure_noise(
    run: _Run,
    network: torch.nn.Module,
    noise_model: NoiseModel,
    config: DenoiseConfig,
    limits: dict[int, np.ndarray],
    blend: NonLocalBlend | None = None,
    wiener: WienerStage | None = None,
    pilot: np.ndarray | None = None,
) -> tuple[NoiseEstimate, float]:
    """Noise before and the RMS error after, over the foreground (:mod:`nsn2n.error_estimate`).

    The denoiser probed is the one that made the output: the network in float32 (bf16 rounding would
    swamp the estimator's finite differences), then the residual clip with ``limits`` (those of the
    unperturbed volume, per evaluated slice, from :func:`_infer`; empty without a clip) held, then the
    blend with non-local means of the same (perturbed) input where the run blends, then the
    collaborative Wiener stage where the run has it, with ``pilot`` (the run's pilot, :func:`_infer`) on
    every slice but the perturbed ones, whose pilot is the perturbed slices' own output so far, and with
    the block matching of the unperturbed input held. Both follow the estimator's rule of holding what
    the denoiser derived from the input (:mod:`nsn2n.error_estimate`): the stage's groups reach
    neighbouring slices, whose pilot a perturbation changes only through their context and search
    windows; and the choice of the nearest blocks is a step function of the pilot, which a finite
    difference of 0.1 sigma cannot differentiate (the report set's 5 mm MR, seed 0: 5.57 held, 5.80
    re-matched, against a true 5.7 over the pixels the figure describes); the probes skip the matching
    too. Not the
    Rician correction of an MR magnitude series: SURE measures the error against the input's expected
    value, which for magnitude data is the Rician mean, and the correction is the known map from that
    mean to the signal (:mod:`nsn2n.rician`); the figure is the denoising's error on that scale.
    ``(estimate, seconds)``.
    """
    t = time.monotonic()
    matching: dict[int, torch.Tensor] = {}  # filled by the first (unperturbed) call, held by the probes

    def network_and_clip(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
        raw = denoise_slices(
            network,
            volume,
            device=run.device,
            batch=config.inference_batch,
            self_ensemble=config.self_ensemble_for(run.modality, run.device.type),
            mixed_precision=False,
            log_every_s=config.log_every_s,
            should_stop=run.should_stop,
            slices=slices,
        )
        if limits:
            for i, z in enumerate(slices):
                raw[i] = clip_change(volume[z], raw[i], limits[int(z)])
        out = raw if blend is None else blend(volume, raw, slices, run.should_stop)
        if wiener is None or pilot is None:
            return out
        held = pilot[slices].copy()
        pilot[slices] = out
        try:
            return wiener(volume, pilot, slices, run.should_stop, groups=matching)
        finally:
            pilot[slices] = held

    estimate = estimate_error(network_and_clip, run.normalised, noise_model, run.foreground, perturb_in_place=True)
    usable = _error_estimate_is_consistent(estimate)
    if not usable:
        run.warnings.append(
            "the noise after denoising could not be estimated (the estimate is negative or smaller than the "
            "change the denoiser made allows: the input's noise level is probably over-estimated, e.g. "
            "anatomy that changes between thick slices), so no figure is reported for it"
        )
        log.warning(run.warnings[-1])
    scale = run.normalizer.scale
    after = estimate.rmse_after * scale if usable else None
    noise = NoiseEstimate(NOISE_ESTIMATOR, estimate.rmse_before * scale, after, _unit(run.modality))
    return noise, time.monotonic() - t


def _error_estimate_is_consistent(estimate: ErrorEstimate, tolerance: float = 0.05) -> bool:
    """Whether the estimated error after agrees with the noise level before and the change made.

    By the triangle inequality the output's error is at least the input's noise minus the change:
    ``after >= before - rms(output - input)``. An estimate below that (``tolerance`` of ``before`` allowed
    for sampling) means the level ``before`` is too high, and SURE, which subtracts that level, is then too
    low: neither the figure nor the reduction would be true. A clamped (negative) estimate fails too.
    """
    if estimate.clamped:
        return False
    change = math.sqrt(estimate.mean_change_sq)
    return estimate.rmse_after + change >= (1.0 - tolerance) * estimate.rmse_before


def _post_processing(
    config: DenoiseConfig,
    blend: NonLocalBlend | None,
    wiener: WienerStage | None,
    rician_sigma: float | None,
    unit: str,
) -> tuple[str, ...]:
    """One line per step the run applied to the network's output, in order (:attr:`DenoiseReport.post_processing`)."""
    steps = []
    limits = [k for k in (config.residual_clip_k, config.residual_clip_unmatched_k) if k is not None]
    if limits:
        steps.append(f"residual clip: each pixel changed by at most {max(limits):g} local noise standard deviations")
    if blend is not None:
        steps.append(f"blend with a 3-D non-local means of the input (weight {blend.weight:.2f})")
    if wiener is not None:
        p = wiener.params
        steps.append(
            f"collaborative Wiener filter of the input with the output as pilot (BM3D's second step; {p.block} x "
            f"{p.block} blocks, groups of {p.group} from the slice and its neighbours)"
        )
    if rician_sigma is not None:
        steps.append(f"Rician bias correction (noise level {rician_sigma:.4g} {unit})")
    return tuple(steps)


def _report(
    run: _Run,
    config: DenoiseConfig,
    maps: WeightMaps,
    noise_stats: NoiseModelStats,
    formulation: str,
    stats: TrainingStats,
    provenance: ModelProvenance,
    timings: StageTimings,
    noise: NoiseEstimate,
    rician_correction_sigma: float | None,
    post_processing: tuple[str, ...] = (),
) -> DenoiseReport:
    scale = run.normalizer.scale
    return DenoiseReport(
        software_version=__version__,
        method=METHODS[formulation],
        parameters=config,
        device=str(run.device),
        torch_version=torch.__version__,
        shape=tuple(int(n) for n in run.volume.shape),
        spacing_mm=run.spacing,
        modality=run.modality,
        normalizer=run.normalizer,
        weight_map=WeightMapStats(
            matched_fraction=maps.matched_fraction,
            threshold_median=float(maps.thresholds.median()) * scale,
            pixel_noise_sigma=maps.pixel_sigma * scale,
        ),
        noise_model=noise_stats,
        formulation=formulation,
        residual_clip=ResidualClipLimits(config.residual_clip_k, config.residual_clip_unmatched_k),
        training=stats,
        model=provenance,
        timings=timings,
        noise=noise,
        warnings=tuple(run.warnings),
        rician_correction_sigma=rician_correction_sigma,
        post_processing=post_processing,
    )
