"""Supervision of the device loop: failing sinks, a failing interpreter, sources that cannot be
opened or disappear, a full disk, and the USB camera of ``auto`` opened once.

Faults are injected into the real components (the real LiteRT interpreter's ``invoke`` made to
raise, a sink that raises, a real closed port, a real folder removed, /dev/full); the USB
camera, which cannot exist here, is the one hardware fake.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from device.config import load_config
from device.inference import InferenceBackend
from device.runner import Runner
from device.sinks import Sink
from device.supervision import SupervisionConfig

CLI = [sys.executable, "-m", "device.cli"]
FAST = SupervisionConfig(max_restarts=2, restart_min_s=0.05, restart_max_s=0.2)


def fast_supervision(runner: Runner, cfg: SupervisionConfig = FAST) -> Runner:
    for pipeline in runner.pipelines:
        pipeline.supervision = cfg
    return runner


class BrokenSink(Sink):
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def handle(self, result) -> None:
        self.calls += 1
        raise ValueError(f"sink bug on frame {result.frame.index}")


def test_failing_sink_is_logged_once_counted_and_the_loop_goes_on(
    tmp_path, write_config, broker, subscriber_factory, caplog
):
    sub = subscriber_factory(broker.port)
    results = tmp_path / "results.jsonl"
    config = load_config(write_config(broker.port, console={"jsonl_path": str(results)}))
    runner = Runner(config, max_results=12)
    broken = BrokenSink()
    runner.sinks.sinks.insert(0, broken)  # first: the sinks after it still get every result
    with caplog.at_level(logging.ERROR):
        assert runner.run() == 0
    assert broken.calls == 12
    assert len(results.read_text().splitlines()) == 12  # the console sink after it got them all
    assert sub.wait_for(lambda ms: any(t.endswith("/street/classification") for t, _, _ in ms))
    logged = [r for r in caplog.records if "sink broken failed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    assert "ValueError: sink bug on frame 0" in logged[0].getMessage()
    assert sub.wait_for(lambda ms: any(t.endswith("/metrics") for t, _, _ in ms))
    metrics = sub.json_on("test-pi/metrics")[-1]
    assert metrics["sinks"]["broken"] == {
        "errors": 12,
        "last_error": "ValueError: sink bug on frame 11",
    }
    assert metrics["sinks"]["console"]["errors"] == 0


@pytest.fixture
def failing_invoke(monkeypatch):
    """Make the real interpreter raise in chosen threads: ``fail(thread, after, times)``."""
    real = InferenceBackend.invoke
    plans: dict[str, dict[str, int]] = {}

    def invoke(self):
        plan = plans.get(threading.current_thread().name)
        if plan is not None:
            plan["calls"] += 1
            if plan["calls"] > plan["after"] and plan["raised"] < plan["times"]:
                plan["raised"] += 1
                raise RuntimeError(
                    "tensorflow/lite/kernels/conv.cc: Node number 3 (CONV_2D) failed"
                )
        return real(self)

    monkeypatch.setattr(InferenceBackend, "invoke", invoke)

    def fail(thread: str, after: int, times: int = 10**9) -> dict[str, int]:
        plans[thread] = {"after": after, "times": times, "calls": 0, "raised": 0}
        return plans[thread]

    return fail


def test_interpreter_failure_restarts_the_camera(tmp_path, write_config, failing_invoke, caplog):
    results = tmp_path / "results.jsonl"
    config = load_config(write_config(console={"jsonl_path": str(results)}))
    runner = fast_supervision(Runner(config, max_results=15))
    first_classifier = runner.pipelines[0].classifier
    plan = failing_invoke("infer-street", after=5, times=1)  # one transient failure
    with caplog.at_level(logging.INFO):
        assert runner.run() == 0
    assert plan["raised"] == 1
    metrics = runner.metrics()["cameras"]["street"]
    assert metrics["restarts"] == 1 and metrics["state"] == "finished"
    assert "RuntimeError: tensorflow/lite/kernels/conv.cc" in metrics["last_error"]
    assert runner.pipelines[0].classifier is not first_classifier  # a fresh interpreter
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(lines) == 15
    frames = [r["frame"] for r in lines]
    assert frames == sorted(set(frames))  # frame numbers go on across the restart
    failed = [r for r in caplog.records if "the inference thread failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert any("restarting in" in r.getMessage() for r in caplog.records)


def test_capture_failure_restarts_the_camera_with_the_same_interpreter(
    tmp_path, write_config, monkeypatch
):
    from device.preprocess import Preprocessor

    real = Preprocessor.process
    calls = {"n": 0}

    def process(self, frame, out):
        calls["n"] += 1
        if calls["n"] == 4:  # once, in the capture thread (where preprocessing runs)
            raise MemoryError("cannot allocate the resize buffer")
        return real(self, frame, out)

    monkeypatch.setattr(Preprocessor, "process", process)
    runner = fast_supervision(Runner(load_config(write_config()), max_results=10))
    classifier = runner.pipelines[0].classifier
    assert runner.run() == 0
    metrics = runner.metrics()["cameras"]["street"]
    assert metrics["restarts"] == 1 and metrics["results"] == 10
    assert metrics["last_error"] == "capture: MemoryError: cannot allocate the resize buffer"
    assert runner.pipelines[0].classifier is classifier  # the interpreter was fine: kept


def test_camera_that_keeps_failing_is_given_up_and_run_returns_1(
    write_config, failing_invoke, caplog
):
    runner = fast_supervision(Runner(load_config(write_config())))
    plan = failing_invoke("infer-street", after=3)
    with caplog.at_level(logging.INFO):
        assert runner.run() == 1  # never 0 with a dead camera
    # the first start and max_restarts (2) restarts, each failing at once
    assert plan["raised"] == 3
    metrics = runner.metrics()["cameras"]["street"]
    assert metrics["state"] == "failed" and metrics["restarts"] == 2
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1  # the same error's traceback is logged once
    assert any("giving up after 2 failed restart(s)" in r.getMessage() for r in caplog.records)


# -- the same, as a process: exit status and two cameras ------------------------------------------
INJECT = """
import sys, threading
from device.inference import InferenceBackend

real = InferenceBackend.invoke
calls = {"n": 0}

def invoke(self):
    if threading.current_thread().name == "infer-broken":
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("interpreter fault injected by the test")
    return real(self)

InferenceBackend.invoke = invoke
from device.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_cameras_one_failing_healthy_keeps_publishing_then_exit_1(
    tmp_path, test_data, write_config, broker, subscriber_factory
):
    sub = subscriber_factory(broker.port)
    clip = str(test_data / "opencv" / "vtest.avi")
    config = write_config(
        broker.port,
        cameras=[
            {"name": "healthy", "source": clip, "loop": True, "realtime": True},
            {"name": "broken", "source": clip, "loop": True, "realtime": True},
        ],
        mqtt={"classification_interval": 0.01},
        metrics={"interval": 0.5},
        supervision={"max_restarts": 3, "restart_min_s": 0.5, "restart_max_s": 1.0},
    )
    script = tmp_path / "inject.py"
    script.write_text(INJECT)
    proc = subprocess.run(
        [sys.executable, str(script), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # a camera could not be recovered
    assert proc.stderr.count("Traceback") == 1, proc.stderr[-3000:]
    assert "giving up after 3 failed restart(s)" in proc.stderr
    metrics = sub.json_on("test-pi/metrics")
    restarting = [m for m in metrics if m["cameras"]["broken"]["state"] == "restarting"]
    assert restarting, "metrics never showed the failing camera"
    broken = metrics[-1]["cameras"]["broken"]
    assert broken["state"] == "failed" and broken["restarts"] == 3
    assert broken["last_error"] == "inference: RuntimeError: interpreter fault injected by the test"
    assert broken["last_error_at"].endswith("Z")
    assert metrics[-1]["cameras"]["healthy"]["state"] == "stopped"
    # while the broken camera was being restarted, the healthy one kept publishing
    order = [(t, json.loads(p)) for t, p, _ in sub.messages if p]
    first = next(
        i
        for i, (t, p) in enumerate(order)
        if t.endswith("/metrics") and p["cameras"]["broken"]["state"] == "restarting"
    )
    healthy_after = [t for t, _ in order[first:] if t.endswith("/healthy/classification")]
    assert len(healthy_after) >= 5
    statuses = sub.json_on("test-pi/status")
    assert statuses[-1]["state"] == "offline"  # stopped cleanly all the same


# -- sources that cannot be opened, or disappear ---------------------------------------------------
def start(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "run", "--config", str(config), *extra],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def lines_about(log: Path, needle: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if needle in line]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stream_on_a_closed_port_is_retried_until_a_server_appears(
    tmp_path, test_data, write_config, wait_until
):
    port = free_port()  # nothing listens here yet
    results = tmp_path / "results.jsonl"
    config = write_config(
        cameras=[
            {
                "name": "door",
                "source": f"http://viewer:s3cret@127.0.0.1:{port}/vtest.avi",
                "reconnect_max_s": 1,
            }
        ],
        console={"jsonl_path": str(results)},
    )
    log = tmp_path / "run.log"
    proc = start(config, log, "-v")  # -v: each attempt shows as a debug line
    server = None
    try:
        wait_until(lambda: len(lines_about(log, "reopen failed")) >= 3, 60, what="3 retries")
        assert proc.poll() is None, log.read_text()  # not a start error: it keeps trying
        handler = functools.partial(
            http.server.SimpleHTTPRequestHandler, directory=str(test_data / "opencv")
        )
        handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, name="http-video", daemon=True).start()
        wait_until(lambda: results.exists() and results.stat().st_size > 0, 60, what="results")
        assert proc.poll() is None
    finally:
        rc = stop(proc)
        if server is not None:
            server.shutdown()
    text = log.read_text()
    assert rc == 0, text
    door = [x for x in lines_about(log, "capture-door") if " DEBUG " not in x]
    assert len(door) <= 3, text  # the first failure, "opened after N attempts", the end
    assert "opened after" in text
    assert "Connection refused" not in text  # FFmpeg's per-attempt errors held back
    assert "s3cret" not in text  # the URL's credentials are never logged


def test_absent_usb_camera_is_retried_and_sigterm_stops_cleanly(tmp_path, write_config, wait_until):
    if os.path.exists("/dev/video7"):
        pytest.skip("a camera 7 exists here")
    config = write_config(cameras=[{"name": "usb", "source": "7", "reconnect_max_s": 0.5}])
    log = tmp_path / "run.log"
    proc = start(config, log)
    try:
        wait_until(lambda: lines_about(log, "retrying with backoff"), 60, what="the first retry")
    finally:
        rc = stop(proc)
    text = log.read_text()
    assert rc == 0, text
    assert len(lines_about(log, "cannot open camera 7")) == 1, text
    assert "can't open camera by index" not in text  # OpenCV's per-attempt warnings held back
    assert "Traceback" not in text


def test_disappearing_folder_is_retried_with_backoff_not_spun_on(
    tmp_path, test_data, write_config, wait_until
):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("cat.bmp", "bird.bmp"):
        shutil.copyfile(test_data / "coral" / name, folder / name)
    results = tmp_path / "results.jsonl"
    config = write_config(
        cameras=[{"name": "gallery", "source": str(folder), "loop": True, "reconnect_max_s": 1}],
        console={"jsonl_path": str(results)},
    )
    log = tmp_path / "run.log"
    proc = start(config, log, "-v")  # -v: each attempt shows as a debug line

    def count() -> int:
        return len(results.read_text().splitlines()) if results.exists() else 0

    try:
        wait_until(lambda: count() >= 4, 60, what="results from the folder")
        shutil.rmtree(folder)
        wait_until(lambda: len(lines_about(log, "reopen failed")) >= 3, 60, what="3 retries")
        stalled = count()
        folder.mkdir()
        shutil.copyfile(test_data / "coral" / "parrot.jpg", folder / "parrot.jpg")
        wait_until(lambda: count() > stalled + 2, 60, what="results after the folder came back")
        assert proc.poll() is None
    finally:
        rc = stop(proc)
    text = log.read_text()
    assert rc == 0, text
    told = [x for x in text.splitlines() if "capture-gallery" in x and " DEBUG " not in x]
    assert len(told) <= 3, text  # lost, reconnected, end: not one line per attempt or file
    assert len(lines_about(log, "reopen failed")) < 20, text  # backoff, not a spin
    assert "reconnected" in text
    last = json.loads(results.read_text().splitlines()[-1])
    assert last["top"][0]["label"] == "macaw"  # the new folder's image


def test_folder_of_unreadable_images_backs_off_instead_of_spinning(
    tmp_path, write_config, wait_until
):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_text("not an image")
    config = write_config(cameras=[{"name": "junk", "source": str(folder), "loop": True}])
    log = tmp_path / "run.log"
    proc = start(config, log, "-v")
    try:
        wait_until(lambda: len(lines_about(log, "still lost")) >= 3, 60, what="3 retries")
    finally:
        rc = stop(proc)
    text = log.read_text()
    assert rc == 0, text
    assert len(lines_about(log, "skipping")) == 2, text  # one warning per file, not per pass
    told = [x for x in lines_about(log, "capture-junk") if " DEBUG " not in x]
    assert len(told) == 1 and "delivered no frame in a whole pass" in told[0], text


# -- a results file that cannot be written --------------------------------------------------------
def test_results_file_on_a_full_disk_is_logged_once_and_classifying_goes_on(tmp_path, write_config):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    config = write_config(console={"format": "json", "jsonl_path": "/dev/full"})
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) >= 1  # results still printed
    assert proc.stderr.count("cannot write the results file /dev/full") == 1, proc.stderr
    assert "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_results_file_recovers_when_writable_again(tmp_path, wait_until, caplog):
    from device.sinks import ResultsFile

    blocker = tmp_path / "out"
    blocker.write_text("a file where the results folder should be")
    with caplog.at_level(logging.INFO):
        results = ResultsFile(blocker / "results.jsonl")  # cannot create the folder
        results.write("lost\n")
        assert results.failing and results.dropped == 1
        blocker.unlink()
        wait_until(lambda: (results.write("kept\n"), not results.failing)[1], 10)
        results.close()
    assert (blocker / "results.jsonl").read_text().endswith("kept\n")
    errors = [r for r in caplog.records if "cannot write the results file" in r.getMessage()]
    assert len(errors) == 1
    assert any("writable again" in r.getMessage() for r in caplog.records)


# -- source: auto on a machine with a USB camera ---------------------------------------------------
class FakeUsbCamera:
    """Stands in for cv2.VideoCapture(0): a USB camera that delivers frames."""

    opens = 0

    def __init__(self, spec, *args):
        assert spec == 0, spec
        FakeUsbCamera.opens += 1
        self.released = False
        self.frame = np.full((480, 640, 3), 90, np.uint8)

    def isOpened(self) -> bool:  # OpenCV's name
        return not self.released

    def set(self, prop, value) -> bool:
        return True

    def get(self, prop) -> float:
        return 30.0 if prop == 5 else 0.0  # CAP_PROP_FPS

    def read(self):
        return (not self.released), self.frame.copy()

    def release(self) -> None:
        self.released = True


def test_auto_opens_the_usb_camera_once(tmp_path, write_config, monkeypatch):
    import device.sources.opencv as opencv_source

    real_exists = os.path.exists
    monkeypatch.setattr(
        os.path, "exists", lambda p: True if str(p) == "/dev/video0" else real_exists(p)
    )
    monkeypatch.setattr(opencv_source.cv2, "VideoCapture", FakeUsbCamera)
    monkeypatch.chdir(tmp_path)  # no models/vtest.avi here: only the camera can be picked
    FakeUsbCamera.opens = 0
    runner = Runner(load_config(write_config(cameras=[{"name": "usb", "source": "auto"}])), 3)
    assert runner.pipelines[0].source.describe() == "camera 0"
    assert runner.run() == 0
    assert runner.metrics()["cameras"]["usb"]["results"] == 3
    assert FakeUsbCamera.opens == 1  # probed and used: one open, not two


def test_supervision_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        SupervisionConfig(max_restarts=-1)
    yaml.safe_dump(SupervisionConfig().model_dump())  # plain values, as in a config file
