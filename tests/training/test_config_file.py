"""The training config file is read by the device's safe YAML loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import build_config, read_config_file
from training.errors import ConfigError


def test_yaml_1_1_words_stay_words(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("mixed_precision: off\nclass_weights: none\naugment:\n  enabled: no\n")
    config = build_config(read_config_file(path), {}, str(path))
    assert config.mixed_precision == "off"  # YAML 1.1 read it as false and refused it
    assert config.augment.enabled is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "epochs: 3\nepochs: 4\n",
            "line 2: epochs: duplicate key 'epochs' (first given on line 1)",
        ),
        ("learning_rate: .inf\n", "line 1: learning_rate: .inf is not a finite number"),
        ("a: &a [*a]\n", "an alias refers to the node that contains it"),
        ("epochs: [\n", "is not valid YAML: line 2, column 1"),
    ],
)
def test_bad_training_config_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert message in str(info.value)


def test_non_finite_option_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="learning_rate: Input should be a finite number"):
        build_config({"learning_rate": "nan"}, {}, "flags")
