"""The Edge TPU path up to the hardware call, with a stand-in libedgetpu (no accelerator here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "device.cli"]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def fake_libedgetpu(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (gcc) to build the stand-in libedgetpu")
    lib = tmp_path_factory.mktemp("edgetpu") / "libedgetpu.so.1"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-o", str(lib), str(HERE / "fake_edgetpu" / "fake_edgetpu.c")],
        check=True,
    )
    return lib


def test_delegate_gets_device_option_and_no_device_is_a_clear_error(
    tmp_path, test_data, fake_libedgetpu, monkeypatch
):
    log = tmp_path / "delegate.log"
    monkeypatch.setenv("EDGECAM_EDGETPU_LIB", str(fake_libedgetpu))
    monkeypatch.setenv("FAKE_EDGETPU_LOG", str(log))
    coral = test_data / "coral"
    proc = subprocess.run(
        [
            *CLI,
            "classify",
            str(coral / "cat.bmp"),
            "--model",
            str(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
            "--edgetpu",
            "--edgetpu-device",
            "usb:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "no Edge TPU found at device 'usb:0'" in proc.stderr and "plug in" in proc.stderr
    assert log.read_text().splitlines() == ["device=usb:0"]  # the option reached the library


def test_wrong_library_is_named(test_data, monkeypatch):
    monkeypatch.setenv("EDGECAM_EDGETPU_LIB", "libc.so.6")
    coral = test_data / "coral"
    proc = subprocess.run(
        [
            *CLI,
            "classify",
            str(coral / "cat.bmp"),
            "--model",
            str(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
            "--edgetpu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a TFLite delegate library" in proc.stderr


def test_run_uses_fallback_cpu_model_when_edgetpu_absent(
    tmp_path, test_data, fake_libedgetpu, monkeypatch
):
    monkeypatch.setenv("EDGECAM_EDGETPU_LIB", str(fake_libedgetpu))
    coral = test_data / "coral"
    config = tmp_path / "device.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "path": str(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
                    "labels": str(coral / "imagenet_labels.txt"),
                    "fallback": str(coral / "mobilenet_v1_0.25_128_quant.tflite"),
                },
                "inference": {"edgetpu": True},
                "cameras": [{"source": str(test_data / "opencv" / "vtest.avi")}],
                "mqtt": {"enabled": False},
                "console": {"format": "off", "jsonl_path": str(tmp_path / "r.jsonl")},
            }
        )
    )
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "using the fallback CPU model" in proc.stderr
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "mobilenet_v1_0.25_128_quant@cb273c23ee76" in lines[0]
