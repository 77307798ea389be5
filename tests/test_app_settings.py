"""Application settings (app/settings.py): precedence, and errors that name the key and where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import load_settings
from dicom_series import DEFAULT_SERIES_NUMBER_OFFSET
from nsn2n import ConfigError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_environment_overrides_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "denoise:\n  max_steps: 300\n  batch_size: 4\n")
    settings = load_settings(path, env={"NSN2N_MAX_STEPS": "50", "NSN2N_STRICT": "true"})
    assert settings.algorithm.max_steps == 50 and settings.algorithm.batch_size == 4 and settings.strict
    assert settings.series_number_offset == DEFAULT_SERIES_NUMBER_OFFSET


@pytest.mark.parametrize(
    ("yaml_text", "env", "key", "fragment"),
    [
        ("denoise:\n  max_steps: 0\n", {}, "max_steps", "app.yaml: denoise.max_steps: max_steps: must be >= 1"),
        ("", {"NSN2N_CROP_SIZE": "8"}, "crop_size", "environment variable NSN2N_CROP_SIZE: crop_size: must be"),
        ("", {"NSN2N_SERIES_DESCRIPTION": "a\\b"}, "series_description", "without backslash"),
        ("", {"NSN2N_SERIES_DESCRIPTION": "Débruité"}, "series_description", "printable ASCII"),
        ("", {"NSN2N_SERIES_NUMBER_OFFSET": str(2**31 - 1)}, "series_number_offset", "at most 2147483646"),
        ("", {"NSN2N_DEVICE": "tpu"}, "device", "must be one of auto, cpu, cuda"),
    ],
)
def test_a_bad_value_names_its_key_and_origin(
    tmp_path: Path, yaml_text: str, env: dict[str, str], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_yaml(tmp_path, yaml_text), env=env)
    assert info.value.key == key
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_problems_no_single_key_is_at_fault_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'") as info:
        load_settings(_yaml(tmp_path, ""), env={"NSN2N_NO_SUCH_KEY": "1"})
    assert info.value.key is None
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_settings(_yaml(tmp_path, "denoise: [unclosed\n"), env={})
    assert info.value.key is None and info.value.origin == str(tmp_path / "app.yaml")
