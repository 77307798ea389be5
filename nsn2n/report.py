"""What :func:`nsn2n.denoise_volume` reports about a run: frozen dataclasses, one JSON conversion.

Every figure a caller may log, store or print (parameters, device, training, timings, weight maps, noise,
warnings) is a typed field here, so that the application and the QA report read the same names instead of
keys of a nested dict. :meth:`DenoiseReport.as_dict` is the one conversion to JSON-native values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import DenoiseConfig
from .intensity import IntensityNormalizer
from .training import TrainingStats

__all__ = [
    "DenoiseReport",
    "ModelProvenance",
    "NoiseEstimate",
    "NoiseModelStats",
    "ResidualClipLimits",
    "StageTimings",
    "WeightMapStats",
]

#: The one-line name of the method per training formulation (:attr:`DenoiseConfig.formulation`).
METHODS = {
    "recorrupted": "NS-N2N, recorrupted formulation (the slice as its own target with synthetic noise from the "
    "series' noise model, neighbouring slices as context)",
    "paper": "NS-N2N (neighbouring-slice Noise2Noise with weight maps)",
}


@dataclass(frozen=True)
class WeightMapStats:
    """How much of the volume the weight maps mark as matched.

    Attributes:
        matched_fraction: fraction of the valid pixels of all neighbouring pairs that are matched.
        threshold_median: median over the pairs of the matching threshold, in the input's units.
        pixel_noise_sigma: pixel noise sigma that scales the guide's range kernel, in the input's units.
    """

    matched_fraction: float
    threshold_median: float
    pixel_noise_sigma: float


@dataclass(frozen=True)
class NoiseModelStats:
    """The input's noise model (:mod:`nsn2n.noise_model`), summarised.

    Attributes:
        level: root mean square of the local noise sigma over the foreground, in the input's units.
        lag1_correlation: correlation of horizontally neighbouring noise pixels (0 = white noise).
        source: which weight maps chose the pixels it was measured on (``"outer pairs"`` or
            ``"neighbouring pairs"``).
        unit: ``"HU"`` for CT, ``"a.u."`` otherwise.
    """

    level: float
    lag1_correlation: float
    source: str
    unit: str


@dataclass(frozen=True)
class ResidualClipLimits:
    """The residual clip's limits (see :mod:`nsn2n.residual_clip`); ``None`` = no limit for that class.

    Attributes:
        k_matched: limit for pixels matching both neighbouring slices.
        k_unmatched: limit for pixels matching at most one.
        unit: what ``k`` multiplies.
    """

    k_matched: float | None
    k_unmatched: float | None
    unit: str = "local noise standard deviation (nsn2n.residual_clip)"


@dataclass(frozen=True)
class ModelProvenance:
    """Where the network came from.

    Attributes:
        loaded_from: the model file given as ``initial_model``, or ``None`` when trained from scratch.
        finetune_steps: fine-tuning steps of a loaded model, ``None`` when trained from scratch.
    """

    loaded_from: str | None = None
    finetune_steps: int | None = None


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock seconds of each stage of :func:`nsn2n.denoise_volume`.

    Attributes:
        weight_map: weight maps and the noise model of the input.
        train: training (or fine-tuning; near zero without it).
        inference: inference, residual clip and the return to input units.
        noise_estimate: the error estimate after denoising (:mod:`nsn2n.error_estimate`).
        total: the whole call.
    """

    weight_map: float
    train: float
    inference: float
    noise_estimate: float
    total: float


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise of the input and the remaining error of the output (see :func:`nsn2n.api.denoise_volume`).

    Attributes:
        estimator: name of the estimator.
        before: noise of the input.
        after: estimated RMS error of the output on the same pixels; ``None`` when the estimate is not
            usable (it came out negative: the input's noise level was over-estimated).
        unit: ``"HU"`` for CT, ``"a.u."`` otherwise.
    """

    estimator: str
    before: float
    after: float | None
    unit: str

    @property
    def reduction_percent(self) -> float:
        """``100 * (1 - after / before)``; NaN when ``after`` is unknown or ``before`` is not positive."""
        if self.after is None or not self.before > 0:
            return float("nan")
        return 100 * (1 - self.after / self.before)


@dataclass(frozen=True)
class DenoiseReport:
    """Everything a caller may record about one :func:`nsn2n.denoise_volume` call.

    Attributes:
        software_version: ``nsn2n.__version__``.
        method: one-line name of the method.
        parameters: the configuration used.
        device: torch device the network ran on, e.g. ``"cpu"`` or ``"cuda"``.
        torch_version: ``torch.__version__``.
        shape: (D, H, W) of the volume.
        spacing_mm: (dz, dy, dx) in mm.
        modality: DICOM modality, upper case.
        normalizer: the intensity map between input and network units.
        weight_map: weight-map statistics.
        noise_model: the input's noise model.
        formulation: what the network was trained with (:attr:`DenoiseConfig.formulation`).
        residual_clip: the residual clip's limits.
        training: what training did (``steps == 0`` when a loaded model was used as it is).
        model: where the network came from.
        timings: seconds per stage.
        noise: noise before and after.
        warnings: non-fatal findings, one line each (thick slices, few matched pixels, rollbacks).
        rician_correction_sigma: the noise level (input units, RMS over the foreground) with which the
            output was mapped from the expected magnitude to the signal (:mod:`nsn2n.rician`; MR
            magnitude series with ``rician_bias_correction``); ``None``: not corrected.
        post_processing: one line per step applied to the network's output, in order (residual clip,
            non-local means blend, collaborative Wiener stage, Rician correction: those the run used).
    """

    software_version: str
    method: str
    parameters: DenoiseConfig
    device: str
    torch_version: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    modality: str
    normalizer: IntensityNormalizer
    weight_map: WeightMapStats
    noise_model: NoiseModelStats
    formulation: str
    residual_clip: ResidualClipLimits
    training: TrainingStats
    model: ModelProvenance
    timings: StageTimings
    noise: NoiseEstimate
    warnings: tuple[str, ...]
    rician_correction_sigma: float | None = None
    post_processing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-native values (nested dicts, lists, numbers, strings, ``None``)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value
