"""Application settings: the ``denoise:`` section of app.yaml, overridden by ``NSN2N_*`` environment variables.

One typed object, validated at start-up with a clear message naming the key. Algorithm parameters are the
fields of :class:`nsn2n.DenoiseConfig` (defaults documented there); the application adds the keys below.
Precedence: environment variable ``NSN2N_<KEY>`` > app.yaml ``denoise.<key>`` > default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dicom_series import DEFAULT_SERIES_NUMBER_OFFSET, check_series_description
from nsn2n import ConfigError, DenoiseConfig
from nsn2n.config import coerce_value
from qa_report.residual_structure import DEFAULT_THRESHOLD as REMOVED_STRUCTURE_THRESHOLD

__all__ = ["ENV_PREFIX", "AppSettings", "default_config_path", "load_settings"]

ENV_PREFIX = "NSN2N_"
#: Series Number is IS (at most 2**31 - 1) and the QA report's is source + offset + 1.
_MAX_SERIES_NUMBER_OFFSET = 2**31 - 2


@dataclass(frozen=True)
class AppSettings:
    """Everything the application can be told.

    Attributes:
        algorithm: NS-N2N parameters (:class:`nsn2n.DenoiseConfig`).
        series_description: SeriesDescription of the derived series: 1 to 64 printable ASCII characters
            without backslash (DICOM LO, :func:`dicom_series.check_series_description`).
        series_number_offset: derived SeriesNumber = source SeriesNumber + this, the QA report's + 1
            more (:func:`dicom_series.derived_series_number`).
        strict: ``True``: any series that cannot be processed fails the run and nothing is written;
            ``False``: it is skipped with a warning and the others are written.
        qa_report: write the QA report (DICOM Encapsulated PDF in the output, PNG montage in the workdir).
        finetune_steps: with a saved model (``-m``): 0 = inference only, N = fine-tune N steps first.
        save_model: save the trained model into the workdir for later ``-m`` runs.
        modalities: modalities selected for denoising.
        removed_structure_threshold: the removed-structure index above which a written series gets a
            warning and its QA report the status WARNING (``qa_report.residual_structure``; the default was
            chosen on the benchmark's tuning set, ``bench/residual_flag.py``). A number >= 0.
    """

    algorithm: DenoiseConfig = field(default_factory=DenoiseConfig)
    series_description: str = "NS-N2N denoised (research use)"
    series_number_offset: int = DEFAULT_SERIES_NUMBER_OFFSET
    strict: bool = False
    qa_report: bool = True
    finetune_steps: int = 0
    save_model: bool = True
    modalities: tuple[str, ...] = ("CT", "MR")
    removed_structure_threshold: float = REMOVED_STRUCTURE_THRESHOLD

    def __post_init__(self) -> None:
        try:
            check_series_description(self.series_description)
        except (TypeError, ValueError) as exc:
            raise ConfigError("series_description", str(exc).removeprefix("series_description ")) from None
        for name in ("series_number_offset", "finetune_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {value!r}")
        if self.series_number_offset > _MAX_SERIES_NUMBER_OFFSET:  # the QA report's number must stay an IS value
            limit, value = _MAX_SERIES_NUMBER_OFFSET, self.series_number_offset
            raise ConfigError("series_number_offset", f"must be at most {limit}, got {value}")
        for name in ("strict", "qa_report", "save_model"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        threshold = self.removed_structure_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
            or threshold < 0
        ):
            raise ConfigError("removed_structure_threshold", f"must be a number >= 0, got {threshold!r}")
        object.__setattr__(self, "removed_structure_threshold", float(threshold))
        if not self.modalities or not all(isinstance(m, str) and m.isalnum() for m in self.modalities):
            what = "must be a non-empty list of DICOM modality codes"
            raise ConfigError("modalities", f"{what}, got {self.modalities!r}")

    @classmethod
    def app_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "algorithm")

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.app_keys()}
        out["modalities"] = ",".join(self.modalities)
        return out | self.algorithm.as_dict()


#: Where ``pip install .`` puts app.yaml (pyproject ``[tool.setuptools.data-files]``), under the environment's prefix.
INSTALLED_CONFIG = Path("share") / "nsn2n-denoise" / "app.yaml"


def default_config_path() -> Path:
    """``HOLOSCAN_CONFIG_PATH`` (set in the MAP), else the checkout's app.yaml, else the installed copy
    (``<sys.prefix>/share/nsn2n-denoise/app.yaml``), so that ``python app`` in a checkout and the
    ``nsn2n-denoise`` command of ``pip install .`` read the same file."""
    env = os.environ.get("HOLOSCAN_CONFIG_PATH")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "app.yaml"
    installed = Path(sysconfig.get_path("data")) / INSTALLED_CONFIG
    return installed if not checkout.is_file() and installed.is_file() else checkout


def _read_section(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(None, f"cannot read the configuration file ({exc.strerror})", origin=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(None, f"not valid YAML ({exc})", origin=str(path)) from None
    section = document.get("denoise", {}) if isinstance(document, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(None, "the 'denoise' section must be a mapping of key: value", origin=str(path))
    return dict(section)


def load_settings(config_path: Path | None = None, env: Mapping[str, str] | None = None) -> AppSettings:
    """Read app.yaml's ``denoise:`` section, apply ``NSN2N_*`` overrides, validate.

    Raises:
        ConfigError: unknown key, wrong type or out-of-range value; the message names the key and where
            it came from.
    """
    env = os.environ if env is None else env
    path = config_path or default_config_path()
    values: dict[str, tuple[Any, str]] = {}
    if path.is_file():
        values.update({k: (v, f"{path}: denoise.{k}") for k, v in _read_section(path).items()})
    elif config_path is not None:
        raise ConfigError(None, "configuration file not found", origin=str(path))
    known = set(AppSettings.app_keys()) | set(DenoiseConfig.field_names())
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX:
            values[name[len(ENV_PREFIX) :].lower()] = (raw, f"environment variable {name}")
    unknown = [f"{origin} (unknown key {key!r})" for key, (_, origin) in values.items() if key not in known]
    if unknown:
        raise ConfigError(None, "; ".join(unknown) + f". Known keys: {', '.join(sorted(known))}")
    try:
        algorithm = DenoiseConfig.from_mapping(
            {k: v for k, (v, _) in values.items() if k in DenoiseConfig.field_names()}
        )
        app_values = {k: _convert(k, v) for k, (v, _) in values.items() if k in AppSettings.app_keys()}
        return AppSettings(algorithm=algorithm, **app_values)
    except ConfigError as exc:
        origin = values.get(exc.key, (None, "default"))[1]
        raise ConfigError(exc.key, exc.reason, origin=origin) from None


def _convert(key: str, value: Any) -> Any:
    hint = {f.name: f.type for f in dataclasses.fields(AppSettings)}[key]
    if key == "modalities":
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        return tuple(str(v).upper() for v in value) if isinstance(value, list | tuple) else value
    types_ = {"str": str, "int": int, "bool": bool, "float": float}
    return coerce_value(key, value, types_.get(hint, str))
