"""``main(argv) -> exit code``: settings, logging, the Holoscan run, and the exit-code contract."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from nsn2n import ConfigError
from operators.exit_status import EXIT_CONFIG, RunError

__all__ = ["main"]

log = logging.getLogger("nsn2n.app")


def _configure_logging() -> None:
    """Plain timestamped lines on stderr (container logs); the SDK may add its own handlers later."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("nsn2n", "nsn2n.app"):
        logging.getLogger(name).setLevel(logging.INFO)
    for noisy in ("fontTools", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _one_line(exc: BaseException) -> str:
    """The failure message as one line: hosts grep the last log line, and a message from a third-party
    exception (pydicom, torch, OS) may hold newlines."""
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the process exit code (see ``operators/exit_status.py``)."""
    _configure_logging()
    argv = list([sys.executable, *sys.argv] if argv is None else argv)
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
