"""The run's log level: ``-l LEVEL``, else ``HOLOSCAN_LOG_LEVEL``, else INFO; applied to the application.

Rule: one level decides what the application's own loggers print (every module logs through
``logging.getLogger(__name__)``, so setting the level on each package of
:data:`app.packages.APPLICATION_PACKAGES` covers all of them), what the MONAI Deploy SDK's loggers print
(the SDK's parser receives the same level as ``-l``) and, when it was given as ``-l``, what Holoscan's own
(C++) logger prints (it reads ``HOLOSCAN_LOG_LEVEL`` when the application starts). ``-l DEBUG`` therefore
shows the traceback of an internal error, and ``-l WARNING`` leaves only warnings and errors: no
progress lines, no Holoscan start-up lines.

Why the translation: the SDK's parser (monai-deploy-app-sdk 4.0.0 ``arg_parser``) accepts only
``DEBUG, INFO, WARN, ERROR, CRITICAL`` and exits with a usage error on ``WARNING``, Python's own name;
Holoscan's ``HOLOSCAN_LOG_LEVEL`` adds ``TRACE`` and ``OFF``. All of them are accepted here, in any case,
and handed to the SDK in its spelling.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from app.packages import APPLICATION_PACKAGES

__all__ = ["LOG_FORMAT", "LogLevel", "configure_logging", "export_to_holoscan", "resolve_log_level", "sdk_argv"]

#: Plain timestamped lines on stderr (container logs); the SDK replaces the handler with its own format.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Accepted names -> (Python logging level, the SDK's ``-l`` spelling).
_LEVELS: dict[str, tuple[int, str]] = {
    "TRACE": (logging.DEBUG, "DEBUG"),
    "DEBUG": (logging.DEBUG, "DEBUG"),
    "INFO": (logging.INFO, "INFO"),
    "WARN": (logging.WARNING, "WARN"),
    "WARNING": (logging.WARNING, "WARN"),
    "ERROR": (logging.ERROR, "ERROR"),
    "CRITICAL": (logging.CRITICAL, "CRITICAL"),
    "OFF": (logging.CRITICAL + 1, "CRITICAL"),
}
#: Third-party loggers that flood DEBUG with font and image-plugin details; kept at WARNING.
_NOISY_LOGGERS = ("fontTools", "matplotlib", "PIL")


@dataclass(frozen=True)
class LogLevel:
    """The resolved level.

    Attributes:
        level: Python logging level for the application's loggers.
        sdk_name: the same level as the SDK's ``-l`` accepts it.
        source: where it came from (``"-l"``, ``"HOLOSCAN_LOG_LEVEL"`` or ``"default"``).
        ignored: a value that was not a level name (``HOLOSCAN_LOG_LEVEL=loud``), to warn about.
    """

    level: int
    sdk_name: str
    source: str
    ignored: str | None = None


class _QuietParser(argparse.ArgumentParser):
    def error(self, message: str):  # the SDK's parser reports bad command lines, not this one
        raise ValueError(message)


def _flag_value(argv: Sequence[str]) -> str | None:
    parser = _QuietParser(add_help=False)
    parser.add_argument("-l", "--log-level", dest="log_level")
    try:
        args, _ = parser.parse_known_args(list(argv[1:]))
    except ValueError:
        return None
    return args.log_level


def resolve_log_level(argv: Sequence[str], env: Mapping[str, str] | None = None) -> LogLevel:
    """``-l`` in ``argv`` (``argv[0]`` is the program), else ``HOLOSCAN_LOG_LEVEL``, else INFO.

    An unknown ``-l`` value is left to the SDK's parser (usage error, exit code 2) and INFO is used until
    then; an unknown ``HOLOSCAN_LOG_LEVEL`` is reported in ``ignored`` and INFO is used.
    """
    env = os.environ if env is None else env
    flag = _flag_value(argv)
    if flag is not None and flag.upper() in _LEVELS:
        return LogLevel(*_LEVELS[flag.upper()], source="-l")
    variable = env.get("HOLOSCAN_LOG_LEVEL", "").strip()
    if variable and flag is None:
        if variable.upper() in _LEVELS:
            return LogLevel(*_LEVELS[variable.upper()], source="HOLOSCAN_LOG_LEVEL")
        return LogLevel(logging.INFO, "INFO", source="default", ignored=variable)
    return LogLevel(logging.INFO, "INFO", source="default")


def sdk_argv(argv: Sequence[str], resolved: LogLevel) -> list[str]:
    """``argv`` for the SDK: the ``-l`` value in the SDK's spelling, or ``-l`` added when the level came from
    ``HOLOSCAN_LOG_LEVEL``; unchanged otherwise."""
    out = list(argv)
    if resolved.source == "HOLOSCAN_LOG_LEVEL":
        return [*out, "-l", resolved.sdk_name]
    if resolved.source != "-l":
        return out
    for i, token in enumerate(out[1:], start=1):
        if token in ("-l", "--log-level") and i + 1 < len(out):
            out[i + 1] = resolved.sdk_name
        elif token.startswith("--log-level="):
            out[i] = f"--log-level={resolved.sdk_name}"
        elif token.startswith("-l") and len(token) > 2 and not token.startswith("--"):
            out[i] = f"-l{resolved.sdk_name}"
    return out


def export_to_holoscan(resolved: LogLevel, environ: MutableMapping[str, str] | None = None) -> None:
    """``HOLOSCAN_LOG_LEVEL`` in ``environ`` (default ``os.environ``) when the level came from ``-l``, so
    that Holoscan's own logger follows the flag; a level from the variable itself is left as it is."""
    if resolved.source == "-l":
        (os.environ if environ is None else environ)["HOLOSCAN_LOG_LEVEL"] = resolved.sdk_name


def configure_logging(resolved: LogLevel) -> None:
    """A stderr handler on the root logger (if none yet) and the level on every application package."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=resolved.level, format=LOG_FORMAT)
    for package in APPLICATION_PACKAGES:
        logging.getLogger(package).setLevel(resolved.level)
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if resolved.ignored is not None:
        logging.getLogger(__name__).warning(
            "HOLOSCAN_LOG_LEVEL=%s is not a log level (%s): using INFO", resolved.ignored, ", ".join(_LEVELS)
        )
