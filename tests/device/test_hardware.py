"""Checks on real hardware (a Pi camera, a Coral Edge TPU). Skipped where it is absent.

Run on a Pi with: .venv/bin/python -m pytest -m hardware tests/device/test_hardware.py
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from device.inference import edgetpu_library

pytestmark = pytest.mark.hardware


def _has_pi_camera() -> bool:
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError:
        return False
    return bool(Picamera2.global_camera_info())


def _has_libedgetpu() -> bool:
    try:
        ctypes.CDLL(edgetpu_library())
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    not _has_pi_camera(), reason="no Pi camera (picamera2 missing or no camera found)"
)
def test_pi_camera_delivers_rgb_frames() -> None:
    from device.sources.picamera import Picamera2Source

    with Picamera2Source(0, width=640, height=480) as source:
        frames = [source.read() for _ in range(5)]
    assert all(
        f is not None and f.shape == (480, 640, 3) and f.dtype.name == "uint8" for f in frames
    )


@pytest.mark.skipif(
    not _has_libedgetpu(), reason="libedgetpu.so.1 not installed (no Coral Edge TPU runtime)"
)
def test_edgetpu_parrot_as_published(test_data: Path) -> None:
    from device.classifier import Classifier, InferenceOptions
    from device.errors import EdgeTPUError
    from device.preprocess import load_image

    coral = test_data / "coral"
    try:
        clf = Classifier.open(
            coral / "mobilenet_v2_1.0_224_inat_bird_quant_edgetpu.tflite",
            coral / "inat_bird_labels.txt",
            options=InferenceOptions(edgetpu=True),
        )
    except EdgeTPUError as exc:
        pytest.skip(f"runtime installed but no Edge TPU attached: {exc.message}")
    top, _ = clf.classify(load_image(coral / "parrot.jpg"), k=1)
    # Coral's docs: 0.75781 with PIL LANCZOS; bilinear on CPU gives ~0.70.
    assert top[0].index == 923 and top[0].score >= 0.65
