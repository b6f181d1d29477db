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
