"""MQTT over TLS with a client certificate (mutual TLS), against a real Mosquitto."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLI = [sys.executable, "-m", "device.cli"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=edgecam-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "edgecam-device")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return d


def test_mutual_tls(tmp_path, test_data, certs, broker_factory, subscriber_factory):
    tls_port = free_port()
    broker = broker_factory(
        extra=[
            f"listener {tls_port} 127.0.0.1",
            f"cafile {certs / 'ca.crt'}",
            f"certfile {certs / 'server.crt'}",
            f"keyfile {certs / 'server.key'}",
            "require_certificate true",
        ]
    ).start()
    sub = subscriber_factory(broker.port)  # plain listener of the same broker
    coral = test_data / "coral"
    config = tmp_path / "device.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "tls-pi",
                "model": {
                    "path": str(coral / "mobilenet_v1_0.25_128_quant.tflite"),
                    "labels": str(coral / "imagenet_labels.txt"),
                },
                "cameras": [{"source": str(test_data / "opencv" / "vtest.avi"), "realtime": True}],
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": tls_port,
                    "classification_interval": 0.2,
                    "tls": {
                        "ca_file": str(certs / "ca.crt"),
                        "cert_file": str(certs / "client.crt"),
                        "key_file": str(certs / "client.key"),
                    },
                },
                "console": {"format": "off"},
            }
        )
    )
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "15"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(
        lambda ms: any(t == "edgecam/tls-pi/cam0/classification" for t, _, _ in ms), 10
    ), proc.stderr
    statuses = [json.loads(p)["state"] for t, p, _ in sub.messages if t == "edgecam/tls-pi/status"]
    assert statuses[0] == "online" and statuses[-1] == "offline"


def test_tls_missing_file_is_config_error(tmp_path, test_data):
    coral = test_data / "coral"
    config = tmp_path / "device.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "path": str(coral / "mobilenet_v1_0.25_128_quant.tflite"),
                    "labels": str(coral / "imagenet_labels.txt"),
                },
                "cameras": [{"source": str(test_data / "opencv" / "vtest.avi")}],
                "mqtt": {"tls": {"ca_file": str(tmp_path / "missing-ca.crt")}},
            }
        )
    )
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mqtt.tls.ca_file" in proc.stderr and "missing-ca.crt" in proc.stderr


def tls_broker(broker_factory, certs: Path) -> int:
    """A broker with TLS listeners (server certificate for localhost / 127.0.0.1)."""
    tls_port = free_port()
    tls = [
        f"cafile {certs / 'ca.crt'}",
        f"certfile {certs / 'server.crt'}",
        f"keyfile {certs / 'server.key'}",
    ]
    # 127.0.0.2 is loopback too, but not in the certificate's names
    broker_factory(
        extra=[f"listener {tls_port} 127.0.0.1", *tls, f"listener {tls_port} 127.0.0.2", *tls]
    ).start()
    return tls_port


def run_device(tmp_path: Path, test_data: Path, host: str, port: int, ca: Path) -> str:
    """Run the device for a while against the TLS broker; its log (stderr)."""
    coral = test_data / "coral"
    config = tmp_path / "device.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "path": str(coral / "mobilenet_v1_0.25_128_quant.tflite"),
                    "labels": str(coral / "imagenet_labels.txt"),
                },
                "cameras": [{"source": str(test_data / "opencv" / "vtest.avi"), "fps": 10}],
                "mqtt": {"host": host, "port": port, "tls": {"ca_file": str(ca)}},
                "console": {"format": "off"},
                "alerts": {"enabled": False},
            }
        )
    )
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "20", "--realtime"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_tls_verification_failures_are_named_with_the_fix(
    tmp_path, test_data, certs, broker_factory
):
    port = tls_broker(broker_factory, certs)
    # a CA that did not sign the broker's certificate
    other = tmp_path / "other"
    other.mkdir()
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=other,
    )  # fmt: skip
    log = run_device(tmp_path, test_data, "127.0.0.1", port, other / "ca.crt")
    assert "TLS certificate verification failed" in log, log
    assert f"mqtt.tls.ca_file ({other / 'ca.crt'})" in log and "fix: set mqtt.tls.ca_file" in log
    assert "not reachable" not in log
    assert log.count("TLS certificate verification failed") == 1  # once, not once per retry

    # the right CA, but a host name the certificate does not list
    log = run_device(tmp_path, test_data, "127.0.0.2", port, certs / "ca.crt")
    if "not reachable" in log:  # 127.0.0.2 is not routed here
        pytest.skip("127.0.0.2 is not reachable on this machine")
    assert "not valid for the host name '127.0.0.2'" in log, log
    assert "fix: set mqtt.host to a name or address listed in the certificate" in log
