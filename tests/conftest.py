"""Shared pytest fixtures: reference data and a real Mosquitto broker."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_test_data() -> Path | None:
    env = os.environ.get("EDGECAM_TEST_DATA")
    if env:
        return Path(env).resolve()
    fallback = REPO_ROOT.parent / "shared" / "data"
    return fallback if fallback.is_dir() else None


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The reference data folder (see ../shared/data/README.md)."""
    path = _find_test_data()
    if path is None or not path.is_dir():
        pytest.skip(
            "reference data not found: set EDGECAM_TEST_DATA to a folder like ../shared/data"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real Mosquitto broker on a free loopback port, restartable for outage tests."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        password_file: Path | None = None,
        extra: list[str] | None = None,
    ):
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.exe).exists():
            pytest.skip("mosquitto not installed: run `make install` (apt-get install mosquitto)")
        self.workdir = workdir
        self.port = port or free_port()
        self.password_file = password_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {workdir}/",
            f"persistence_file mosq-{self.port}.db",
        ]
        if os.geteuid() == 0:  # else mosquitto drops to user "mosquitto" and cannot read tmp files
            lines.append("user root")
        if password_file:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        lines += extra or []  # e.g. a second (TLS) listener
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = workdir / f"mosquitto-{self.port}.log"

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start within 10 s")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator:
    brokers: list[Broker] = []

    def make(**kwargs) -> Broker:
        b = Broker(tmp_path, **kwargs)
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running anonymous Mosquitto broker on a free port."""
    return broker_factory().start()


class Subscriber:
    """A real paho-mqtt 2.x subscriber that records every message it receives."""

    def __init__(
        self,
        port: int,
        topic: str = "#",
        client_id: str | None = None,
        clean_session: bool = True,
        auth: tuple[str, str] | None = None,
    ):
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{port}-{time.monotonic_ns()}",
            clean_session=clean_session,
        )
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.port = port

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def start(self) -> Subscriber:
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[tuple[str, bytes, bool]]:
        """Messages whose topic ends with ``suffix``."""
        with self._cond:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def json_on(self, suffix: str) -> list:
        """The JSON payloads of the messages whose topic ends with ``suffix`` (empty payloads,
        e.g. cleared retained messages, are skipped)."""
        import json

        return [json.loads(m[1]) for m in self.on(suffix) if m[1]]

    def matching(self, pattern: str) -> list[tuple[str, bytes, bool]]:
        """Messages whose whole topic matches the regular expression ``pattern``."""
        import re

        with self._cond:
            return [m for m in self.messages if re.fullmatch(pattern, m[0])]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        """Wait until predicate(messages) is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True


@pytest.fixture
def subscriber_factory():
    subs: list[Subscriber] = []

    def make(port: int, **kwargs) -> Subscriber:
        s = Subscriber(port, **kwargs).start()
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.stop()


# -- one config writer ---------------------------------------------------------------------------
def _merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def device_config_dict(test_data: Path, port: int | None = None, **sections) -> dict:
    """A device config for tests: the reference MobileNet V2, one camera ``street`` playing
    vtest.avi, one interpreter thread, console off, MQTT on ``port`` (disabled when None).
    ``sections`` deep-merge over it (``cameras=[...]`` replaces the list)."""
    coral = test_data / "coral"
    config: dict = {
        "device_id": "test-pi",
        "model": {
            "path": str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "labels": str(coral / "imagenet_labels.txt"),
        },
        "inference": {"threads": 1},
        "cameras": [{"name": "street", "source": str(test_data / "opencv" / "vtest.avi")}],
        "mqtt": (
            {
                "host": "127.0.0.1",
                "port": port,
                "classification_interval": 0.5,
                "reconnect_min_s": 1,
                "reconnect_max_s": 2,
                "keepalive": 10,
            }
            if port is not None
            else {"enabled": False}
        ),
        "console": {"format": "off"},
        "metrics": {"interval": 60},
    }
    return _merge(config, sections)


@pytest.fixture
def write_config(tmp_path: Path, test_data: Path):
    """``write_config(port=None, name="device.yaml", **sections) -> Path``: a device config
    file in tmp_path (see ``device_config_dict``); state files (outbox, snapshots) go to
    tmp_path too, never into the checkout."""
    import yaml

    def write(port: int | None = None, name: str = "device.yaml", **sections) -> Path:
        state = {
            "alerts": {
                "snapshots": {"dir": str(tmp_path / "snapshots")},
                "outbox": {"path": str(tmp_path / "outbox.sqlite3"), "flush_timeout_s": 1.0},
            }
        }
        config = device_config_dict(test_data, port, **_merge(state, sections))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until it returns a true value (returned); AssertionError on timeout.
    Use instead of fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(name="wait_until")
def wait_until_fixture():
    """The ``wait_until`` helper as a fixture (tests cannot import conftest by name under
    --import-mode=importlib)."""
    return wait_until


# -- commands ------------------------------------------------------------------------------------
def send_command(sub, name: str, payload=None, device: str = "test-pi", timeout: float = 20.0):
    """Publish ``payload`` (a dict, bytes or None) on ``edgecam/<device>/cmd/<name>`` with the
    subscriber's own client (QoS 1) and return the next reply on ``.../cmd/<name>/result``
    (the subscriber must receive that topic). AssertionError when no reply comes."""
    import json

    result = f"edgecam/{device}/cmd/{name}/result"
    before = len(sub.on(result))
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    sub.client.publish(f"edgecam/{device}/cmd/{name}", payload or b"", qos=1)
    if not sub.wait_for(lambda ms: sum(t == result for t, _, _ in ms) > before, timeout):
        raise AssertionError(f"no reply on {result} within {timeout:g} s")
    return json.loads(sub.on(result)[before][1])


@pytest.fixture(name="send_command")
def send_command_fixture():
    """The ``send_command`` helper as a fixture."""
    return send_command


# -- S3 and the ingest server (issue 9) ----------------------------------------------------------
class S3Server:
    """A real S3-protocol server (``moto_server``, in memory) on a free loopback port.

    ``env`` holds what a boto3 client in another process needs (test credentials, region,
    endpoint; the instance-metadata lookup off); ``client()`` is a boto3 client for this
    process; ``new_bucket()`` makes an empty bucket and returns its name."""

    def __init__(self, workdir: Path):
        import sys

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(workdir / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials"),
        }
        self.log = workdir / "moto.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self._buckets = 0
        wait_until(self._up, timeout=30, what=f"moto_server on port {self.port}")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {self.log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        self._buckets += 1
        name = f"edgecam-test-{self._buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One ``moto_server`` for the session (``.endpoint``, ``.env``, ``.client()``,
    ``.new_bucket()``); each test takes its own bucket."""
    pytest.importorskip("moto.server", reason="moto[server] is in the [dev] extra")
    pytest.importorskip("boto3", reason="boto3 is in the [train] extra")
    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


class IngestServer:
    """A real ``edgecam-train serve`` (uvicorn) in a subprocess on a free loopback port.

    ``add_token(name, admin=False) -> token`` writes the tokens file (the running server picks
    changes up within a second); ``start()`` / ``stop(kill=False)`` can be repeated (outage
    tests); ``url`` is ``http(s)://127.0.0.1:<port>``; ``log()`` is the server's output.
    ``tls`` is a folder from the ``tls_certs`` fixture (``server.crt``, ``server.key``)."""

    def __init__(self, workdir: Path, inbox: str | None = None, tls: Path | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None):  # fmt: skip
        self.workdir = workdir
        self.inbox = inbox or str(workdir / "inbox")
        self.tokens = workdir / "tokens.txt"
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.logfile = workdir / f"ingest-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if not self.tokens.exists():
            self.tokens.write_text("")

    def add_token(self, name: str, admin: bool = False) -> str:
        from training.ingest.tokens import add_token

        return add_token(self.tokens, name, role="admin" if admin else "device", replace=True)

    def command(self) -> list[str]:
        import sys

        cmd = [sys.executable, "-m", "training.cli", "serve", self.inbox,
               "--tokens", str(self.tokens), "--port", str(self.port), "--log-interval", "1"]  # fmt: skip
        if self.tls:
            cmd += ["--tls-cert", str(self.tls / "server.crt"), "--tls-key", str(self.tls / "server.key")]  # fmt: skip
        return cmd + list(self.args)

    def start(self) -> IngestServer:
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, env=self.env,
            stdout=self.logfile.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self.healthy, timeout=30, what=f"the ingest server on port {self.port}")
        return self

    def healthy(self) -> bool:
        import http.client
        import ssl

        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the ingest server is not running: {self.log()[-3000:]}")
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls / "ca.crt"))
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


def _ingest_servers(base: Path) -> Iterator:
    pytest.importorskip("uvicorn", reason="the ingest server needs the [train] extra")
    servers: list[IngestServer] = []

    def make(**kwargs) -> IngestServer:
        workdir = base / f"ingest-{len(servers)}"
        workdir.mkdir()
        server = IngestServer(workdir, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def ingest_server_factory(tmp_path: Path) -> Iterator:
    """``make(inbox=None, tls=None, args=(), env=None) -> IngestServer`` (not started: add
    tokens, then ``.start()``); every server is stopped at the end of the test."""
    yield from _ingest_servers(tmp_path)


@pytest.fixture(scope="module")
def module_ingest_server_factory(tmp_path_factory) -> Iterator:
    """``ingest_server_factory`` whose servers live until the end of the test module."""
    yield from _ingest_servers(tmp_path_factory.mktemp("ingest"))


# -- TLS -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> Path:
    """A private test CA (``ca.crt``) and a server certificate it signed for 127.0.0.1 and
    localhost (``server.crt``, ``server.key``), made with the openssl command (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", *key, "-days", "2", "-subj", "/CN=edgecam-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", *key, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return d


@pytest.fixture(scope="session")
def street_frames(test_data: Path) -> list:
    """The first 60 frames of opencv/vtest.avi (people walking in a street), RGB arrays."""
    import cv2

    cap = cv2.VideoCapture(str(test_data / "opencv" / "vtest.avi"))
    frames = []
    while len(frames) < 60:
        ok, bgr = cap.read()
        assert ok, "opencv/vtest.avi has fewer than 60 frames"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames
