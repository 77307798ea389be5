"""The application's own top-level packages, named in one place.

Three things depend on this list and must agree: the image ships exactly these packages under
``/opt/holoscan/app`` (``Dockerfile``), the ``-l`` / ``HOLOSCAN_LOG_LEVEL`` level is applied to their
loggers (every module logs through ``logging.getLogger(__name__)``, so each logger is a child of one of
these names), and the test that ``requirements.txt`` provides every third-party import treats them as
first party.

``python -m app.packages --import-all`` imports every module of these packages: the image build runs it
so that a runtime dependency missing from ``requirements.txt`` fails the build, not the first run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

__all__ = ["APPLICATION_PACKAGES", "import_all"]

#: Top-level packages of the application (first party), in dependency order.
APPLICATION_PACKAGES: tuple[str, ...] = ("nsn2n", "dicom_series", "qa_report", "operators", "app")


def import_all(packages: Sequence[str] = APPLICATION_PACKAGES) -> list[str]:
    """Import every module of ``packages`` (``__main__`` modules excluded); return their names.

    Raises:
        ImportError: a module imports something that is not installed (the message names it).
    """
    names: list[str] = []
    for package_name in packages:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if module.name.rsplit(".", 1)[-1] == "__main__":
                continue
            importlib.import_module(module.name)
            names.append(module.name)
    return names


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.packages", description=__doc__.splitlines()[0])
    parser.add_argument("--import-all", action="store_true", help="import every module of the packages")
    args = parser.parse_args(argv)
    if not args.import_all:
        print("\n".join(APPLICATION_PACKAGES))
        return 0
    names = import_all()
    print(f"imported {len(names)} modules of {', '.join(APPLICATION_PACKAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
