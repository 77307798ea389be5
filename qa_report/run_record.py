"""The per-series run record (``run.json``): build, validate, write.

The record is a JSON-native dict described by ``run_record.schema.json`` (JSON Schema draft 2020-12,
``SCHEMA_VERSION`` "1.4"; records of earlier minor versions validate, since a minor version only adds
optional fields). It deliberately holds **no patient identifiers** (no patient name, patient
ID, birth date, accession number): only UIDs, series descriptions, geometry, parameters, timings and
quality figures, so it can be kept and shared as a processing log.

The application builds it from typed pieces: the source series' identity and geometry, and the
denoiser's typed report (:class:`nsn2n.report.DenoiseReport`, read by attribute, so that this package
never imports torch)::

    record = RunRecord(software_name, version, source=..., parameters=..., volume=..., report=result.report)
    write_run_record(workdir / series_uid / "run.json", record.as_dict())   # validates, writes atomically

:func:`make_run_record` is the one place that knows the record's JSON shape and its defaults.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from .files import atomic_write_bytes

if TYPE_CHECKING:  # only for annotations: this package does not import the denoiser (torch)
    from nsn2n.report import DenoiseReport

    from .residual_structure import ResidualStructure

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "DerivedSeriesInfo",
    "QaReportFiles",
    "RunRecord",
    "RunRecordError",
    "SourceSeriesInfo",
    "StageSeconds",
    "VolumeInfo",
    "downsample_loss_history",
    "load_schema",
    "make_run_record",
    "noise_reduction_percent",
    "to_jsonable",
    "validate_run_record",
    "write_run_record",
]

SCHEMA_VERSION = "1.4"
SCHEMA_PATH = Path(__file__).with_name("run_record.schema.json")
#: Stage names of ``timings_s`` (all required; ``None`` = stage not run).
TIMING_STAGES = ("load", "weight_map", "train", "inference", "noise_estimate", "write", "total")
#: Default number of points kept in ``training.loss_history``.
LOSS_HISTORY_POINTS = 200


class RunRecordError(ValueError):
    """A run record does not match the schema. ``field`` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid run record field '{field}': {message}")
        self.field = field
        self.reason = message


@cache
def load_schema() -> dict[str, Any]:
    """Return the run-record JSON Schema (parsed once)."""
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        schema = json.load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema())


def _dotted(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<record>"


def _error_field(error: ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, Mapping):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            path.append(missing[0])
    elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            path.append(extra[0])
    return _dotted(path)


def _non_finite(obj: Any, path: list[Any]) -> list[Any] | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            found = _non_finite(value, [*path, key])
            if found is not None:
                return found
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            found = _non_finite(value, [*path, i])
            if found is not None:
                return found
    return None


def validate_run_record(record: Mapping[str, Any]) -> None:
    """Validate ``record`` against the schema; return None or raise :class:`RunRecordError`.

    The error names the offending field as a dotted path (e.g. ``noise.before``, ``timings_s.total``,
    ``training.loss_history[3]``) and says what is wrong. NaN/Infinity (not valid JSON) are rejected too.
    Values must already be JSON-native (use :func:`to_jsonable` for numpy scalars, tuples, paths).
    """
    if not isinstance(record, Mapping):
        raise RunRecordError("<record>", f"expected an object (dict), got {type(record).__name__}")
    errors = list(_validator().iter_errors(record))
    if errors:
        error = best_match(errors)
        # Prefer the most specific error: the deepest one, ties broken by the order of best_match.
        deepest = max(errors, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(error.absolute_path) and error.validator in ("oneOf", "anyOf"):
            error = deepest
        message = error.message
        if "then" in error.schema_path:
            message += f" (required when status is {record.get('status')!r})"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        raise RunRecordError(_error_field(error), message)
    bad = _non_finite(record, [])
    if bad is not None:
        raise RunRecordError(_dotted(bad), "NaN/Infinity is not allowed in JSON")


def to_jsonable(obj: Any) -> Any:
    """Return a JSON-native copy of ``obj``: numpy scalars/arrays -> Python numbers/lists, tuples -> lists,
    ``os.PathLike`` -> str, datetimes -> ISO strings; dict keys -> str."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, _dt.datetime | _dt.date):
        return obj.isoformat()
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist):
        return to_jsonable(tolist())
    item = getattr(obj, "item", None)
    if callable(item):
        return to_jsonable(item())
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def write_run_record(path: str | os.PathLike[str], record: Mapping[str, Any], *, validate: bool = True) -> Path:
    """Write ``record`` as pretty JSON to ``path`` atomically and return the path.

    The record is first converted with :func:`to_jsonable` and (unless ``validate=False``) validated, so
    an invalid record raises :class:`RunRecordError` and leaves any existing file untouched. The JSON is
    written to a temporary file in the same folder, fsync'ed, then renamed over ``path``; no temporary
    file remains, also on error. Parent folders are created.
    """
    target = Path(path)
    data = to_jsonable(record)
    if validate:
        validate_run_record(data)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))
    return target


def noise_reduction_percent(before: float | None, after: float | None) -> float | None:
    """``100 * (1 - after / before)``; None when either is missing or ``before`` is not positive."""
    if before is None or after is None or not before > 0:
        return None
    return 100.0 * (1.0 - after / before)


def downsample_loss_history(
    history: Sequence[tuple[int, float]] | Sequence[float], max_points: int = LOSS_HISTORY_POINTS
) -> list[list[Any]]:
    """Reduce a loss history to at most ``max_points`` ``[step, loss]`` pairs for the record.

    ``history`` is either ``[(step, loss), ...]`` or a plain list of losses (step = index + 1). Points are
    picked evenly, always keeping the first and the last; non-finite losses are dropped.
    """
    pairs: list[tuple[int, float]] = []
    for i, item in enumerate(history):
        if isinstance(item, Sequence) and not isinstance(item, str):
            step, loss = int(item[0]), float(item[1])
        else:
            step, loss = i + 1, float(item)  # type: ignore[arg-type]
        if math.isfinite(loss):
            pairs.append((step, loss))
    n = len(pairs)
    if n > max_points >= 2:
        idx = sorted({round(k * (n - 1) / (max_points - 1)) for k in range(max_points)})
        pairs = [pairs[i] for i in idx]
    return [[s, v] for s, v in pairs]


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def make_run_record(
    *,
    software_name: str,
    software_version: str,
    source: Mapping[str, Any],
    device: str,
    parameters: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """Build a run record with defaults for everything not given.

    Defaults: ``schema_version``, ``software {name, version}``, ``created`` = now (UTC),
    ``derived/volume/training/noise/removed_structure`` = None, ``timings_s`` = all stages None except ``total`` 0.0,
    ``model`` = nothing loaded/saved, ``warnings`` = [], ``status`` = "ok", ``error`` = None. Any
    top-level field can be given as a keyword (``volume=...``, ``noise=...``, ``status="failed"``, ...);
    ``timings_s`` and ``model`` given partially are merged into the defaults. The result is converted
    with :func:`to_jsonable` but not validated (it is usually completed later).
    """
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "software": {"name": software_name, "version": software_version},
        "created": _now_iso(),
        "source": dict(source),
        "derived": None,
        "volume": None,
        "device": device,
        "parameters": dict(parameters or {}),
        "timings_s": {stage: None for stage in TIMING_STAGES} | {"total": 0.0},
        "training": None,
        "noise": None,
        "removed_structure": None,
        "model": {"loaded_from": None, "saved_to": None, "finetune_steps": 0},
        "warnings": [],
        "status": "ok",
        "error": None,
    }
    for key in ("timings_s", "model"):
        if key in sections:
            record[key] = record[key] | dict(sections.pop(key))
    unknown = set(sections) - set(load_schema()["properties"])
    if unknown:
        raise RunRecordError(sorted(unknown)[0], "not a run-record field")
    record.update(sections)
    return to_jsonable(record)


# --------------------------------------------------------------------------------------------------
# Typed pieces of a record
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSeriesInfo:
    """The input series (``source`` of the schema); UIDs and a description, no patient identifiers."""

    study_instance_uid: str
    series_instance_uid: str
    series_description: str
    modality: str
    sop_class_uid: str
    n_instances: int
    stack: str | None = None

    @classmethod
    def from_dataset(
        cls, ds: Any, series_instance_uid: str, n_instances: int, stack: str | None = None
    ) -> SourceSeriesInfo:
        """From the first instance of the series (any object with ``get(keyword, default)``, or ``None``);
        ``stack`` labels the 3-D stack of a series that holds several (``None``: not split)."""

        def text(keyword: str) -> str:
            return str(ds.get(keyword, "")) if ds is not None else ""

        return cls(
            study_instance_uid=text("StudyInstanceUID"),
            series_instance_uid=series_instance_uid,
            series_description=text("SeriesDescription"),
            modality=text("Modality"),
            sop_class_uid=text("SOPClassUID"),
            n_instances=n_instances,
            stack=stack,
        )


@dataclass(frozen=True)
class VolumeInfo:
    """Geometry of the volume as processed (``volume`` of the schema).

    Attributes:
        shape: (D, H, W) voxels.
        spacing_mm: (dz, dy, dx).
        slice_gap_max_mm: largest distance between consecutive slice positions; ``None`` for one slice.
        dtype: numpy name of the stored pixel type, e.g. ``int16``.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    slice_gap_max_mm: float | None
    dtype: str


@dataclass(frozen=True)
class DerivedSeriesInfo:
    """The derived series that was written (``derived`` of the schema)."""

    series_instance_uid: str
    series_number: int | None
    series_description: str
    output_folder: str


@dataclass(frozen=True)
class QaReportFiles:
    """Where the QA outputs of the series went (``qa_report`` of the schema)."""

    montage_png: str
    pdf: str
    pdf_series_instance_uid: str


@dataclass(frozen=True)
class StageSeconds:
    """Wall-clock seconds per stage (``timings_s`` of the schema); ``None`` = the stage did not run."""

    load: float | None = None
    weight_map: float | None = None
    train: float | None = None
    inference: float | None = None
    noise_estimate: float | None = None
    write: float | None = None

    @property
    def total(self) -> float:
        """The sum of the stages that ran."""
        stages = (self.load, self.weight_map, self.train, self.inference, self.noise_estimate, self.write)
        return sum(v for v in stages if v is not None)

    def as_dict(self) -> dict[str, float | None]:
        return {stage: getattr(self, stage) for stage in TIMING_STAGES if stage != "total"} | {"total": self.total}


@dataclass(frozen=True)
class RunRecord:
    """The run record of one series, typed; :meth:`as_dict` gives the JSON of ``run_record.schema.json``.

    Attributes:
        software_name, software_version: the application that wrote it.
        source: the input series.
        parameters: the configuration as a flat dict of scalars.
        status: ``"ok"``, ``"skipped"`` or ``"failed"``.
        error: why the series was not processed (``None`` when ``status`` is ``"ok"``).
        volume: geometry, ``None`` when the series could not be loaded.
        report: the denoiser's report, ``None`` when the series was not denoised.
        derived: the derived series, ``None`` when none was written.
        qa_report: the QA outputs, ``None`` when none were written.
        model_saved_to: where the trained model was saved, or ``None``.
        load_s, write_s: seconds of the application's own stages (the denoiser times the others).
        removed_structure: the removed-anatomy check of the output, ``None`` when not measured.
        warnings: the application's warnings (the report's follow them, then the removed-anatomy check's).
    """

    software_name: str
    software_version: str
    source: SourceSeriesInfo
    parameters: Mapping[str, Any]
    status: str = "ok"
    error: str | None = None
    volume: VolumeInfo | None = None
    report: DenoiseReport | None = None
    derived: DerivedSeriesInfo | None = None
    qa_report: QaReportFiles | None = None
    model_saved_to: str | None = None
    load_s: float | None = None
    write_s: float | None = None
    removed_structure: ResidualStructure | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def timings(self) -> StageSeconds:
        """Seconds per stage: the application's load and write, the denoiser's own stages."""
        stages = self.report.timings if self.report is not None else None
        return StageSeconds(
            load=self.load_s,
            weight_map=stages.weight_map if stages else None,
            train=stages.train if stages else None,
            inference=stages.inference if stages else None,
            noise_estimate=stages.noise_estimate if stages else None,
            write=self.write_s,
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as the schema's JSON (not yet validated; :func:`write_run_record` validates)."""
        report = self.report
        sections: dict[str, Any] = {"status": self.status, "error": self.error}
        for name in ("volume", "derived", "qa_report"):
            value = getattr(self, name)
            if value is not None:
                sections[name] = asdict(value)
        warnings = list(self.warnings)
        if report is not None:
            training = report.training
            sections["training"] = (
                None
                if training.steps == 0
                else {
                    "steps": training.steps,
                    "stopped_by": training.stopped_by,
                    "final_loss": training.final_loss,
                    "loss_history": training.loss_history,
                    "rollbacks": training.rollbacks,
                }
            )
            sections["noise"] = asdict(report.noise) | {"rician_correction_sigma": report.rician_correction_sigma}
            sections["method"] = {"post_processing": list(report.post_processing)}
            sections["model"] = {
                "loaded_from": report.model.loaded_from,
                "saved_to": self.model_saved_to,
                "finetune_steps": report.model.finetune_steps or 0,
            }
            warnings += report.warnings
        check = self.removed_structure
        if check is not None:
            sections["removed_structure"] = check.as_dict()
            if check.warning is not None:
                warnings.append(check.warning)
        return make_run_record(
            software_name=self.software_name,
            software_version=self.software_version,
            source=asdict(self.source),
            device=report.device if report is not None else "n/a",
            parameters=self.parameters,
            timings_s=self.timings.as_dict(),
            warnings=warnings,
            **sections,
        )
