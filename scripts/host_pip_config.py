#!/usr/bin/env python3
"""Hand the build host's pip configuration to a container build, read-only, without copying it anywhere.

Why: pip inside ``podman build`` must reach the same package index as the host (a mirror, a proxy with
its own certificate authority, local wheel folders), and that configuration belongs to the host, not to
the repository or the image. This script reads the host's effective configuration with
``pip config list`` (environment variables ``PIP_*``, ``/etc/pip.conf``, ``/etc/xdg/pip``, the user's
file), writes an equivalent ``pip.conf`` into ``OUT_DIR`` (a temporary folder outside the repository)
and prints one ``HOST_PATH:CONTAINER_PATH:ro`` volume per line for every local file or folder it refers
to, with the paths in the written ``pip.conf`` rewritten to where those volumes appear in the build:

* ``cert``, ``client-cert``, ``constraint``: the file, mounted under ``/run/host-pip/``;
* ``find-links``: local folders, mounted under ``/run/host-pip/``; URLs are kept;
* ``index-url``, ``extra-index-url``: ``file://`` indexes are mounted with their parent folder (the
  simple index's pages link to ``../../files/...``); ``http(s)`` URLs are kept;
* everything else (timeouts, trusted hosts, proxy, ...) is copied as is.

The build then sees ``PIP_CONFIG_FILE=/run/host-pip/pip.conf`` (a build argument of the Dockerfile) and
nothing of it is committed into the image (``podman build -v`` mounts exist only while a RUN step runs).

Usage: ``host_pip_config.py OUT_DIR [PYTHON]`` (``PYTHON``: the interpreter whose pip is asked; default
the one running this script).
"""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

#: Where the configuration and its files appear inside the build.
MOUNT_ROOT = "/run/host-pip"
FILE_KEYS = {"cert", "client-cert", "constraint", "build-constraint"}
LINK_KEYS = {"find-links"}
INDEX_KEYS = {"index-url", "extra-index-url"}


def read_host_config(python: str) -> dict[str, dict[str, str]]:
    """``{section: {key: value}}`` of ``pip config list``; environment values (``:env:``) go to ``global``
    and win over the files' ``global`` values, as they do for pip itself."""
    listing = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    files: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, key = name.rsplit(".", 1)
        value = ast.literal_eval(raw) if raw[:1] in "'\"" else raw
        if section == ":env:":
            env[key] = value
        else:
            files.setdefault(section, {})[key] = value
    files.setdefault("global", {}).update(env)
    return files


class Mounts:
    """Host paths to mount read-only, each at a stable path under :data:`MOUNT_ROOT`."""

    def __init__(self) -> None:
        self.by_host: dict[Path, str] = {}

    def add(self, host: Path) -> str:
        host = host.resolve()
        if host not in self.by_host:
            self.by_host[host] = f"{MOUNT_ROOT}/{len(self.by_host) + 1}-{host.name or 'root'}"
        return self.by_host[host]

    def volumes(self) -> list[str]:
        return [f"{host}:{inside}:ro" for host, inside in self.by_host.items()]


def _local_path(value: str) -> Path | None:
    if value.startswith("file://"):
        return Path(unquote(urlparse(value).path))
    if "://" in value:
        return None
    return Path(value).expanduser()


def translate(key: str, value: str, mounts: Mounts) -> str:
    """The value as the build sees it; local files and folders are registered in ``mounts``."""
    if key in FILE_KEYS:
        path = Path(value).expanduser()
        return mounts.add(path) if path.is_file() else value
    if key in LINK_KEYS | INDEX_KEYS:
        out = []
        for item in value.split():
            path = _local_path(item)
            if path is None or not path.exists():
                out.append(item)  # a URL (or a local path this host does not have: pip ignores it there too)
            elif key in INDEX_KEYS:
                inside = mounts.add(path.parent)
                out.append(f"file://{inside}/{path.name}")
            else:
                inside = mounts.add(path if path.is_dir() else path.parent)
                out.append(inside if path.is_dir() else f"{inside}/{path.name}")
        return " ".join(out)
    return value


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[1])
    python = argv[2] if len(argv) == 3 else sys.executable
    mounts = Mounts()
    parser = configparser.ConfigParser(interpolation=None)
    for section, values in read_host_config(python).items():
        parser[section] = {key: translate(key, value, mounts) for key, value in values.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "pip.conf").open("w", encoding="utf-8") as f:
        parser.write(f)
    mounts.by_host[(out_dir / "pip.conf").resolve()] = f"{MOUNT_ROOT}/pip.conf"
    print("\n".join(mounts.volumes()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
