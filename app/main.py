"""``main(argv) -> exit code``: settings, logging, the Holoscan run, and the exit-code contract."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.log_level import configure_logging, export_to_holoscan, resolve_log_level, sdk_argv
from nsn2n import ConfigError
from operators.exit_status import EXIT_CONFIG, RunError

__all__ = ["cli", "main"]

log = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    """The failure message as one line: hosts grep the last log line, and a message from a third-party
    exception (pydicom, torch, OS) may hold newlines."""
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the process exit code (see ``operators/exit_status.py``)."""
    argv = list([sys.executable, *sys.argv] if argv is None else argv)
    level = resolve_log_level(argv)
    configure_logging(level)
    export_to_holoscan(level)
    argv = sdk_argv(argv, level)
    from app.settings import load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        log.error("failed (exit code %d): configuration error: %s", EXIT_CONFIG, _one_line(exc))
        return EXIT_CONFIG
    from app.paths import check_paths

    try:  # before the SDK parses (and creates) the folders, before importing Holoscan, before any training
        check_paths(argv)
    except RunError as exc:
        log.error("failed (exit code %d): %s", exc.exit_code, _one_line(exc))
        return exc.exit_code
    from app.application import NSN2NDenoiseApp

    app = NSN2NDenoiseApp(argv, settings=settings)
    try:
        app.run()
    except SystemExit as exc:  # argparse: bad command line (it has printed the usage)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG
    except RunError as exc:
        app.status.fail(exc)
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        app.status.fail(RunError(f"internal error: {type(exc).__name__}: {exc}"))
    if app.status.error is None and not app.status.finished:
        app.status.fail(RunError("internal error: the pipeline stopped before its last series was written"))
    if app.status.error is not None:
        log.error("failed (exit code %d): %s", app.status.error.exit_code, _one_line(app.status.error))
    return app.status.exit_code


def cli() -> NoReturn:
    """``python app`` and the ``nsn2n-denoise`` console command (pyproject ``[project.scripts]``): one entry,
    so both behave the same. ``argv[0]`` is the interpreter, as the SDK's parser expects."""
    sys.exit(main([sys.executable, *sys.argv]))
