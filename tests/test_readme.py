"""The README's parameter table and commands agree with the code (one place for each default)."""

import dataclasses
import re
from pathlib import Path

import yaml

from app.settings import AppSettings, load_settings
from nsn2n import DenoiseConfig

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _table() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.splitlines():
        m = re.match(r"\| `([a-z_]+)` \|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def _fmt(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _defaults() -> dict[str, object]:
    values = {f.name: f.default for f in dataclasses.fields(DenoiseConfig)}
    app = AppSettings()
    values.update({k: getattr(app, k) for k in AppSettings.app_keys()})
    return values


def test_every_parameter_is_documented_with_its_default():
    table = _table()
    defaults = _defaults()
    missing, stale = set(defaults) - set(table), set(table) - set(defaults)
    assert not missing and not stale, f"undocumented: {missing}, stale: {stale}"
    for key, value in defaults.items():
        assert table[key][0] == _fmt(value), f"{key}: README says {table[key][0]!r}, code says {_fmt(value)!r}"


def test_app_yaml_column_matches_app_yaml_and_app_yaml_is_valid():
    section = yaml.safe_load((REPO / "app.yaml").read_text())["denoise"]
    table = _table()
    for key, value in section.items():
        documented = table[key][1]
        assert documented in (_fmt(value), "same"), f"{key}: README app.yaml column {documented!r}, app.yaml {value!r}"
        if documented == "same":
            assert table[key][0] == _fmt(value)
    for key, (_, documented) in table.items():
        if documented:
            assert key in section, f"README says app.yaml sets {key}, but it does not"
    load_settings(REPO / "app.yaml", env={})  # validates


def test_readme_commands_exist_and_ci_runs_the_test_command():
    assert "scripts/demo.sh" in README and "scripts/test.sh" in README
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/setup.sh"):
        assert (REPO / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_readme_container_commands_are_the_documented_ones():
    deploy = (REPO / "docs" / "deploy.md").read_text()
    commands = [line.strip() for line in README.splitlines() if line.strip().startswith("docker ")]
    assert commands, "README shows no docker command"
    for command in commands:
        assert command in deploy, f"README command not in docs/deploy.md (which the MAP tests check): {command}"
