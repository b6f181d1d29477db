"""The capture thread: latest-frame slot, drop counting, file hand-over, camera reconnects."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from device.capture import Captured, CaptureThread, FrameSlot
from device.sources import OpenCVSource, open_source
from device.sources.base import Frame, FrameSource


def item(i: int) -> Captured:
    return Captured(
        Frame(np.zeros((2, 2, 3), np.uint8), time.monotonic(), time.time(), i), np.zeros(1), 0.0
    )


def test_latest_slot_keeps_newest_and_counts_drops() -> None:
    slot = FrameSlot(drop=True)
    assert slot.put(item(0)) is None
    displaced = slot.put(item(1))
    assert displaced is not None and displaced.frame.index == 0
    slot.put(item(2))
    assert slot.dropped == 2
    got = slot.get(0.1)
    assert got is not None and got.frame.index == 2
    assert slot.get(0.05) is None


def test_blocking_slot_waits_for_consumer() -> None:
    slot = FrameSlot(drop=False)
    slot.put(item(0))
    done = threading.Event()
    threading.Thread(target=lambda: (slot.put(item(1)), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # the producer waits: files lose no frames
    assert slot.get(0.1).frame.index == 0
    assert done.wait(2)
    assert slot.get(0.1).frame.index == 1 and slot.dropped == 0


def _run_capture(source: FrameSource, **kwargs) -> tuple[CaptureThread, list[int]]:
    buffers = lambda: np.zeros((1, 2, 2, 3), np.uint8)  # noqa: E731
    cap = CaptureThread("t", source, lambda px, out: out, buffers, **kwargs)
    seen: list[int] = []
    return cap, seen


def test_file_source_every_frame_in_order(test_data: Path) -> None:
    source = open_source(str(test_data / "opencv" / "vtest.avi"))
    source.open()
    cap, seen = _run_capture(source, realtime=False)
    cap.start()
    while len(seen) < 40:
        got = cap.slot.get(1.0)
        assert got is not None
        seen.append(got.frame.index)
        assert got.frame.pixels.shape == (576, 768, 3)
        time.sleep(0.002)  # slower consumer: a file still loses nothing
        cap.release(got)
    cap.stop()
    cap.join(5)
    assert seen == list(range(40)) and cap.dropped == 0


def test_realtime_file_drops_when_consumer_is_slow(test_data: Path) -> None:
    source = OpenCVSource(str(test_data / "opencv" / "vtest.avi"), fps=100.0)
    source.open()
    cap, seen = _run_capture(source, realtime=True)
    cap.start()
    for _ in range(5):
        got = cap.slot.get(1.0)
        seen.append(got.frame.index)
        time.sleep(0.1)  # 10 fps consumer of a 100 fps source
        cap.release(got)
    cap.stop()
    cap.join(5)
    assert cap.dropped > 5
    assert seen == sorted(seen) and seen[-1] - seen[0] > 10  # always the newest frame


class FlakyCamera(FrameSource):
    """Stands in for a USB camera that is unplugged after 5 frames and fails to reopen twice."""

    live = True

    def __init__(self) -> None:
        self.opens = 0
        self.frames = 0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        from device.errors import SourceError

        self.opens += 1
        if self.opens in (2, 3):
            raise SourceError("camera gone")
        self._open = True

    def read(self):
        self.frames += 1
        if self.frames == 5:
            return None  # unplugged
        return np.full((4, 4, 3), self.frames % 256, np.uint8)

    def close(self) -> None:
        self._open = False


def test_live_source_reconnects_with_backoff() -> None:
    cam = FlakyCamera()
    cam.open()
    cap, seen = _run_capture(cam, reconnect_max_s=0.5)
    cap.start()
    deadline = time.monotonic() + 10
    while len(seen) < 10 and time.monotonic() < deadline:
        got = cap.slot.get(0.5)
        if got is not None:
            seen.append(got.frame.index)
            cap.release(got)
    cap.stop()
    cap.join(5)
    assert len(seen) >= 10
    assert cap.reconnects == 1 and cam.opens == 4
    assert cap.crash is None


def test_folder_source_loops(tmp_path: Path, test_data: Path) -> None:
    for name in ("cat.bmp", "parrot.jpg"):
        (tmp_path / name).write_bytes((test_data / "coral" / name).read_bytes())
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    source.open()
    cap, _ = _run_capture(source, loop=True)
    cap.start()
    shapes = []
    for _ in range(5):
        got = cap.slot.get(1.0)
        shapes.append(got.frame.pixels.shape)
        cap.release(got)
    cap.stop()
    cap.join(5)
    assert shapes[0] == shapes[2] == shapes[4] != shapes[1]  # cat, parrot, cat, parrot, cat


def test_auto_source_falls_back_to_sample_clip(
    tmp_path: Path, test_data: Path, monkeypatch
) -> None:
    import os

    from device.errors import SourceError

    if os.path.exists("/dev/video0"):
        import pytest

        pytest.skip("a USB camera is attached: auto would pick it")
    monkeypatch.chdir(tmp_path)
    with __import__("pytest").raises(SourceError, match="no camera found"):
        open_source("auto")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vtest.avi").symlink_to(test_data / "opencv" / "vtest.avi")
    source = open_source("auto")  # no picamera2 here, no /dev/video0: the sample clip
    assert isinstance(source, OpenCVSource) and source.stand_in
    source.open()
    cap, _ = _run_capture(source)
    assert cap.realtime and cap.loop  # paced and looped like a camera
    source.close()


# -- USB cameras: captured at the size the model needs ---------------------------------------------
class ModeCamera:
    """Stands in for cv2.VideoCapture(0): a UVC camera with a fixed list of modes that, like
    V4L2, grants the mode nearest to what is asked (uvcvideo's rule), default 640x480."""

    modes: ClassVar[list[tuple[int, int]]] = [
        (160, 120),
        (176, 144),
        (320, 240),
        (640, 480),
        (1280, 720),
    ]
    asked: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, spec, *args):
        assert spec == 0, spec
        self.mode = (640, 480)
        self.want = list(self.mode)
        self.released = False

    def isOpened(self) -> bool:  # OpenCV's name
        return not self.released

    def set(self, prop, value) -> bool:
        import cv2

        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            self.want[prop == cv2.CAP_PROP_FRAME_HEIGHT] = int(value)
            w, h = self.want
            ModeCamera.asked.append((w, h))

            def distance(m):  # uvc_v4l2_try_format: the smallest area difference
                return m[0] * m[1] + w * h - 2 * min(m[0], w) * min(m[1], h)

            self.mode = min(self.modes, key=distance)
        return True

    def get(self, prop) -> float:
        import cv2

        return {
            cv2.CAP_PROP_FRAME_WIDTH: self.mode[0],
            cv2.CAP_PROP_FRAME_HEIGHT: self.mode[1],
            cv2.CAP_PROP_FPS: 30.0,
        }.get(prop, 0.0)

    def read(self):
        w, h = self.mode
        return (not self.released), np.full((h, w, 3), 90, np.uint8)

    def release(self) -> None:
        self.released = True


def usb_camera(monkeypatch, modes):
    import device.sources.opencv as opencv_source

    monkeypatch.setattr(ModeCamera, "modes", modes)
    monkeypatch.setattr(ModeCamera, "asked", [])
    monkeypatch.setattr(opencv_source.cv2, "VideoCapture", ModeCamera)


def test_usb_camera_gets_the_smallest_mode_at_or_above_the_model_input(monkeypatch, caplog):
    import logging

    usb_camera(monkeypatch, ModeCamera.modes)
    source = open_source("0", min_size=(224, 224))
    with caplog.at_level(logging.INFO, logger="device.sources.opencv"):
        source.open()
    assert source.granted == (320, 240) and source.read().shape == (240, 320, 3)
    assert "capturing at 320x240, the smallest mode at or above 224x224" in caplog.text
    source.close()
    # a camera without 320x240: V4L2 grants 160x120 for it, too small; the next one fits
    usb_camera(monkeypatch, [(160, 120), (640, 480), (1280, 720)])
    source = open_source("0", min_size=(224, 224))
    source.open()
    assert source.granted == (640, 480)
    assert (320, 240) in ModeCamera.asked and ModeCamera.asked[-1] == (640, 360)  # -> 640x480
    source.close()


def test_configured_size_wins_and_a_roi_asks_for_more(monkeypatch, test_data, caplog):
    import logging
    import threading

    from device.classifier import Classifier
    from device.config import CameraConfig
    from device.pipeline import CameraPipeline
    from device.sinks import SinkSet

    usb_camera(monkeypatch, ModeCamera.modes)
    with caplog.at_level(logging.INFO, logger="device.sources.opencv"):
        source = open_source("0", width=1280, height=720, min_size=(224, 224))
        source.open()
    assert source.granted == (1280, 720) and "asked for 1280x720" in caplog.text
    source.close()
    coral = test_data / "coral"
    model = Classifier.open(coral / "mobilenet_v1_0.25_128_quant.tflite")  # 128 x 128 input
    camera = CameraConfig(name="usb", source="0", roi=[0.25, 0.25, 0.5, 0.5])
    pipeline = CameraPipeline(camera, model, SinkSet(), threading.Event())
    assert pipeline.source.min_size == (256, 256)  # the roi is half the frame each way
    pipeline.source.open()
    assert pipeline.source.granted == (640, 480)  # 320x240 is too small for 256x256
    pipeline.close()
