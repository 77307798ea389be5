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
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from operators.exit_status import InputError, OutputError

__all__ = ["DEFAULT_WORKDIR", "check_paths", "check_writable_folder", "resolve_paths"]

#: Work folder (under the current folder) when neither ``-w`` nor ``HOLOSCAN_WORKDIR`` is given.
DEFAULT_WORKDIR = "nsn2n-work"


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


def check_paths(argv: Sequence[str], env: Mapping[str, str] | None = None, default_workdir: Path | None = None) -> None:
    """Raise :class:`InputError` (missing input folder) or :class:`OutputError` (output or work folder)."""
    paths = resolve_paths(argv, env, default_workdir)
    if paths is None:
        return
    input_path, output_path, workdir = paths
    if not input_path.is_dir():
        what = "is not a folder" if input_path.exists() else "does not exist"
        raise InputError(f"input folder {what}: {input_path}")
    check_writable_folder(output_path, "output")
    check_writable_folder(workdir, "work")
