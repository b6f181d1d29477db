"""The Pi camera path, up to the hardware call, with a stand-in ``picamera2`` module.

No Pi camera can exist here; the stand-in records what edgecam asks of libcamera (stream size,
pixel format, frame rate) and returns frames like ``Picamera2.capture_array`` does.
"""

from __future__ import annotations

import sys
import time
import types
from typing import ClassVar

import cv2
import numpy as np
import pytest

from device.capture import CaptureThread
from device.errors import SourceError
from device.sources import open_source
from device.sources.picamera import Picamera2Source


class FakePicamera2:
    instances: ClassVar[list[FakePicamera2]] = []
    cameras: ClassVar[list[dict]] = [{"Model": "imx708", "Num": 0}]
    fail_reads_after: int | None = None
    rgb_lores = True  # Pi 5 (PiSP): an RGB lores stream; Pi 4 (VC4): YUV420 only

    def __init__(self, index: int = 0):
        if index >= len(self.cameras):
            raise IndexError("camera index out of range")
        self.index = index
        self.config = None
        self.started = False
        self.closed = False
        self.reads = 0
        FakePicamera2.instances.append(self)

    @staticmethod
    def global_camera_info():
        return FakePicamera2.cameras

    def create_video_configuration(self, main, controls, buffer_count, lores=None):
        config = {"main": main, "controls": controls, "buffer_count": buffer_count}
        if lores is not None:
            config["lores"] = lores
        return config

    def configure(self, config):
        lores = config.get("lores")
        if lores is not None:
            if lores["format"] != "YUV420" and not self.rgb_lores:
                raise RuntimeError("lores stream must be YUV")  # what picamera2 says on a Pi 4
            assert lores["size"][0] <= config["main"]["size"][0]
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self, stream):
        assert stream == "main" and self.started
        self.reads += 1
        if self.fail_reads_after is not None and self.reads > self.fail_reads_after:
            raise RuntimeError("Camera frontend has timed out!")
        return self._array(self.config["main"])

    def capture_arrays(self, names):
        assert self.started
        self.reads += 1
        return [self._array(self.config[n]) for n in names], {"SensorTimestamp": self.reads}

    @staticmethod
    def _array(stream):
        w, h = stream["size"]
        if stream["format"] == "YUV420":  # I420 planes, rows padded to a 64-byte stride
            stride = (w + 63) // 64 * 64
            rgb = np.zeros((h, stride, 3), np.uint8)
            rgb[..., 0] = 200
            return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        frame = np.zeros((h, w, 3), np.uint8)
        frame[..., 0] = 200  # red channel first: libcamera "BGR888" is RGB in memory
        return frame

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.instances = []
    FakePicamera2.fail_reads_after = None
    FakePicamera2.rgb_lores = True
    FakePicamera2.cameras = [{"Model": "imx708", "Num": 0}]
    return FakePicamera2


def test_auto_picks_pi_camera_and_asks_for_rgb_at_size(fake_picamera2):
    source = open_source("auto", width=320, height=240, fps=15)
    assert isinstance(source, Picamera2Source) and source.live
    source.open()
    cam = fake_picamera2.instances[-1]
    assert cam.config["main"] == {"size": (320, 240), "format": "BGR888"}
    assert cam.config["controls"] == {"FrameRate": 15}
    frame = source.read()
    assert frame.shape == (240, 320, 3) and frame[0, 0, 0] == 200
    source.close()
    assert cam.closed and not cam.started


def test_missing_camera_and_missing_package(fake_picamera2, monkeypatch):
    with pytest.raises(SourceError, match="cannot start Pi camera 1"):
        Picamera2Source(1).open()
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as off a Pi
    with pytest.raises(SourceError, match="python3-picamera2"):
        Picamera2Source(0).open()


def test_camera_timeout_reconnects(fake_picamera2):
    fake_picamera2.fail_reads_after = 3
    source = open_source("picamera2")
    source.open()
    cap = CaptureThread(
        "pi",
        source,
        lambda px, out: out,
        lambda: np.zeros((1, 2, 2, 3), np.uint8),
        reconnect_max_s=0.5,
    )
    assert cap.realtime  # a live camera: newest frame wins
    cap.start()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        item = cap.slot.get(0.5)
        if item is not None:
            got.append(item.frame.index)
            cap.release(item)
    cap.stop()
    cap.join(5)
    assert len(got) >= 5
    assert cap.reconnects >= 1 and len(fake_picamera2.instances) >= 2


@pytest.mark.parametrize("pi", ["pi5", "pi4"])
def test_model_sized_lores_stream_for_inference_main_kept_for_snapshots(fake_picamera2, pi):
    fake_picamera2.rgb_lores = pi == "pi5"
    source = open_source("picamera2", min_size=(224, 224))  # the model's input
    source.open()
    cam = fake_picamera2.instances[-1]
    assert cam.config["main"] == {"size": (640, 480), "format": "BGR888"}
    # the main stream's 4:3, just covering 224 x 224, scaled by the ISP
    expected = "BGR888" if pi == "pi5" else "YUV420"
    assert cam.config["lores"] == {"size": (300, 224), "format": expected}
    assert source.lores_format == expected  # RGB straight from the ISP where it can
    cap = CaptureThread("pi", source, lambda px, out: out, lambda: np.zeros((1, 2, 2, 3), np.uint8))
    cap.start()
    item = cap.slot.get(5.0)
    cap.stop()
    cap.join(5)
    assert item is not None
    frame = item.frame
    assert frame.pixels.shape == (224, 300, 3)  # what the model, motion and health see
    assert frame.full is not None and frame.full.shape == (480, 640, 3)  # snapshots, samples
    assert frame.full_pixels is frame.full
    red, green, _ = frame.pixels[100, 100].astype(int)
    assert abs(red - 200) <= 3 and green <= 3  # RGB order, also from YUV420


def test_no_lores_stream_when_main_is_no_larger_than_the_model_needs(fake_picamera2):
    source = open_source("picamera2", width=320, height=240, min_size=(320, 320))
    source.open()
    assert "lores" not in fake_picamera2.instances[-1].config and source.lores is None
    frame = source.read()
    assert frame.shape == (240, 320, 3) and source.full_res() is None
