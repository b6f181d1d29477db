"""The systemd unit and the device's sd_notify messages (device/systemd.py).

``systemd-analyze verify`` checks the unit. The device runs for real (``edgecam-device run`` on
the sample clip with the reference model in a subprocess) with ``NOTIFY_SOCKET`` pointing at a
datagram socket the test listens on, and ``WATCHDOG_USEC`` of 2 s: READY=1 comes after the first
result, WATCHDOG=1 while frames are classified, STOPPING=1 on SIGTERM. Faults are injected into
the real components by a wrapper that patches them before calling the CLI: the interpreter held
at a gate (no READY before its first result), a source whose read then blocks forever, and an
interpreter that always raises (with a supervision that keeps restarting it, so the process stays
up): in both the pings stop while the process runs on, which is what makes systemd restart it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from device.systemd import Notifier

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "edgecam-device.service"
WATCHDOG_USEC = "2000000"  # 2 s: pings every 0.5 s, a camera is stale after 1 s

INJECT = """
import os, sys, threading, time
from pathlib import Path

import device.cli
from device.inference import InferenceBackend
from device.sources.opencv import OpenCVSource

mode, marks = os.environ["INJECT"], Path(os.environ["MARKS"])
invoke = InferenceBackend.invoke
calls = {"invoke": 0, "read": 0}

def gated_invoke(self):
    calls["invoke"] += 1
    if calls["invoke"] == 1:  # hold the first inference until the test opens the gate
        (marks / "at-gate").touch()
        while not (marks / "open").exists():
            time.sleep(0.02)
    return invoke(self)

def blocking(read):
    def blocking_read(self):
        calls["read"] += 1
        if calls["read"] > 15:
            (marks / "blocked").touch()
            threading.Event().wait()  # a camera stuck in a read that never returns
        return read(self)
    return blocking_read

def failing_invoke(self):
    calls["invoke"] += 1
    if calls["invoke"] > 10:
        (marks / "failing").touch()
        raise RuntimeError("injected interpreter failure")
    return invoke(self)

if mode == "stall":
    InferenceBackend.invoke = gated_invoke
    for name in ("read", "read_native"):  # whichever the capture thread calls
        if hasattr(OpenCVSource, name):
            setattr(OpenCVSource, name, blocking(getattr(OpenCVSource, name)))
elif mode == "raise":
    InferenceBackend.invoke = failing_invoke
sys.exit(device.cli.main(sys.argv[1:]))
"""


class NotifyListener:
    """A datagram socket like systemd's notify socket; records (time, message) pairs."""

    def __init__(self, address: str):
        self.address = address  # as NOTIFY_SOCKET says it ("@name" or a path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> list[tuple[float, str]]:
        """Wait until ``predicate(messages)`` is true; return the messages then."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; notify messages so far: {self.texts()[-10:]}"
                self._cond.wait(left)
            return list(self.messages)

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def index(self, field: str, start: int = 0) -> int | None:
        """Index of the first message at or after ``start`` that carries ``field``."""
        for i, (_, message) in enumerate(self.messages[start:], start):
            if field in message.split("\n"):
                return i
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    listeners: list[NotifyListener] = []

    def make(abstract: bool = False) -> NotifyListener:
        address = f"@edgecam-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify")
        listeners.append(NotifyListener(address))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.close()


@pytest.fixture
def device_proc(tmp_path):
    """Start ``edgecam-device run`` (optionally through the fault injector); killed after."""
    procs: list[subprocess.Popen] = []

    def start(config: Path, listener: NotifyListener, inject: str | None = None):
        env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=WATCHDOG_USEC)
        env.pop("WATCHDOG_PID", None)
        if inject:
            script = tmp_path / "inject.py"
            script.write_text(INJECT)
            (tmp_path / "marks").mkdir(exist_ok=True)
            env.update(INJECT=inject, MARKS=str(tmp_path / "marks"))
            argv = [sys.executable, str(script)]
        else:
            argv = [sys.executable, "-m", "device.cli"]
        proc = subprocess.Popen(
            [*argv, "run", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "device.log").open("wb"),
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def clip_config(write_config, tmp_path, **sections):
    return write_config(
        cameras=[{"name": "street", "source": "__clip__", "realtime": True, "loop": True}],
        alerts={"enabled": False},
        console={"format": "off", "jsonl_path": str(tmp_path / "results.jsonl")},
        **sections,
    )


def _clip(config: Path, test_data: Path) -> Path:
    config.write_text(config.read_text().replace("__clip__", str(test_data / "opencv/vtest.avi")))
    return config


def _results(tmp_path: Path) -> int:
    path = tmp_path / "results.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


# -- the unit ------------------------------------------------------------------------------------
def _verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` of the unit in a root that has systemd's own units and the
    command the unit runs (verify checks that it exists and is executable)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    exe = root / "opt/edgecam/venv/bin/edgecam-device"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None or not Path("/usr/lib/systemd/system").is_dir():
        pytest.skip("systemd-analyze not installed (Debian's systemd package; .ci/run installs it)")
    text = UNIT.read_text()
    done = _verify(tmp_path / "good", text)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stderr
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                "NoNewPrivileges=yes", "PrivateTmp=yes", "DevicePolicy=closed"):  # fmt: skip
        assert f"\n{key}" in text
    # the check is real: a misspelt key and a missing command are reported
    bad = _verify(tmp_path / "bad", text.replace("WatchdogSec=", "WatchdogSecs=")).stderr
    assert "Unknown key name 'WatchdogSecs'" in bad or "Unknown key 'WatchdogSecs'" in bad
    bad = _verify(tmp_path / "bad2", text.replace("/opt/edgecam/venv/bin/", "/opt/nowhere/"))
    assert bad.returncode != 0 and "is not executable" in bad.stderr


# -- the protocol ----------------------------------------------------------------------------------
def test_notifier_sends_to_abstract_and_path_sockets_and_honours_watchdog_pid(notify):
    for listener in (notify(abstract=True), notify()):
        notifier = Notifier.from_environ(
            {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000"}
        )
        assert notifier.watchdog_s == 30.0
        assert notifier.send("READY=1", "STATUS=hello")
        listener.wait_for(lambda ms: any(m == "READY=1\nSTATUS=hello" for _, m in ms))
        notifier.close()
    other_pid = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(other_pid).watchdog_s is None  # the watchdog is for pid 1
    assert not Notifier.from_environ({}).enabled
    assert not Notifier(None).send("READY=1")
    # a socket that went away: logged, not raised
    assert not Notifier("/nonexistent/notify").send("WATCHDOG=1")


# -- the device ------------------------------------------------------------------------------------
def test_device_ready_after_first_result_pings_while_classifying_stopping_on_sigterm(
    tmp_path, write_config, test_data, notify, device_proc, wait_until
):
    listener = notify(abstract=True)  # '@': the abstract namespace, as systemd often uses
    proc = device_proc(_clip(clip_config(write_config, tmp_path), test_data), listener)
    listener.wait_for(lambda ms: any("READY=1" in m.split("\n") for _, m in ms))
    ready = listener.index("READY=1")
    wait_until(lambda: _results(tmp_path) >= 1, 5, what="the first result in the jsonl file")
    assert "STATUS=classifying: street" in listener.messages[ready][1]
    # pings while frames flow, with more results behind them
    seen = _results(tmp_path)
    listener.wait_for(lambda ms: sum(m == "WATCHDOG=1" for _, m in ms[ready:]) >= 4)
    assert _results(tmp_path) > seen
    fps = re.compile(r"STATUS=classifying: street \d+\.\d fps; model mobilenet\S*@7aad0c74c5e3")
    listener.wait_for(lambda ms: any(fps.fullmatch(m) for _, m in ms[ready + 1 :]))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert listener.index("STOPPING=1", ready) is not None


def test_a_still_scene_skipped_by_the_motion_gate_keeps_feeding_the_watchdog(
    tmp_path, write_config, test_data, notify, device_proc, wait_until
):
    """Motion gating classifies a still scene only every heartbeat_s (here 60 s, far beyond
    the 1 s window): the frames it skips count as the camera being alive."""
    still = tmp_path / "still"
    still.mkdir()
    shutil.copyfile(test_data / "coral" / "cat.bmp", still / "cat.bmp")
    config = write_config(
        cameras=[
            {
                "name": "street",
                "source": str(still),
                "loop": True,
                "realtime": True,
                "fps": 10,
                "motion": {"enabled": True, "heartbeat_s": 60},
            }
        ],
        alerts={"enabled": False},
        console={"format": "off", "jsonl_path": str(tmp_path / "results.jsonl")},
    )
    listener = notify()
    device_proc(config, listener)
    listener.wait_for(lambda ms: any(m.startswith("READY=1") for _, m in ms))
    ready = listener.index("READY=1")

    def pings(count: int) -> None:
        listener.wait_for(lambda ms: sum(m == "WATCHDOG=1" for _, m in ms[ready:]) >= count)

    pings(6)  # 3 s: the first second after the start is classified (motion.hold_s)
    classified = _results(tmp_path)
    pings(12)  # 3 s more, three times the 1 s window, without a result ...
    assert _results(tmp_path) == classified  # ... yet the watchdog was fed
    assert not any(m.startswith("STATUS=stalled") for m in listener.texts())


def _assert_pings_stopped(listener: NotifyListener, proc: subprocess.Popen) -> None:
    """The device says it stalled, and no ping follows up to its next periodic status line
    (5 s later: longer than the 2 s watchdog) while the process still runs: systemd would have
    restarted it."""
    stalled = "STATUS=stalled: no results from street"
    messages = listener.wait_for(lambda ms: sum(m == stalled for _, m in ms) >= 2, timeout=30)
    first, second = [i for i, (_, m) in enumerate(messages) if m == stalled][:2]
    between = [m for _, m in messages[first + 1 : second]]
    assert "WATCHDOG=1" not in between, between
    assert messages[second][0] - messages[first][0] > 2.0  # longer than WatchdogSec
    assert proc.poll() is None, "the process should still run (systemd ends it)"


def test_no_ready_before_the_first_result_and_pings_stop_when_the_source_blocks(
    tmp_path, write_config, test_data, notify, device_proc, wait_until
):
    listener = notify()
    proc = device_proc(_clip(clip_config(write_config, tmp_path), test_data), listener, "stall")
    marks = tmp_path / "marks"
    # the first inference is held: the loop runs ("starting" status) but nothing is classified
    listener.wait_for(lambda ms: any(m.startswith("STATUS=starting") for _, m in ms))
    listener.wait_for(lambda ms: (marks / "at-gate").exists())
    assert listener.index("READY=1") is None and "WATCHDOG=1" not in listener.texts()
    (marks / "open").touch()
    listener.wait_for(lambda ms: any(m.startswith("READY=1") for _, m in ms))
    wait_until(lambda: _results(tmp_path) >= 1, 5, what="the first result in the jsonl file")
    listener.wait_for(lambda ms: sum(m == "WATCHDOG=1" for _, m in ms) >= 2)
    # then the source's read blocks forever: a stuck camera
    listener.wait_for(lambda ms: (marks / "blocked").exists())
    _assert_pings_stopped(listener, proc)
    assert (
        "systemd watchdog: no result from camera(s) street" in (tmp_path / "device.log").read_text()
    )


def test_pings_stop_when_the_interpreter_keeps_failing(
    tmp_path, write_config, test_data, notify, device_proc
):
    listener = notify()
    config = clip_config(
        write_config,
        tmp_path,
        supervision={"max_restarts": 1000, "restart_min_s": 0.1, "restart_max_s": 0.3},
    )
    proc = device_proc(_clip(config, test_data), listener, "raise")
    listener.wait_for(lambda ms: sum(m == "WATCHDOG=1" for _, m in ms) >= 2)
    listener.wait_for(lambda ms: (tmp_path / "marks" / "failing").exists())
    _assert_pings_stopped(listener, proc)
    log = (tmp_path / "device.log").read_text()
    assert "injected interpreter failure" in log and "restarting in" in log
