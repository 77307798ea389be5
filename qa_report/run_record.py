"""The per-series run record (``run.json``): build, validate, write.

The record is a JSON-native dict described by ``run_record.schema.json`` (JSON Schema draft 2020-12,
``SCHEMA_VERSION`` "1.0"). It deliberately holds **no patient identifiers** (no patient name, patient
ID, birth date, accession number): only UIDs, series descriptions, geometry, parameters, timings and
quality figures, so it can be kept and shared as a processing log.

Typical use by the application::

    record = make_run_record(software_version=__version__, source={...}, device="cuda:0")
    ...fill in record["volume"], record["timings_s"], record["noise"], ...
    write_run_record(workdir / series_uid / "run.json", record)   # validates, then writes atomically
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from .files import atomic_write_bytes

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "SOFTWARE_NAME",
    "RunRecordError",
    "downsample_loss_history",
    "load_schema",
    "make_run_record",
    "noise_reduction_percent",
    "to_jsonable",
    "validate_run_record",
    "write_run_record",
]

SCHEMA_VERSION = "1.0"
SOFTWARE_NAME = "nsn2n-denoise"
SCHEMA_PATH = Path(__file__).with_name("run_record.schema.json")
#: Stage names of ``timings_s`` (all required; ``None`` = stage not run).
TIMING_STAGES = ("load", "weight_map", "train", "inference", "write", "total")
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
    software_version: str,
    source: Mapping[str, Any],
    device: str,
    parameters: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """Build a run record with defaults for everything not given.

    Defaults: ``schema_version``, ``software {name: nsn2n-denoise, version}``, ``created`` = now (UTC),
    ``derived/volume/training/noise`` = None, ``timings_s`` = all stages None except ``total`` 0.0,
    ``model`` = nothing loaded/saved, ``warnings`` = [], ``status`` = "ok", ``error`` = None. Any
    top-level field can be given as a keyword (``volume=...``, ``noise=...``, ``status="failed"``, ...);
    ``timings_s`` and ``model`` given partially are merged into the defaults. The result is converted
    with :func:`to_jsonable` but not validated (it is usually completed later).
    """
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "software": {"name": SOFTWARE_NAME, "version": software_version},
        "created": _now_iso(),
        "source": dict(source),
        "derived": None,
        "volume": None,
        "device": device,
        "parameters": dict(parameters or {}),
        "timings_s": {stage: None for stage in TIMING_STAGES} | {"total": 0.0},
        "training": None,
        "noise": None,
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
