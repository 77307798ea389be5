"""Write a series so that it appears in the output folder complete or not at all.

MONAI Deploy hosts (and DICOM routers watching a folder) send every file they find in the output
folder; a half-written series must never be visible there. The files are therefore written into a
hidden temporary folder on the same filesystem and moved into place with one ``rename`` (atomic on
POSIX), as ``<output_dir>/<series_folder_name>/``. Files are PS3.10 files (``enforce_file_format``:
preamble, ``DICM`` prefix, File Meta Information).

Temporary folders have random names, so several processes can write into one output folder at the same
time. The temporary folders being written are registered, so that a process that must end at once (a
stop signal that the pipeline did not honour in time) removes them with :func:`remove_temporary_folders`
and leaves nothing half-written beside the output; a caller that can wait passes ``should_stop`` instead,
which is asked before every file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset

__all__ = ["OutputFolderError", "WriteStopped", "remove_temporary_folders", "write_series_atomically"]

logger = logging.getLogger(__name__)


class OutputFolderError(OSError):
    """The output folder cannot be written (not a folder, not writable, target already exists...).

    When an OS error caused it, that error is its ``__cause__`` (with the ``errno``).
    """


class WriteStopped(Exception):
    """The series was not written: ``should_stop`` said stop, or :func:`remove_temporary_folders` was called.
    Its temporary folder has been removed."""


class _TemporaryFolders:
    """The temporary series folders of this process that exist right now.

    A lock orders the three events that matter to a forced exit: a folder is created, renamed into place,
    or everything is removed. Once :meth:`remove_all` has run, no folder can be created or renamed any
    more (:class:`WriteStopped`), so a writer thread still running cannot publish a series afterwards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: set[Path] = set()
        self._closed = False

    def create(self, path: Path) -> None:
        with self._lock:
            if self._closed:
                raise WriteStopped("temporary folders were removed: the process is stopping")
            path.mkdir()
            self._folders.add(path)

    @contextmanager
    def publishing(self, path: Path) -> Iterator[None]:
        """Hold the lock while ``path`` is renamed into place; it is no longer temporary afterwards."""
        with self._lock:
            if self._closed:
                raise WriteStopped("temporary folders were removed: the process is stopping")
            yield
            self._folders.discard(path)

    def discard(self, path: Path) -> None:
        with self._lock:
            self._folders.discard(path)

    def remove_all(self, timeout_s: float) -> list[Path]:
        """Remove every registered folder and refuse new ones; the folders removed."""
        locked = self._lock.acquire(timeout=timeout_s)
        try:
            self._closed = True
            removed = sorted(self._folders)
            for folder in removed:
                shutil.rmtree(folder, ignore_errors=True)
            self._folders.clear()
            return removed
        finally:
            if locked:
                self._lock.release()


_TEMPORARY = _TemporaryFolders()


def remove_temporary_folders(timeout_s: float = 2.0) -> list[Path]:
    """Remove the temporary folders this process is writing, and refuse to create or publish any more.

    For a process that must end now (``os._exit`` after a stop signal): call it last. Waits at most
    ``timeout_s`` for a rename in progress. Returns the folders removed.
    """
    return _TEMPORARY.remove_all(timeout_s)


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _ensure_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputFolderError(f"Output folder {output_dir} cannot be created: a path component is a file") from exc
    except OSError as exc:
        raise OutputFolderError(f"Output folder {output_dir} cannot be created: {exc.strerror or exc}") from exc
    if not _writable_dir(output_dir):
        number = errno.EROFS if _on_read_only_file_system(output_dir) else errno.EACCES
        cause = OSError(number, os.strerror(number), str(output_dir))
        raise OutputFolderError(f"Output folder {output_dir} is not writable") from cause


def _on_read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


#: Errors creating the sibling temporary folder after which the folder inside the output is tried: the
#: parent may be read-only to us while the output folder is not. Any other error (a full disk, an I/O
#: error) would be the same inside.
_TRY_INSIDE = (errno.EACCES, errno.EPERM)


def _make_temp_dir(output_dir: Path) -> Path:
    """A hidden temporary folder beside ``output_dir`` (same filesystem), else inside it."""
    token = secrets.token_hex(8)
    parent = output_dir.parent
    try:
        same_fs = os.stat(parent).st_dev == os.stat(output_dir).st_dev
    except OSError:
        same_fs = False
    if same_fs and parent != output_dir:
        sibling = parent / f".{output_dir.name}.partial-{token}"
        try:
            _TEMPORARY.create(sibling)
            return sibling
        except OSError as exc:
            if exc.errno not in _TRY_INSIDE:
                raise OutputFolderError(
                    f"Cannot create a temporary folder beside {output_dir}: {exc.strerror or exc}"
                ) from exc
            reason = exc.strerror or str(exc)
    else:
        reason = "it is on another filesystem (mount point)" if not same_fs else "there is no parent folder"
    inside = output_dir / f".partial-{token}"
    logger.warning(
        "Cannot create a temporary folder beside %s (%s); using the hidden folder %s inside it",
        output_dir,
        reason,
        inside.name,
    )
    try:
        _TEMPORARY.create(inside)
    except OSError as exc:
        raise OutputFolderError(f"Output folder {output_dir} is not writable: {exc.strerror or exc}") from exc
    return inside


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_files(
    datasets: list[Dataset],
    folder: Path,
    fsync: bool,
    should_stop: Callable[[], bool] | None = None,
    workers: int = 4,
) -> None:
    """``00001.dcm, 00002.dcm, ...`` (at least five digits, so that names sort in order) in ``folder``.

    Files are written by ``workers`` threads: each file's ``fsync`` waits for the disk without holding
    the GIL, so the waits overlap instead of adding up. ``should_stop`` is asked before every file
    (:class:`WriteStopped`). The first error is raised once every thread has stopped (the caller then
    removes the folder).
    """
    from concurrent.futures import ThreadPoolExecutor

    width = max(5, len(str(len(datasets))))

    def write(item: tuple[int, Dataset]) -> None:
        index, ds = item
        if should_stop is not None and should_stop():
            raise WriteStopped(f"stopped before file {index} of {len(datasets)}")
        with open(folder / f"{index:0{width}d}.dcm", "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-write") as pool:
        list(pool.map(write, enumerate(datasets, start=1)))
    if fsync:
        _fsync_dir(folder)


def _checked_arguments(datasets: Iterable[Dataset], series_folder_name: str) -> list[Dataset]:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", series_folder_name or ""):
        raise ValueError(
            f"series_folder_name {series_folder_name!r} must be one plain folder name "
            "(letters, digits, '.', '_', '-'; not starting with '.')"
        )
    datasets = list(datasets)
    if not datasets:
        raise ValueError("no datasets to write")
    for ds in datasets:
        if not isinstance(ds, Dataset):
            raise TypeError(f"expected pydicom Datasets, got {type(ds).__name__}")
    return datasets


def write_series_atomically(
    datasets: Iterable[Dataset],
    output_dir: str | os.PathLike[str],
    series_folder_name: str,
    *,
    fsync: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Write ``datasets`` as ``<output_dir>/<series_folder_name>/00001.dcm, 00002.dcm, ...``.

    The files go to a temporary folder ``<output_dir parent>/.<output_dir name>.partial-<random>``
    and, once all are written (and fsynced when ``fsync``), that folder is renamed to the final
    one. When the sibling cannot be created (parent not writable, or ``output_dir`` is a mount
    point), a hidden ``.partial-<random>`` folder inside ``output_dir`` is used, with a warning. On
    any error the temporary folder is removed and the error re-raised; the final folder then does not
    exist. ``output_dir`` is created if needed.

    Args:
        datasets: the instances, in the order of their file names.
        output_dir: the output folder.
        series_folder_name: one plain folder name (letters, digits, ``.``, ``_``, ``-``).
        fsync: flush every file and folder to disk before and after the rename.
        should_stop: asked before every file; when it returns ``True`` the series is abandoned
            (:class:`WriteStopped`).

    Returns:
        The final folder.

    Raises:
        OutputFolderError: ``output_dir`` cannot be created or written, or
            ``<output_dir>/<series_folder_name>`` already exists (the message names the folder).
        OSError: a file could not be written (a full disk, an I/O error...). pydicom re-raises an error
            inside ``save_as`` as a new exception of the same type without the ``errno`` (and with a
            stack trace in its text); the original error is its ``__cause__``.
        WriteStopped: ``should_stop`` said stop, or the process is removing its temporary folders.
    """
    datasets = _checked_arguments(datasets, series_folder_name)
    output_dir = Path(output_dir).absolute()
    _ensure_output_dir(output_dir)
    final = output_dir / series_folder_name
    if final.exists() or final.is_symlink():
        raise OutputFolderError(f"Output series folder {final} already exists; refusing to overwrite it")

    temp = _make_temp_dir(output_dir)
    try:
        _write_files(datasets, temp, fsync, should_stop)
        try:
            with _TEMPORARY.publishing(temp):
                os.rename(temp, final)
        except OSError as exc:
            if final.exists():
                message = f"Output series folder {final} appeared while writing; not overwritten"
                raise OutputFolderError(message) from exc
            raise OutputFolderError(f"Cannot move the written series into {final}: {exc.strerror or exc}") from exc
        if fsync:
            _fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        _TEMPORARY.discard(temp)
        raise
    logger.info("Wrote %d DICOM file(s) to %s", len(datasets), final)
    return final
