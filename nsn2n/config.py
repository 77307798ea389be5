"""The one typed configuration object of the NS-N2N denoiser, with documented defaults.

Every field is validated at construction (:class:`ConfigError` names the field and the reason), so a
bad value in ``app.yaml`` or an ``NSN2N_*`` environment variable fails at start-up, not an hour into
training. The defaults are the values ``bench/quality.py`` measures (results in ``bench/``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "DenoiseConfig", "usable_cpu_count"]


def usable_cpu_count() -> int:
    """CPU cores this process may run on: its affinity mask (``sched_getaffinity``), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class ConfigError(ValueError):
    """A configuration value is invalid.

    The message is ``"[<origin>: ]<key>: <reason>"``, one line that a user can act on.

    Args:
        key: the offending field, or ``None`` when no single field is at fault (an unreadable file).
        reason: what is wrong and what is allowed.
        origin: where the value came from (a file and key, an environment variable), when known.

    Attributes:
        key, reason, origin: as given.
    """

    def __init__(self, key: str | None, reason: str, *, origin: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.origin = origin
        text = f"{key}: {reason}" if key else reason
        super().__init__(f"{origin}: {text}" if origin else text)


Device = Literal["auto", "cpu", "cuda"]
Formulation = Literal["recorrupted", "paper"]

#: :attr:`DenoiseConfig.nonlocal_weight` when it is ``None``, per modality (others: the MR value;
#: :meth:`DenoiseConfig.nonlocal_weight_for`).
NONLOCAL_WEIGHT_DEFAULT: dict[str, float] = {"CT": 0.35, "MR": 0.7}


@dataclass(frozen=True)
class DenoiseConfig:
    """Parameters of NS-N2N training and inference.

    Training budget
        max_steps: optimiser steps (each step sees ``batch_size`` crops).
            Far longer training over-fits the one volume (the network starts to learn its noise);
            ``bench/quality.py --steps`` measures the curve.
        time_budget_s: wall-clock cap on training in seconds; ``None`` or 0 = no cap. Training stops
            at whichever of ``max_steps`` / ``time_budget_s`` comes first; the learning-rate schedule
            follows the elapsed fraction of the budget so a cut-short run still ends annealed.
        batch_size: crops per step (recorrupted: slices with their context; paper: neighbouring pairs).
        crop_size: side of the random square crops (pixels); clipped to the slice size.
        learning_rate, weight_decay: AdamW; the learning rate follows a cosine decay to 5 % of it
            after a short linear warm-up.

    Formulation (what the network is trained to predict; see :mod:`nsn2n.training`)
        formulation: ``"recorrupted"``: the network sees the slice with extra synthetic noise drawn from
            the volume's own noise model (:mod:`nsn2n.noise_model`) and ``context_slices`` neighbours on
            either side, and learns to predict the slice with that noise subtracted (recorrupted-to-
            recorrupted): the target shows the slice's own anatomy, so changes of anatomy between slices
            cannot teach it to blur, and its noise is independent of the input's. ``"paper"``: the
            NS-N2N formulation of the paper (single-slice input, the neighbouring slice as the target
            where the weight map says the two match, regional-consistency and inter-slice-continuity
            losses).
        context_slices: neighbouring slices on either side in the network's input (``"recorrupted"``
            only; 0 = a plain 2-D denoiser).
        recorruption_alpha: scale of the synthetic noise: the input gets ``+alpha * z``, the target
            ``-z / alpha`` (``"recorrupted"`` only). Small values keep the input close to the real
            noise level; the target's noise grows as ``1 / alpha``.
        recorruption_sigma_scale: level of the synthetic noise ``z`` relative to the measured noise level
            (``"recorrupted"`` only). The errors are not symmetric: with ``z`` weaker than the real noise
            the target keeps a little of the input's noise (the network removes somewhat less than all
            of it); with ``z`` stronger, the input's and the target's noise are anti-correlated and the
            network learns to remove more than the noise, i.e. to blur. ``None`` (default): 0.9 for CT,
            1.0 otherwise. On CT the measured level errs high (anatomy that changes between slices
            leaks into their differences, most on thick slices), so the scale errs low; on MR the
            level in tissue is measured within a few per cent, so it is used as measured. Both chosen
            on the benchmark's tuning set.

    Loss of the ``"paper"`` formulation (see :mod:`nsn2n.losses`)
        lambda_rc: weight of the regional consistency loss (paper value 0.5).
        lambda_ic: weight of the inter-slice continuity loss (paper value 1.0).
        use_weight_map: ``False`` replaces the weight map by ones: plain neighbour Noise2Noise, the
            ablation the benchmark compares against.

    Weight map (see :mod:`nsn2n.weight_map`)
        lowpass_sigma_px: spatial sigma (pixels) of the edge-preserving (bilateral) low-pass guide.
        guide_range_k: range sigma of the bilateral guide, in units of the pixel noise sigma.
        median_size: side of the median filter applied after the bilateral filter (odd, 1 = none).
        threshold_k: a pixel is matched when the low-pass residual is within ``threshold_k`` robust
            standard deviations of the residual's noise (threshold adapts to the noise level).

    Network (see :mod:`nsn2n.unet`)
        unet_width: channels at the first level (doubled at each level down).
        unet_depth: number of down-sampling levels.

    Inference
        inference_batch: slices per forward pass (bounds memory).
        self_ensemble: average the network's output over the 8 flips and rotations of each slice (8x
            the inference and noise-estimate passes). ``None`` (default): on for MR, and for every
            modality on a GPU; off for CT on a CPU, where series run to hundreds of 512 x 512 slices and
            the 8 passes would add minutes on a few cores. Chosen on the benchmark's tuning set (it
            gained 0.09 to 0.19 dB on every MR and CT case) at its cost. See :meth:`self_ensemble_for`.
        residual_clip_k: safeguard (see :mod:`nsn2n.residual_clip`): a pixel that matches both its
            neighbouring slices is changed by at most ``residual_clip_k`` local noise standard
            deviations; ``None`` = no limit there.
        residual_clip_unmatched_k: the same limit for pixels that match at most one neighbour, where
            the neighbours show other anatomy (the paper formulation's target is biased there, the
            recorrupted one's context misleading); ``None`` = no limit there. Default 3, the same as
            matched pixels: with the non-local means blend the tighter 1.5 of earlier versions kept
            noise at edges and on thick slices (it cost 0.08 to 0.10 dB on every MR tuning case and
            nothing on CT; bench/README.md, 2026-12-01).
        rician_bias_correction: on an MR magnitude series (no negative values), map each denoised
            pixel, an estimate of the expected magnitude, to the signal whose Rician mean it is, with the
            noise model's level capped at an in-plane bound (:mod:`nsn2n.rician`): a denoiser that learns
            from noisy data alone keeps the noise floor (1.25 sigma in air, less in dark tissue). Other
            series are never changed.
        nonlocal_weight: the output is ``(1 - w)`` times the network's output plus ``w`` times a 3-D
            non-local means of the input (:mod:`nsn2n.nonlocal_means`; noise level: the noise model's
            local one on CT, one capped level on MR), after the residual clip and before the Rician
            correction; 0 = the network alone. The network and the filter make different errors, so
            the blend beats either. ``None`` (default): 0.35 on CT, 0.7 on MR and other modalities
            (:data:`NONLOCAL_WEIGHT_DEFAULT`), chosen on the benchmark's tuning set, where every case
            gained (0.27 to 2.0 dB; on MR, with the small patch on thin slices, 0.7 beat 0.5 and 0.6
            on all three cases), on every device: on 2 CPU cores
            it adds about 2 minutes to a 300-slice 512 x 512 CT series (bench/results/speed-cpu-2core.md),
            for 0.1 to 0.4 dB in the body and 0.5 to 0.6 dB in the soft-tissue window. See
            :meth:`nonlocal_weight_for`.
        nonlocal_h_factor: width of the non-local means' weights in units of the local noise sigma
            (0.8: better than 0.55 and 1.0 on the tuning set's blends).
        nonlocal_whitening: where the noise is correlated in-plane (CT) and the patches span several
            slices, compare the filter's patches whitened by the noise model's correlation. Off by
            default: on the report set it raised the thin and 4.5 mm CT's PSNR by 0.1 dB (body and
            soft-tissue window) but lowered their edge-band SSIM by 0.006 to 0.007, further behind BM4D
            (bench/README.md, 2026-11-30).
        collaborative_wiener: after the blend, filter the input once more with the output so far as the
            pilot (:mod:`nsn2n.collaborative_wiener`, BM3D's second step: groups of alike 8 x 8 blocks
            from the slice and its neighbours, shrunk jointly by the pilot's Wiener gain; ``true``
            without a blend: the network's output is the pilot). ``None`` (default): after a blend,
            where the noise is white in-plane and the non-local means compares single-slice patches,
            i.e. thick MR (:func:`nsn2n.api._wiener_applies`): there it raised the 5 mm MR's brain
            PSNR by 0.74 to 0.77 dB on the report set; it lost up to 0.26 dB on thin MR and thin CT
            and 0.4 to 0.7 dB on thick MR with in-plane correlated noise (bench/README.md,
            2026-12-01). It adds about 0.7 s per 256 x 256 slice and 3.4 s per 512 x 512 slice on 2
            CPU cores, and about twice that to the noise estimate.

    Runtime
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        mixed_precision: bf16 autocast on CUDA and on CPUs with native bf16 instructions (AVX512-BF16 or
            AMX); elsewhere float32.
        seed: seed of every random choice (crops, augmentation, initialisation).
        num_threads: CPU threads for torch; ``None`` = the cores this process may run on (its CPU
            affinity, :func:`usable_cpu_count`), not the machine's: a container or a job pinned to some
            cores gets that many threads, and more threads than cores would make torch's threads wait
            for one another at every operation. See :attr:`DenoiseConfig.cpu_threads`.
        log_every_s: seconds between progress lines.
        max_slice_gap_mm: neighbours farther apart than this are warned about: on thick or sparse
            slices fewer regions match, so the noise model rests on fewer pixels and the neighbours help
            less (as context, or as the paper formulation's target).
    """

    max_steps: int = 400
    time_budget_s: float | None = None
    batch_size: int = 24
    crop_size: int = 96
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5

    formulation: Formulation = "recorrupted"
    context_slices: int = 1
    recorruption_alpha: float = 0.5
    recorruption_sigma_scale: float | None = None

    lambda_rc: float = 0.5
    lambda_ic: float = 1.0
    use_weight_map: bool = True

    lowpass_sigma_px: float = 2.0
    guide_range_k: float = 2.0
    median_size: int = 5
    threshold_k: float = 3.0

    unet_width: int = 16
    unet_depth: int = 3

    inference_batch: int = 8
    self_ensemble: bool | None = None
    residual_clip_k: float | None = 3.0
    residual_clip_unmatched_k: float | None = 3.0
    rician_bias_correction: bool = True
    nonlocal_weight: float | None = None
    nonlocal_h_factor: float = 0.8
    nonlocal_whitening: bool = False
    collaborative_wiener: bool | None = None

    device: Device = "auto"
    mixed_precision: bool = True
    seed: int = 0
    num_threads: int | None = None
    log_every_s: float = 5.0
    max_slice_gap_mm: float = 3.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _hints()[f.name])
        _positive_int(self, "max_steps", "batch_size", "unet_width", "unet_depth", "inference_batch")
        if self.crop_size < 16:
            raise ConfigError("crop_size", f"must be >= 16 pixels, got {self.crop_size}")
        _positive_float(
            self, "learning_rate", "lowpass_sigma_px", "guide_range_k", "threshold_k", "log_every_s", "max_slice_gap_mm"
        )
        _non_negative_float(self, "weight_decay", "lambda_rc", "lambda_ic")
        if not 0 <= self.context_slices <= 4:
            raise ConfigError("context_slices", f"must be 0 to 4 slices on either side, got {self.context_slices}")
        scale = self.recorruption_sigma_scale
        if scale is not None and not (math.isfinite(scale) and 0 < scale <= 2):
            raise ConfigError("recorruption_sigma_scale", f"must be in (0, 2], got {self.recorruption_sigma_scale}")
        if not (math.isfinite(self.recorruption_alpha) and 0 < self.recorruption_alpha <= 2):
            raise ConfigError("recorruption_alpha", f"must be in (0, 2], got {self.recorruption_alpha}")
        if self.time_budget_s is not None and (not math.isfinite(self.time_budget_s) or self.time_budget_s < 0):
            raise ConfigError("time_budget_s", f"must be >= 0 seconds (0 = no cap), got {self.time_budget_s}")
        if self.median_size < 1 or self.median_size % 2 == 0:
            raise ConfigError("median_size", f"must be an odd number >= 1, got {self.median_size}")
        if self.unet_depth > 6:
            raise ConfigError("unet_depth", f"at most 6 levels, got {self.unet_depth}")
        for name in ("residual_clip_k", "residual_clip_unmatched_k"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ConfigError(name, f"must be a positive number or null, got {value}")
        weight = self.nonlocal_weight
        if weight is not None and not (math.isfinite(weight) and 0 <= weight <= 1):
            raise ConfigError("nonlocal_weight", f"must be in [0, 1] or null, got {weight}")
        if not (math.isfinite(self.nonlocal_h_factor) and 0 < self.nonlocal_h_factor <= 5):
            raise ConfigError("nonlocal_h_factor", f"must be in (0, 5], got {self.nonlocal_h_factor}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError("num_threads", f"must be >= 1 or null, got {self.num_threads}")

    def self_ensemble_for(self, modality: str, device_type: str) -> bool:
        """:attr:`self_ensemble`, or its default when it is ``None``: on for MR and on a GPU
        (``device_type`` ``"cuda"``, as ``torch.device.type``), off for CT on a CPU."""
        if self.self_ensemble is not None:
            return self.self_ensemble
        return modality.upper() != "CT" or device_type == "cuda"

    def nonlocal_weight_for(self, modality: str) -> float:
        """:attr:`nonlocal_weight`, or its default when it is ``None``: :data:`NONLOCAL_WEIGHT_DEFAULT` of the
        modality (MR's for modalities without their own)."""
        if self.nonlocal_weight is not None:
            return self.nonlocal_weight
        return NONLOCAL_WEIGHT_DEFAULT.get(modality.upper(), NONLOCAL_WEIGHT_DEFAULT["MR"])

    def sigma_scale_for(self, modality: str) -> float:
        """:attr:`recorruption_sigma_scale`, or its modality default when it is ``None``."""
        if self.recorruption_sigma_scale is not None:
            return self.recorruption_sigma_scale
        return 0.9 if modality.upper() == "CT" else 1.0

    @property
    def input_context(self) -> int:
        """Neighbouring slices on either side that a network trained with this configuration reads:
        :attr:`context_slices` for the ``"recorrupted"`` formulation, 0 for the paper's single-slice one."""
        return self.context_slices if self.formulation == "recorrupted" else 0

    @property
    def cpu_threads(self) -> int:
        """Torch CPU threads to use: ``num_threads``, or the cores this process may run on."""
        return self.num_threads or usable_cpu_count()

    @property
    def training_time_cap(self) -> float | None:
        """Wall-clock cap on training in seconds, or ``None`` when there is none."""
        return self.time_budget_s if self.time_budget_s else None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "configuration") -> DenoiseConfig:
        """Build from a mapping (app.yaml section, parsed env vars); unknown keys are an error.

        String values (from environment variables) are converted to the field's type.
        """
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                None, f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(cls.field_names())}", origin=source
            )
        hints = _hints()
        converted = {k: coerce_value(k, v, hints[k]) for k, v in values.items()}
        return cls(**converted)

    def replace(self, **changes: Any) -> DenoiseConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _hints() -> dict[str, Any]:
    return get_type_hints(DenoiseConfig)


def _check_type(name: str, value: Any, hint: Any) -> None:
    allowed = _allowed_types(hint)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(name, f"expected {_describe(hint)}, got boolean {value!r}")
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            raise ConfigError(name, f"must be one of {', '.join(map(str, get_args(hint)))}, got {value!r}")
        return
    if not isinstance(value, tuple(allowed)):
        raise ConfigError(name, f"expected {_describe(hint)}, got {type(value).__name__} {value!r}")


def _allowed_types(hint: Any) -> list[type]:
    if get_origin(hint) in (typing.Union, types.UnionType):
        out: list[type] = []
        for arg in get_args(hint):
            out.extend(_allowed_types(arg))
        return out
    if get_origin(hint) is Literal:
        return [str]
    if hint is float:
        return [float, int]
    if hint is type(None):
        return [type(None)]
    return [hint]


def _describe(hint: Any) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _allowed_types(hint))


def coerce_value(name: str, value: Any, hint: Any) -> Any:
    """Convert a string (environment variable) to the type of a field; other values pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    allowed = _allowed_types(hint)
    if type(None) in allowed and text.lower() in {"", "none", "null"}:
        return None
    if get_origin(hint) is Literal:
        return text.lower()
    if bool in allowed:
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(name, f"expected true/false, got {value!r}")
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                if kind is int and float in allowed:
                    continue
                raise ConfigError(name, f"expected {_describe(hint)}, got {value!r}") from None
    return text


def _positive_int(cfg: DenoiseConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(name, f"must be >= 1, got {getattr(cfg, name)}")


def _positive_float(cfg: DenoiseConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(name, f"must be a positive number, got {value}")


def _non_negative_float(cfg: DenoiseConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(name, f"must be >= 0, got {value}")
