"""Shared by the MAP tests: import ``map/generate_manifests.py`` (manifest generator and Dockerfile parser)."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


@cache
def generator() -> ModuleType:
    """The ``map/generate_manifests.py`` module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("map_generate_manifests", REPO / "map" / "generate_manifests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
