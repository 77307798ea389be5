"""A study of several series is processed one series at a time: load, denoise, write, release, next.

The application runs (as a user runs it) on a study of three tiny CT series. Its log shows the order:
each derived series is written before the next series is loaded and before its training starts. In
strict mode a bad last series undoes the two series already written: the output ends empty and their
run records say why.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.app_runner import AppRun, run_app
from tests.conftest import CT_NOISE_HU, ct_phantom
from tests.dicom_factory import add_correlated_noise, write_ct_series

pytestmark = pytest.mark.slow

QUICK = {"NSN2N_QA_REPORT": "false", "NSN2N_MAX_STEPS": "10"}
DUPLICATE_POSITIONS = [0.0, 2.5, 5.0, 5.0, 7.5, 10.0]


def _study(root: Path, *, bad_last: bool = False) -> list[str]:
    """Three CT series of one study in folders a, b, c (read, selected and processed in that order)."""
    study, uids = str(generate_uid()), []
    for k, name in enumerate("abc"):
        uid = str(generate_uid())
        volume = add_correlated_noise(ct_phantom(seed=k)[:, :40, :40], CT_NOISE_HU, seed=k)
        extra = {}
        if bad_last and name == "c":
            volume, extra = volume[:6], {"slice_positions": DUPLICATE_POSITIONS}
        write_ct_series(root / name, volume, study_uid=study, series_uid=uid, series_number=k + 1, **extra)
        uids.append(uid)
    return uids


def _line_index(run: AppRun, pattern: str) -> int:
    lines = run.log.splitlines()
    found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert len(found) == 1, f"{pattern!r} in {len(found)} log lines"
    return found[0]


def test_each_series_is_written_before_the_next_one_is_loaded_and_trained(tmp_path: Path) -> None:
    uids = _study(tmp_path / "in")
    run = run_app(tmp_path / "in", tmp_path / "out", tmp_path / "work", env=QUICK)
    assert run.returncode == 0, run.log[-3000:]
    assert len(run.series_folders()) == 3
    events = []
    for uid in uids:
        u = re.escape(uid)
        events.append(
            (
                _line_index(run, rf"series {u} \(.*\): \d+x\d+x\d+ voxels"),
                _line_index(run, rf"series {u} \(.*\): NS-N2N training on this series"),
                _line_index(run, rf"series {u}: derived series [\d.]+ written"),
            )
        )
    for loaded, trained, written in events:
        assert loaded < trained < written
    for (_, _, written), (next_loaded, next_trained, _) in itertools.pairwise(events):
        assert written < next_loaded < next_trained
    assert "done: 3 derived series written" in run.log
    for uid in uids:
        record = json.loads((tmp_path / "work" / "nsn2n" / uid / "run.json").read_text())
        assert record["status"] == "ok" and record["derived"] is not None


def test_strict_mode_removes_the_series_written_before_a_bad_one(tmp_path: Path) -> None:
    uids = _study(tmp_path / "in", bad_last=True)
    run = run_app(tmp_path / "in", tmp_path / "out", tmp_path / "work", env={**QUICK, "NSN2N_STRICT": "true"})
    assert run.returncode == 5, run.log[-3000:]
    assert "failed (exit code 5): strict mode" in run.log and "duplicate slice position" in run.log
    for uid in uids[:2]:  # written, then removed
        assert re.search(rf"series {re.escape(uid)}: derived series [\d.]+ written", run.log)
        record = json.loads((tmp_path / "work" / "nsn2n" / uid / "run.json").read_text())
        assert record["status"] == "failed" and record["derived"] is None
        assert record["error"].startswith("removed because the run failed: strict mode")
    bad = json.loads((tmp_path / "work" / "nsn2n" / uids[2] / "run.json").read_text())
    assert bad["status"] == "failed" and bad["error"].startswith("strict mode: series")
    assert run.log.count("written earlier in this run") == 2
    assert not run.output_files(), "strict mode: nothing may remain in the output"


def test_a_failure_inside_the_pipeline_ends_the_run_with_its_exit_code(tmp_path: Path) -> None:
    """An unusable ``-m`` model is found by the denoise step; the failure travels to the writer, which ends
    the run with exit code 2 and records the series as failed."""
    (uid, *_) = _study(tmp_path / "in")
    models = tmp_path / "models"
    models.mkdir()
    (models / "nsn2n_model.pt").write_bytes(b"not a torch file")
    run = run_app(tmp_path / "in", tmp_path / "out", tmp_path / "work", env=QUICK, extra_args=["-m", str(models)])
    assert run.returncode == 2, run.log[-3000:]
    assert "failed (exit code 2): " in run.log and "not a usable NS-N2N model" in run.log
    assert "Traceback" not in run.log
    assert not run.output_files()
    record = json.loads((tmp_path / "work" / "nsn2n" / uid / "run.json").read_text())
    assert record["status"] == "failed" and "not a usable NS-N2N model" in record["error"]
