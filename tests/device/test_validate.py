"""``edgecam-device validate`` checks what ``run`` checks (one preflight) and prints no secret."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "device.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def both(config) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """validate and run (no broker, 1 frame) on the same config."""
    return cli("validate", "--config", str(config)), cli(
        "run", "--config", str(config), "--no-mqtt", "--frames", "1"
    )


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_valid_config_is_summarised_without_secrets(write_config, monkeypatch):
    monkeypatch.setenv("EDGECAM_MQTT_PASSWORD", "env-pw-123")
    config = write_config(
        1883,
        cameras=[
            {"name": "door", "source": "rtsp://viewer:cam-pw-456@192.0.2.10:554/stream1"},
            {"name": "usb", "source": "0"},
        ],
        mqtt={"username": "cam", "password": "file-pw-789"},
    )
    proc = cli("validate", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "valid" in proc.stdout
    assert "mobilenet_v2_1.0_224_quant@7aad0c74c5e3" in proc.stdout  # the model was loaded
    assert "door=rtsp://***@192.0.2.10:554/stream1 (stream)" in proc.stdout
    assert "usb=0 (camera)" in proc.stdout  # parsed, not opened: there is no camera 0 here
    for secret in ("cam-pw-456", "env-pw-123", "file-pw-789"):
        assert secret not in out


@pytest.mark.parametrize(
    "sections,needles",
    [
        (
            {"alerts": {"rules": [{"name": "fox", "labels": ["red foxx"]}]}},
            ["red foxx"],
        ),
        (
            {"alerts": {"rules": [{"name": "fox", "labels": ["red fox"], "cameras": ["yard"]}]}},
            ["no camera named yard"],
        ),
        ({"model": {"labels": "{data}/coral/inat_bird_labels.txt"}}, ["965 labels", "1001"]),
        ({"model": {"path": "{tmp}/missing.tflite"}}, ["model file not found"]),
        ({"cameras": [{"name": "c", "source": "{tmp}/gone.mp4"}]}, ["source not found"]),
    ],
    ids=["unknown-rule-label", "unknown-rule-camera", "labels-mismatch", "no-model", "no-file"],
)
def test_validate_refuses_what_run_refuses(tmp_path, test_data, write_config, sections, needles):
    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str):
            return value.format(data=test_data, tmp=tmp_path)
        return value

    config = write_config(**fill(sections))
    validate, run = both(config)
    assert_refused(validate, *needles)
    assert_refused(run, *needles)
    assert len(validate.stderr.strip().splitlines()) <= 3, validate.stderr
