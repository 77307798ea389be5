"""dicom_series.writer: all-or-nothing series output."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

import dicom_series.writer
from dicom_series import OutputFolderError, WriteStopped, remove_temporary_folders, write_series_atomically
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


def _errno_in_chain(exc: BaseException | None) -> int | None:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def test_should_stop_abandons_the_series_between_files(tmp_path: Path) -> None:
    asked = []

    def stop_at_third() -> bool:
        asked.append(1)
        return len(asked) == 3

    out = tmp_path / "out"
    with pytest.raises(WriteStopped, match=r"stopped before file \d of 4"):
        write_series_atomically(_datasets(), out, "series", should_stop=stop_at_third)
    assert list(out.iterdir()) == [] and _leftovers(tmp_path, out) == []


def test_a_full_disk_inside_pydicom_keeps_its_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom re-raises a write error inside save_as without errno and with a stack trace in its text;
    the OS error stays reachable as its cause, and nothing is left behind."""

    class FullAfter:
        """A file that accepts ``limit`` bytes, then fails like a full disk."""

        def __init__(self, path: Path, mode: str, limit: int = 3000) -> None:
            self.fh = open(path, mode)  # noqa: SIM115 (closed in __exit__)
            self.limit = limit

        def __enter__(self) -> FullAfter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            if self.fh.tell() + len(data) > self.limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

    monkeypatch.setattr(dicom_series.writer, "open", FullAfter, raising=False)
    out = tmp_path / "out"
    datasets = make_ct_datasets(np.zeros((3, 64, 64), np.float32))  # 8 KiB of pixels per file
    with pytest.raises(OSError) as info:
        write_series_atomically(datasets, out, "series")
    assert info.value.errno is None and "Traceback" in str(info.value), "pydicom's wrapping, as documented"
    assert _errno_in_chain(info.value) == errno.ENOSPC
    assert list(out.iterdir()) == [] and _leftovers(tmp_path, out) == []


def test_a_full_disk_for_the_temporary_folder_is_not_retried_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_mkdir = pathlib.Path.mkdir

    def full(self: Path, *args: Any, **kwargs: Any) -> None:
        if "partial" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", full)
    with pytest.raises(OutputFolderError, match="No space left on device") as info:
        write_series_atomically(_datasets(), tmp_path / "out", "series")
    assert _errno_in_chain(info.value) == errno.ENOSPC
    assert "hidden folder" not in caplog.text


def test_remove_temporary_folders_removes_what_is_being_written_and_refuses_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forced exit from another thread: the folder in progress goes, and no series is published after."""
    monkeypatch.setattr(dicom_series.writer, "_TEMPORARY", dicom_series.writer._TemporaryFolders())
    out = tmp_path / "out"
    writing, removed = threading.Event(), []

    def forced_exit_during_the_second_file() -> bool:
        if writing.is_set():
            thread = threading.Thread(target=lambda: removed.extend(remove_temporary_folders()))
            thread.start()
            thread.join()
        writing.set()
        return False

    with pytest.raises((WriteStopped, OSError)):
        write_series_atomically(_datasets(), out, "series", should_stop=forced_exit_during_the_second_file)
    assert len(removed) == 1 and removed[0].name.startswith(".out.partial-")
    assert list(out.iterdir()) == [] and _leftovers(tmp_path, out) == []
    with pytest.raises(WriteStopped):
        write_series_atomically(_datasets(), out, "later")
    assert list(out.iterdir()) == [] and _leftovers(tmp_path, out) == []


def test_two_writers_into_one_folder_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    barrier = threading.Barrier(2)
    finals: list[Path] = []

    def write(name: str) -> None:
        barrier.wait()
        finals.append(write_series_atomically(_datasets(6), out, name, should_stop=lambda: False))

    threads = [threading.Thread(target=write, args=(f"series-{k}",)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in out.iterdir()) == ["series-0", "series-1"]
    assert all(len(list(final.iterdir())) == 6 for final in finals)
    assert _leftovers(tmp_path, out) == []
