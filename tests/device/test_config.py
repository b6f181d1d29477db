"""Config validation: typed, extra keys forbidden, errors name field path and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import DeviceConfig, load_config, parse_config
from device.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "device.cli"]


def test_example_config_is_valid_and_documents_every_option() -> None:
    example = REPO / "config" / "device.example.yaml"
    config = load_config(example)
    assert config.cameras[0].source == "auto"
    text = example.read_text()

    def walk(model: type, prefix: str = "") -> list[str]:
        names = []
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            names.append(name)
            ann = field.annotation
            for inner in [ann, *getattr(ann, "__args__", ())]:
                for sub in [inner, *getattr(inner, "__args__", ())]:
                    if isinstance(sub, type) and hasattr(sub, "model_fields"):
                        names += walk(sub, f"{prefix}{name}.")
        return names

    for name in walk(DeviceConfig):
        assert f"{name}:" in text, f"config/device.example.yaml does not document {name!r}"


def test_unknown_key_names_key_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "device_id: pi\nmqtt:\n  host: broker\n  pasword: x\ncameras:\n  - name: a\n    sorce: 0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}, line 4: mqtt.pasword: unknown key 'pasword'" in message
    assert "password" in message  # the allowed keys help spot the typo
    assert f"{path}, line 7: cameras.0.sorce: unknown key 'sorce'" in message


def test_wrong_types_and_ranges() -> None:
    with pytest.raises(ConfigError, match=r"line 2: mqtt.port"):
        parse_config("mqtt:\n  port: 99999\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"cameras.0.roi"):
        parse_config("cameras:\n  - roi: [0.5, 0.5, 0.8, 0.2]\n", "x.yaml")
    with pytest.raises(ConfigError, match="camera names must be unique"):
        parse_config("cameras:\n  - name: a\n  - name: a\n", "x.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("mqtt: [unclosed\n", "x.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config("- a\n- b\n", "x.yaml")


def test_password_from_environment_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECAM_MQTT_PASSWORD", "hunter2")
    config = parse_config("mqtt:\n  username: cam\n  password: from-file\n")
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


def test_validate_cli(tmp_path: Path, test_data: Path) -> None:
    # the example config names models/...: run where `make models` would have put them
    models = tmp_path / "models"
    models.mkdir()
    for name in ("mobilenet_v2_1.0_224_quant.tflite", "imagenet_labels.txt"):
        (models / name).symlink_to(test_data / "coral" / name)
    (models / "vtest.avi").symlink_to(test_data / "opencv" / "vtest.avi")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    example = str(REPO / "config" / "device.example.yaml")
    ok = subprocess.run(
        [*CLI, "validate", "--config", example],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stderr
    # without the model, validate says what run would say
    (models / "mobilenet_v2_1.0_224_quant.tflite").unlink()
    gone = subprocess.run(
        [*CLI, "validate", "--config", example],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert gone.returncode == 2 and "model file not found" in gone.stderr, gone.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("inference:\n  thread: 4\n")
    proc = subprocess.run(
        [*CLI, "validate", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "line 2: inference.thread: unknown key 'thread'" in proc.stderr
    missing = subprocess.run(
        [*CLI, "validate", "--config", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_yaml_is_read_without_yaml_1_1_surprises() -> None:
    config = parse_config(
        "console: {format: off, changes_only: no}\n"
        "mqtt: {enabled: Off, port: 01883}\n"
        "alerts:\n"
        "  label_groups: {answers: [yes, no, on, off]}\n"
        "cameras:\n"
        "  - &cam {name: a, source: 1:30, loop: yes}\n"
        "  - {<<: *cam, name: b}\n",
        "x.yaml",
    )
    assert config.console.format == "off" and config.console.changes_only is False
    assert config.mqtt.enabled is False and config.mqtt.port == 1883  # no octal surprise
    assert config.alerts.label_groups["answers"] == ["yes", "no", "on", "off"]
    assert [c.source for c in config.cameras] == ["1:30", "1:30"]  # not 90 (base 60)
    assert [c.name for c in config.cameras] == ["a", "b"] and config.cameras[1].loop is True


def test_yaml_syntax_error_excerpt_is_redacted() -> None:
    from device.yamlfile import redact

    assert redact("  password: hunter2") == "  password: ***"
    assert redact('  "api_key": abc') == '  "api_key": ***'
    assert redact("source: rtsp://admin:pw@cam:554/s") == "source: rtsp://admin:***@cam:554/s"
    assert redact("host: broker") == "host: broker"
    with pytest.raises(ConfigError) as info:
        parse_config("mqtt:\n  token: s3cret: x\n", "x.yaml")
    assert "s3cret" not in str(info.value) and "line 2" in str(info.value)


def test_aliases_within_the_limit_are_expanded() -> None:
    config = parse_config("alerts:\n  label_groups:\n    a: &a [x, y]\n    b: *a\n", "x.yaml")
    assert config.alerts.label_groups["b"] == ["x", "y"]
