"""Fail fast on input, output and work paths that can never work, before the SDK sees them.

Why: the SDK's argument parser (monai-deploy-app-sdk 4.0.0 ``arg_parser``) rejects a missing ``-i`` or an
``-o``/``-w`` that is a file with an argparse usage error (exit code 2, as if the flags were wrong), and
creates ``-o``/``-w`` with ``mkdir(parents=True)`` unguarded, so an ``-o`` below a regular file ends in a
``NotADirectoryError`` (internal error, exit code 1). And without a check, an unwritable output folder
is only found after training, minutes or hours later. Here the same paths the SDK will use (flags,
else ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_WORKDIR``, else its defaults) are
checked first: a missing input folder is an input error (exit code 3), an output or work folder that
cannot be created or written is an output error (exit code 4), each with a one-line message naming the
folder. Nothing is created here.

Folder relations (:func:`check_folder_relations`, exit code 2, a message naming both folders): the input
folder is only read, and the output folder holds DICOM only, so the folders this run writes into, the
output folder and ``<work>/nsn2n`` (where the run records, models and montages go), must be neither the
input folder, nor inside it, nor hold it; and they must not be one inside the other. Paths are compared
after resolving symbolic links. The work folder itself may hold the input folder: the MAP's default
layout is ``/var/holoscan`` (work) with ``/var/holoscan/input`` and ``/var/holoscan/output`` in it, and
``/var/holoscan/nsn2n`` touches neither.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from operators.exit_status import EXIT_CONFIG, InputError, OutputError, RunError

__all__ = [
    "DEFAULT_WORKDIR",
    "WORK_SUBFOLDER",
    "FolderRelationError",
    "check_folder_relations",
    "check_paths",
    "check_writable_folder",
    "resolve_paths",
]

#: Work folder (under the current folder) when neither ``-w`` nor ``HOLOSCAN_WORKDIR`` is given.
DEFAULT_WORKDIR = "nsn2n-work"
#: The folder of the work folder the application writes into (``operators.series_job.series_workdir``).
WORK_SUBFOLDER = "nsn2n"


class FolderRelationError(RunError):
    """The output or work folder is, is inside, or holds the input folder, or they overlap: a
    configuration (command line) error."""

    exit_code = EXIT_CONFIG


class _Unparsable(Exception):
    pass


class _QuietParser(argparse.ArgumentParser):
    def error(self, message: str):  # the SDK's parser reports bad command lines, not this one
        raise _Unparsable(message)


def resolve_paths(
    argv: Sequence[str], env: Mapping[str, str] | None = None, default_workdir: Path | None = None
) -> tuple[Path, Path, Path] | None:
    """(input, output, workdir) as the SDK's ``AppContext`` will resolve them, or ``None`` when the
    command line cannot be parsed (the SDK then reports it). ``argv[0]`` is the program."""
    env = os.environ if env is None else env
    parser = _QuietParser(add_help=False)
    parser.add_argument("--input", "-i")
    parser.add_argument("--output", "-o")
    parser.add_argument("--workdir", "-w")
    try:
        args, _ = parser.parse_known_args(list(argv[1:]))
    except _Unparsable:
        return None
    input_path = args.input or env.get("HOLOSCAN_INPUT_PATH") or "input"
    output_path = args.output or env.get("HOLOSCAN_OUTPUT_PATH") or "output"
    workdir = args.workdir or env.get("HOLOSCAN_WORKDIR") or default_workdir or Path.cwd() / DEFAULT_WORKDIR
    return Path(input_path).absolute(), Path(output_path).absolute(), Path(workdir).absolute()


def check_writable_folder(path: Path, role: str) -> None:
    """Raise :class:`OutputError` unless ``path`` is, or can be created as, a writable folder."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{role} folder {path} is not a folder (it is a file)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{role} folder {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is not writable)"
        raise OutputError(f"{role} folder {path} cannot be written{where}")


_PHRASES = {"is": "is the same folder as the", "is inside": "is inside the", "holds": "holds the"}


def _relation(a: Path, b: Path) -> str | None:
    """How resolved path ``a`` relates to ``b``: ``"is"``, ``"is inside"``, ``"holds"`` or ``None``."""
    if a == b:
        return "is"
    if a.is_relative_to(b):
        return "is inside"
    if b.is_relative_to(a):
        return "holds"
    return None


def _resolved_note(pairs: list[tuple[Path, Path]]) -> str:
    """`` (resolved: ...)`` when resolving symbolic links changed a path, so the message explains itself."""
    changed = [f"{given} -> {resolved}" for given, resolved in pairs if Path(given) != resolved]
    return f" (symbolic links resolved: {', '.join(changed)})" if changed else ""


def check_folder_relations(input_path: Path, output_path: Path, workdir: Path) -> None:
    """Raise :class:`FolderRelationError` when the folders written into touch the input or each other.

    See the module docstring for the rule; symbolic links are resolved (``Path.resolve``, also for folders
    that do not exist yet).
    """
    source, output, work = (Path(p).resolve() for p in (input_path, output_path, workdir))
    note = _resolved_note([(input_path, source), (output_path, output), (workdir, work)])
    relation = _relation(output, source)
    if relation is not None:
        raise FolderRelationError(
            f"output folder {output_path} {_PHRASES[relation]} input folder {input_path}{note}: the input "
            "folder is only read; choose an output folder outside it"
        )
    if _relation(work / WORK_SUBFOLDER, source) is not None:
        raise FolderRelationError(
            f"work folder {workdir} {_PHRASES[_relation(work, source) or 'holds']} input folder {input_path}"
            f"{note}: the application writes into {Path(workdir) / WORK_SUBFOLDER}, and the input folder is "
            "only read; choose a work folder outside it"
        )
    if output == work:
        raise FolderRelationError(
            f"output folder {output_path} is the same folder as the work folder {workdir}{note}: the output "
            "folder holds DICOM only; choose two different folders"
        )
    relation = _relation(work / WORK_SUBFOLDER, output)
    if relation is not None:
        raise FolderRelationError(
            f"work folder {workdir} {_PHRASES[_relation(work, output) or 'holds']} output folder {output_path}"
            f"{note}: the application writes run records and models into {Path(workdir) / WORK_SUBFOLDER}, and "
            "the output folder holds DICOM only; choose a work folder outside it"
        )


def check_paths(argv: Sequence[str], env: Mapping[str, str] | None = None, default_workdir: Path | None = None) -> None:
    """Raise :class:`InputError` (missing input folder), :class:`FolderRelationError` (folders that touch
    the input or each other) or :class:`OutputError` (output or work folder not writable)."""
    paths = resolve_paths(argv, env, default_workdir)
    if paths is None:
        return
    input_path, output_path, workdir = paths
    if not input_path.is_dir():
        what = "is not a folder" if input_path.exists() else "does not exist"
        raise InputError(f"input folder {what}: {input_path}")
    check_folder_relations(input_path, output_path, workdir)
    check_writable_folder(output_path, "output")
    check_writable_folder(workdir, "work")
