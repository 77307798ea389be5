"""dicom_series.writer: all-or-nothing series output."""

from __future__ import annotations

import logging
import os
import pathlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_series import OutputFolderError, write_series_atomically
from tests.dicom_factory import make_ct_datasets


def _datasets(n: int = 4) -> list[Dataset]:
    return make_ct_datasets(np.zeros((n, 8, 8), np.float32))


class _Exploding(Dataset):
    def save_as(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")


def _leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders if folder.exists() for p in folder.iterdir() if "partial" in p.name)


def test_writes_dicom_files_only(tmp_path: Path) -> None:
    datasets = _datasets()
    final = write_series_atomically(datasets, tmp_path / "out" / "nested", "series-1")
    assert final == tmp_path / "out" / "nested" / "series-1"
    files = sorted(final.iterdir())
    assert [f.name for f in files] == ["00001.dcm", "00002.dcm", "00003.dcm", "00004.dcm"]
    for f, ds in zip(files, datasets, strict=True):
        assert f.read_bytes()[128:132] == b"DICM"
        assert pydicom.dcmread(f, force=False).SOPInstanceUID == ds.SOPInstanceUID
    assert _leftovers(tmp_path / "out", tmp_path / "out" / "nested") == []


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    bad = _Exploding()
    datasets = [*_datasets(3), bad, *_datasets(2)]
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_series_atomically(datasets, out, "series")
    assert not (out / "series").exists()
    assert _leftovers(tmp_path, out) == []
    assert list(out.iterdir()) == []


def test_existing_series_folder_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "keep.dcm").write_bytes(b"x")
    with pytest.raises(OutputFolderError, match="already exists"):
        write_series_atomically(_datasets(), tmp_path, "series")
    assert [p.name for p in (tmp_path / "series").iterdir()] == ["keep.dcm"]


def test_output_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "some_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputFolderError, match=f"Output folder {blocker / 'out'} cannot be created"):
        write_series_atomically(_datasets(), blocker / "out", "series")
    with pytest.raises(OutputFolderError, match="cannot be created"):
        write_series_atomically(_datasets(), blocker, "series")


def test_read_only_output_folder(tmp_path: Path) -> None:
    """chmod 0o500: refused where the OS refuses writes; root ignores the mode bits and may write."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):  # running as root
            assert write_series_atomically(_datasets(), out, "series").is_dir()
        else:
            with pytest.raises(OutputFolderError, match=f"Output folder {out} is not writable"):
                write_series_atomically(_datasets(), out, "series")
            assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_falls_back_to_hidden_folder_inside_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    real_mkdir = pathlib.Path.mkdir

    def no_sibling(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.parent == tmp_path and self.name.startswith(".out.partial-"):
            raise PermissionError(13, "Permission denied")
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", no_sibling)
    with caplog.at_level(logging.WARNING, logger="dicom_series.writer"):
        final = write_series_atomically(_datasets(), out, "series")
    assert "Cannot create a temporary folder beside" in caplog.text
    assert [p.name for p in out.iterdir()] == ["series"]
    assert len(list(final.iterdir())) == 4

    with pytest.raises(RuntimeError):
        write_series_atomically([*_datasets(2), _Exploding()], out, "series2")
    assert [p.name for p in out.iterdir()] == ["series"]


@pytest.mark.parametrize("name", ["", ".hidden", "../escape", "a/b", "x" * 200])
def test_invalid_series_folder_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="series_folder_name"):
        write_series_atomically(_datasets(), tmp_path, name)


def test_nothing_to_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no datasets"):
        write_series_atomically([], tmp_path, "series")
    assert list(tmp_path.iterdir()) == []
