"""``main(argv) -> exit code``: settings, logging, signals, the Holoscan run, and the exit-code contract."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.log_level import configure_logging, export_to_holoscan, resolve_log_level, sdk_argv
from app.signals import SignalWatcher, block_stop_signals, restore_signals
from operators.exit_status import (
    EXIT_CONFIG,
    ExitStatus,
    RunError,
    StoppedBySignal,
    StopRequest,
    one_line,
    signal_name,
)

__all__ = ["cli", "main"]

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None, *, unblock_signals: bool = True) -> int:
    """Run the application; returns the process exit code (see ``operators/exit_status.py``).

    SIGTERM and SIGINT are blocked first, before numpy and torch start their threads, and received by a
    watcher thread for the whole run (``app/signals.py``). ``unblock_signals``: unblock them on return,
    for a caller that goes on; :func:`cli` does not, so that a signal during the interpreter's shutdown
    (Holoscan's teardown takes seconds) changes neither the exit code nor the last log line.
    """
    previous = block_stop_signals()
    try:
        argv = list([sys.executable, *sys.argv] if argv is None else argv)
        level = resolve_log_level(argv)
        configure_logging(level)
        export_to_holoscan(level)
        stop, status = StopRequest(), ExitStatus()
        with SignalWatcher(stop, functools.partial(_stop_now, status)):
            return _run(sdk_argv(argv, level), stop, status)
    finally:
        if unblock_signals:
            restore_signals(previous)


def _run(argv: list[str], stop: StopRequest, status: ExitStatus) -> int:
    from app.settings import load_settings
    from nsn2n import ConfigError

    try:
        settings = load_settings()
    except ConfigError as exc:
        log.error("failed (exit code %d): configuration error: %s", EXIT_CONFIG, one_line(str(exc)))
        return EXIT_CONFIG
    from app.paths import check_paths

    try:  # before the SDK parses (and creates) the folders, before importing Holoscan, before any training
        check_paths(argv)
    except RunError as exc:
        log.error("failed (exit code %d): %s", exc.exit_code, one_line(str(exc)))
        return exc.exit_code
    if not stop.requested:
        from app.application import NSN2NDenoiseApp

        app = NSN2NDenoiseApp(argv, settings=settings, stop=stop, status=status)
        try:
            app.run()
        except SystemExit as exc:  # argparse: bad command line (it has printed the usage)
            return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG
        except RunError as exc:
            status.fail(exc)
        except Exception as exc:
            log.debug("unexpected error", exc_info=True)
            status.fail(RunError(f"internal error: {type(exc).__name__}: {one_line(str(exc))}"))
    return _last_line(stop, status)


def _last_line(stop: StopRequest, status: ExitStatus) -> int:
    """Log the run's last line when it did not finish (a failure, or a stop); return the exit code."""
    if stop.requested and not status.finished and (status.error is None or isinstance(status.error, StoppedBySignal)):
        error = stop.error()
        log.error("%s (exit code %d); %s", error, error.exit_code, status.progress())
        return error.exit_code
    if status.error is None and not status.finished:
        status.fail(RunError("internal error: the pipeline stopped before its last series was written"))
    if status.error is not None:
        message = one_line(str(status.error))
        if status.error.keeps_written:
            message += f"; {status.progress()}"
        log.error("failed (exit code %d): %s", status.error.exit_code, message)
    return status.exit_code


def _stop_now(status: ExitStatus, signal_number: int) -> NoReturn:
    """The run did not stop in time after a signal, or a second signal came: end the process now.

    The temporary folders being written are removed first (``dicom_series.remove_temporary_folders``,
    which also refuses to publish a series after it), so nothing half-written stays beside the output.
    """
    writer = sys.modules.get("dicom_series.writer")  # not imported yet: nothing is being written
    for folder in writer.remove_temporary_folders() if writer is not None else []:
        log.warning("removed the temporary folder %s", folder)
    code = 128 + signal_number
    log.error(
        "stopped by signal %s (exit code %d); %s; the run did not stop by itself within the grace time, "
        "so the process was ended",
        signal_name(signal_number),
        code,
        status.progress(),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> NoReturn:
    """``python app`` and the ``nsn2n-denoise`` console command (pyproject ``[project.scripts]``): one entry,
    so both behave the same. ``argv[0]`` is the interpreter, as the SDK's parser expects."""
    sys.exit(main([sys.executable, *sys.argv], unblock_signals=False))
