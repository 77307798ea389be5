"""Public entry points: denoise one volume, save/load the trained model, and the supervised oracle."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import ConfigError, DenoiseConfig
from .errors import VolumeError
from .inference import denoise_slices
from .intensity import IntensityNormalizer, output_range
from .noise import NOISE_ESTIMATOR, paired_slice_noise_sigma
from .residual_clip import clip_residual_per_pixel
from .training import PairSampler, TrainingStats, nsn2n_step, supervised_step, train_network
from .unet import ResidualUNet
from .weight_map import WeightMaps, compute_weight_maps

__all__ = [
    "DenoiseResult",
    "TrainedModel",
    "denoise_volume",
    "fit_supervised_oracle",
    "select_device",
]

log = logging.getLogger(__name__)

MODEL_FILE = "nsn2n_model.pt"
MODEL_INFO_FILE = "nsn2n_model.json"
MIN_SLICES = 3
MIN_SIDE = 16


@dataclass
class TrainedModel:
    """A trained denoiser and what is needed to reuse it on another series.

    Attributes:
        network: the trained :class:`ResidualUNet` (in eval mode).
        normalizer: intensity map of the series it was trained on (CT maps are identical across series;
            for MR the new series' own map is used, the network works in normalised units).
        modality: modality it was trained on.
        info: provenance (software version, config, training statistics).
    """

    network: ResidualUNet
    normalizer: IntensityNormalizer
    modality: str
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Write ``nsn2n_model.pt`` (weights) and ``nsn2n_model.json`` (provenance) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "nsn2n-model/1",
            "software_version": __version__,
            "modality": self.modality,
            "unet_width": self.network.width,
            "unet_depth": self.network.depth,
            "normalizer": self.normalizer.as_dict(),
            **self.info,
        }
        tmp = folder / (MODEL_FILE + ".tmp")
        torch.save({"state_dict": self.network.state_dict(), "meta": meta}, tmp)
        tmp.replace(folder / MODEL_FILE)
        (folder / MODEL_INFO_FILE).write_text(json.dumps(meta, indent=2, default=str))
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
            network = ResidualUNet(width=int(meta["unet_width"]), depth=int(meta["unet_depth"]))
            network.load_state_dict(payload["state_dict"])
        except Exception as exc:  # corrupt or foreign file: say which and why
            raise ValueError(f"{found}: not a usable NS-N2N model ({exc})") from exc
        network.eval()
        return cls(
            network=network,
            normalizer=IntensityNormalizer(**meta["normalizer"]),
            modality=str(meta["modality"]),
            info={"loaded_from": str(found)},
        )


@dataclass
class DenoiseResult:
    """Output of :func:`denoise_volume`.

    Attributes:
        denoised: float32 (D, H, W) in the input's units, clipped to the input dtype's range; padding
            pixels hold their original values exactly.
        model: the trained (or loaded and possibly fine-tuned) model.
        report: JSON-serialisable record: parameters, device, timings, noise before/after, warnings.
    """

    denoised: np.ndarray
    model: TrainedModel
    report: dict[str, Any]


def select_device(choice: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without a GPU is a configuration error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was requested but no CUDA device is available (use 'auto' or 'cpu')")
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


def _check_spacing(spacing: Sequence[float], config: DenoiseConfig) -> tuple[tuple[float, float, float], list[str]]:
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
            "between slices, fewer regions match and the neighbour is a weaker Noise2Noise target; expect "
            "less noise reduction than on thin slices"
        )
    return (dz, dy, dx), warnings


def _prepare(volume: np.ndarray, padding_mask: np.ndarray | None, modality: str, normalizer=None):
    valid = None if padding_mask is None else ~padding_mask.astype(bool)
    validate_volume(volume, valid)
    normalizer = normalizer or IntensityNormalizer.for_volume(volume, modality, valid)
    normalised = normalizer.normalize(volume, valid)
    valid_full = np.ones(volume.shape, dtype=bool) if valid is None else valid
    return valid_full, normalizer, normalised


def _weight_maps(normalised: torch.Tensor, valid: torch.Tensor, config: DenoiseConfig) -> WeightMaps:
    return compute_weight_maps(
        normalised,
        valid,
        sigma=config.lowpass_sigma_px,
        median_size=config.median_size,
        threshold_k=config.threshold_k,
        range_k=config.guide_range_k,
    )


def _seed(config: DenoiseConfig) -> None:
    torch.manual_seed(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)


def _finish(
    normalizer: IntensityNormalizer, out_norm: np.ndarray, volume: np.ndarray, valid: np.ndarray, modality: str
) -> np.ndarray:
    denoised = normalizer.denormalize(out_norm)
    lo, hi = output_range(volume, modality)
    np.clip(denoised, lo, hi, out=denoised)
    denoised[~valid] = volume[~valid]
    return denoised


def denoise_volume(
    volume: np.ndarray,
    spacing: Sequence[float],
    modality: str = "CT",
    config: DenoiseConfig | None = None,
    *,
    padding_mask: np.ndarray | None = None,
    initial_model: TrainedModel | None = None,
    finetune_steps: int = 0,
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

    Returns:
        :class:`DenoiseResult`.

    Raises:
        VolumeError: the volume cannot be denoised (fewer than 3 slices, NaNs, constant, ...).
        ConfigError: an invalid configuration (e.g. ``device="cuda"`` without a GPU).
    """
    config = config or DenoiseConfig()
    modality = (modality or "OT").upper()
    t_start = time.monotonic()
    spacing3, warnings = _check_spacing(spacing, config)
    for w in warnings:
        log.warning(w)
    device = select_device(config.device)
    _seed(config)
    reuse_normalizer = initial_model.normalizer if initial_model and modality == "CT" else None
    valid_np, normalizer, normalised = _prepare(volume, padding_mask, modality, reuse_normalizer)
    log.info(
        "NS-N2N: volume %s %s, spacing %.3g x %.3g x %.3g mm, device %s, torch threads %d",
        "x".join(map(str, volume.shape)),
        modality,
        *spacing3,
        device,
        torch.get_num_threads(),
    )
    timings: dict[str, float] = {}

    t = time.monotonic()
    vol_t = torch.from_numpy(normalised).to(device)
    valid_t = torch.from_numpy(valid_np).to(device)
    maps = _weight_maps(vol_t, valid_t, config)
    timings["weight_map_s"] = time.monotonic() - t
    log.info(
        "weight maps: %d pairs, %.1f%% of pixels matched, %.2f s",
        volume.shape[0] - 1,
        100 * maps.matched_fraction,
        timings["weight_map_s"],
    )
    if maps.matched_fraction < 0.2 and config.use_weight_map:
        warnings.append(
            f"only {100 * maps.matched_fraction:.0f}% of pixels match their neighbour slice; the denoising will be weak"
        )
        log.warning(warnings[-1])
    noise_before = paired_slice_noise_sigma(volume, maps.weights, valid_np)
    log.info("noise before: %.4g (%s)", noise_before, NOISE_ESTIMATOR)

    if initial_model is not None:
        network = initial_model.network.to(device)
        steps = finetune_steps
        log.info(
            "using the saved model from %s: %s",
            initial_model.info.get("loaded_from", "memory"),
            f"fine-tuning {steps} steps" if steps else "inference only, no training",
        )
    else:
        network = ResidualUNet(config.unet_width, config.unet_depth).to(device)
        steps = config.max_steps
    t = time.monotonic()
    sampler = PairSampler(
        vol_t,
        maps.weights if config.use_weight_map else None,
        valid_t,
        crop_size=config.crop_size,
        fill=float((normalizer.fill_value - normalizer.offset) / normalizer.scale),
        seed=config.seed,
    )
    stats = train_network(network, sampler, nsn2n_step(config), config, steps=steps, device=device)
    timings["train_s"] = time.monotonic() - t
    if stats.rollbacks:
        warnings.append(
            f"training diverged {stats.rollbacks} time(s) and was rolled back to an earlier state "
            "with a halved learning rate; the result may be less denoised than usual"
        )

    t = time.monotonic()
    out_norm = denoise_slices(
        network,
        normalised,
        device=device,
        batch=config.inference_batch,
        self_ensemble=config.self_ensemble,
        mixed_precision=config.mixed_precision,
        log_every_s=config.log_every_s,
    )
    out_norm = clip_residual_per_pixel(
        normalised,
        out_norm,
        maps.weights,
        k_matched=config.residual_clip_k,
        k_unmatched=config.residual_clip_unmatched_k,
        valid=valid_np,
        default_sigma=maps.pixel_sigma,
    )
    denoised = _finish(normalizer, out_norm, volume, valid_np, modality)
    timings["inference_s"] = time.monotonic() - t
    noise_after = paired_slice_noise_sigma(denoised, maps.weights, valid_np)
    timings["total_s"] = time.monotonic() - t_start
    reduction = 100 * (1 - noise_after / noise_before) if noise_before > 0 else float("nan")
    log.info(
        "noise after: %.4g (%.0f%% lower); timings %s",
        noise_after,
        reduction,
        ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    )

    model = TrainedModel(
        network=network,
        normalizer=normalizer,
        modality=modality,
        info={
            "config": config.as_dict(),
            "training": _stats_dict(stats),
            **({"loaded_from": initial_model.info.get("loaded_from")} if initial_model else {}),
        },
    )
    report = {
        "software_version": __version__,
        "method": "NS-N2N (neighbouring-slice Noise2Noise with weight maps)",
        "parameters": config.as_dict(),
        "device": str(device),
        "torch_version": torch.__version__,
        "shape": list(volume.shape),
        "spacing_mm": list(spacing3),
        "modality": modality,
        "normalizer": normalizer.as_dict(),
        "weight_map": {
            "matched_fraction": maps.matched_fraction,
            "threshold_median": float(maps.thresholds.median()) * normalizer.scale,
            "pixel_noise_sigma": maps.pixel_sigma * normalizer.scale,
        },
        "residual_clip": {
            "k_matched": config.residual_clip_k,
            "k_unmatched": config.residual_clip_unmatched_k,
            "unit": "local noise standard deviation (nsn2n.residual_clip)",
        },
        "training": _stats_dict(stats),
        "model": {
            "loaded_from": initial_model.info.get("loaded_from") if initial_model else None,
            "finetune_steps": finetune_steps if initial_model else None,
        },
        "timings_s": timings,
        "noise": {
            "estimator": NOISE_ESTIMATOR,
            "before": noise_before,
            "after": noise_after,
            "unit": "HU" if modality == "CT" else "a.u.",
        },
        "warnings": warnings,
    }
    return DenoiseResult(denoised=denoised, model=model, report=report)


def _stats_dict(stats: TrainingStats) -> dict[str, Any]:
    return {
        "steps": stats.steps,
        "stopped_by": stats.stopped_by,
        "seconds": stats.seconds,
        "final_loss": stats.final_loss,
        "loss_history": [[s, v] for s, v in stats.loss_history],
        "rollbacks": stats.rollbacks,
    }


def fit_supervised_oracle(
    noisy: np.ndarray,
    clean: np.ndarray,
    spacing: Sequence[float],
    modality: str = "CT",
    config: DenoiseConfig | None = None,
) -> DenoiseResult:
    """The benchmark's ceiling: the same network and budget trained with the clean volume as target.

    No residual clip is applied: the clip is a safeguard for the self-supervised model, and the ceiling
    should show what the network can do when it is told the truth.
    """
    config = config or DenoiseConfig()
    modality = modality.upper()
    spacing3, _ = _check_spacing(spacing, config)
    device = select_device(config.device)
    _seed(config)
    valid_np, normalizer, normalised = _prepare(noisy, None, modality)
    clean_norm = normalizer.normalize(clean)
    network = ResidualUNet(config.unet_width, config.unet_depth).to(device)
    t = time.monotonic()
    sampler = PairSampler(
        torch.from_numpy(normalised).to(device),
        None,
        torch.from_numpy(valid_np).to(device),
        crop_size=config.crop_size,
        fill=float((normalizer.fill_value - normalizer.offset) / normalizer.scale),
        seed=config.seed,
        target=torch.from_numpy(clean_norm).to(device),
    )
    stats = train_network(
        network, sampler, supervised_step, config, steps=config.max_steps, device=device, label="oracle"
    )
    out = denoise_slices(
        network,
        normalised,
        device=device,
        batch=config.inference_batch,
        self_ensemble=config.self_ensemble,
        mixed_precision=config.mixed_precision,
    )
    denoised = _finish(normalizer, out, noisy, valid_np, modality)
    report = {
        "device": str(device),
        "training": _stats_dict(stats),
        "spacing_mm": list(spacing3),
        "timings_s": {"train_s": stats.seconds, "total_s": time.monotonic() - t},
    }
    return DenoiseResult(
        denoised=denoised, model=TrainedModel(network, normalizer, modality, {"oracle": True}), report=report
    )
