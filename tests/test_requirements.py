"""requirements.txt provides every third-party import of the shipped code.

Why: the image and a user's runtime environment install ``requirements.txt`` alone, while the tests run in
the development environment, which also has ``requirements-dev.txt``. A module that imports something
only the development file provides passes every test and fails on the first real run (this happened with
``jsonschema``). The check is static: every ``import`` statement of the shipped packages (including
imports inside functions) is read with :mod:`ast`; its top-level name must be standard library
(:data:`sys.stdlib_module_names`), first party (:data:`app.packages.APPLICATION_PACKAGES`), or a module
of a distribution reachable from ``requirements.txt`` through the installed distributions' own
requirements (:func:`importlib.metadata.requires`, markers evaluated for this interpreter).
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.packages import APPLICATION_PACKAGES

REPO = Path(__file__).resolve().parent.parent
#: Shipped code: the application's packages (the image's /opt/holoscan/app) and the MAP tooling in map/,
#: which runs where the image is built, with requirements.txt.
SHIPPED = (*APPLICATION_PACKAGES, "map")
#: Requirements that no shipped module imports and no imported distribution requires, yet the run needs;
#: each says why (the same reasons stand as comments in requirements.txt). Anything else in
#: requirements.txt must be imported by shipped code or pin a dependency of what is.
NEEDED_WITHOUT_IMPORT = {
    "highdicom": "monai.deploy.operators evaluates a highdicom annotation at import; the SDK does not declare it",
    "pylibjpeg": "pydicom's decoder plugin for JPEG / JPEG 2000 / RLE pixel data",
    "pylibjpeg-libjpeg": "pylibjpeg's JPEG plugin",
    "pylibjpeg-openjpeg": "pylibjpeg's JPEG 2000 plugin",
    "pylibjpeg-rle": "pylibjpeg's RLE plugin",
    "pyjpegls": "pydicom's decoder plugin for JPEG-LS pixel data",
}


def imported_modules(roots: list[Path], base: Path) -> dict[str, list[str]]:
    """``{top-level module name: ["path:line", ...]}`` of every absolute import under ``roots``."""
    found: dict[str, list[str]] = defaultdict(list)
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            where = path.relative_to(base).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found[name.split(".")[0]].append(f"{where}:{node.lineno}")
    return found


def requirement_names(requirements: Path) -> list[Requirement]:
    """The requirements of a pip requirements file (``-r`` includes followed; options skipped)."""
    out: list[Requirement] = []
    for raw in requirements.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += requirement_names(requirements.parent / line.split(maxsplit=1)[1])
        elif not line.startswith("-"):
            out.append(Requirement(line))
    return out


def distribution_closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the requirements and, recursively, of what their installed metadata requires.

    Raises:
        AssertionError: a requirement is not installed here (the check needs its metadata).
    """
    environment = default_environment()
    todo = [(r, frozenset(r.extras)) for r in requirements if r.marker is None or r.marker.evaluate(environment)]
    seen: set[tuple[str, frozenset[str]]] = set()
    closure: set[str] = set()
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        closure.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{requirement.name} is required but not installed in {sys.prefix}") from None
        for text in requires:
            child = Requirement(text)
            wanted = child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""})
            )
            if wanted:
                todo.append((child, frozenset(child.extras)))
    return closure


def provided_modules(distributions: set[str]) -> set[str]:
    """Top-level import names that the given (canonical) distributions install."""
    return {
        module
        for module, owners in metadata.packages_distributions().items()
        if any(canonicalize_name(owner) in distributions for owner in owners)
    }


def unprovided_imports(roots: list[Path], base: Path, requirements: Path, first_party: set[str]) -> list[str]:
    """One line per import that is neither standard library, first party, nor provided by ``requirements``."""
    provided = provided_modules(distribution_closure(requirement_names(requirements)))
    problems = []
    for module, places in sorted(imported_modules(roots, base).items()):
        if module in sys.stdlib_module_names or module in first_party or module in provided:
            continue
        problems += [f"{place}: imports '{module}', which {requirements.name} does not provide" for place in places]
    return problems


# -------------------------------------------------------------------------------------------------- tests


def test_requirements_txt_provides_every_import_of_the_shipped_code() -> None:
    roots = [REPO / name for name in SHIPPED]
    assert all(root.is_dir() for root in roots), roots
    problems = unprovided_imports(roots, REPO, REPO / "requirements.txt", set(APPLICATION_PACKAGES))
    assert not problems, "\n".join(problems)


def test_requirements_txt_holds_nothing_the_run_does_not_need() -> None:
    """Every requirement is imported by shipped code, pins a dependency of an imported distribution, or is
    in NEEDED_WITHOUT_IMPORT with its reason (a test or benchmark tool belongs in requirements-dev.txt)."""
    requirements = requirement_names(REPO / "requirements.txt")
    owners = metadata.packages_distributions()
    imported = {
        canonicalize_name(owner)
        for module in imported_modules([REPO / name for name in SHIPPED], REPO)
        for owner in owners.get(module, [])
    }
    used = distribution_closure([Requirement(name) for name in sorted(imported)])
    unused = [
        r.name for r in requirements if canonicalize_name(r.name) not in used and r.name not in NEEDED_WITHOUT_IMPORT
    ]
    assert not unused, f"requirements.txt lists {unused}, which nothing at run time needs: move to requirements-dev.txt"
    listed = {canonicalize_name(r.name) for r in requirements}
    assert set(NEEDED_WITHOUT_IMPORT) <= listed, "NEEDED_WITHOUT_IMPORT names a package requirements.txt lacks"


def test_a_module_importing_an_unlisted_package_is_named_with_its_file(tmp_path: Path) -> None:
    """The check fails, naming import and file, for a dev-only package and for a dependency left out."""
    package = tmp_path / "shipped"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ok.py").write_text("import json\nimport numpy\nfrom shipped import ok\nfrom . import other\n")
    (package / "bad.py").write_text('"""A module."""\n\nimport os\n\n\ndef f():\n    import pytest\n')
    (package / "schema.py").write_text("from jsonschema import validate\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# runtime\nnumpy==2.4.6  # arrays\n")
    problems = unprovided_imports([package], tmp_path, requirements, {"shipped"})
    assert problems == [
        "shipped/schema.py:1: imports 'jsonschema', which requirements.txt does not provide",
        "shipped/bad.py:7: imports 'pytest', which requirements.txt does not provide",
    ]
    requirements.write_text("numpy==2.4.6\njsonschema==4.26.0\n-r dev.txt\n")
    (tmp_path / "dev.txt").write_text("pytest==9.2.0\n")
    assert unprovided_imports([package], tmp_path, requirements, {"shipped"}) == []


def test_dependencies_of_requirements_count_as_provided() -> None:
    """Pillow is not listed, matplotlib requires it: an import of PIL is provided through the closure."""
    closure = distribution_closure([Requirement("matplotlib==3.11.2")])
    assert "pillow" in closure and "numpy" in closure
    assert "PIL" in provided_modules(closure)
    assert "pytest" not in closure


def test_a_requirement_that_is_not_installed_is_reported() -> None:
    with pytest.raises(AssertionError, match="not-a-real-distribution-nsn2n is required but not installed"):
        distribution_closure([Requirement("not-a-real-distribution-nsn2n==1.0")])


def test_the_shipped_packages_are_on_disk_and_first_party() -> None:
    for name in APPLICATION_PACKAGES:
        assert (REPO / name / "__init__.py").is_file(), name
        assert name not in sys.stdlib_module_names
