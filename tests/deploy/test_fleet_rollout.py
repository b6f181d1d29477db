"""Fleet rollout with Ansible (deploy/ansible/site.yml) against real OpenSSH servers.

Three "Pis" are three sshd processes on loopback ports (each with its own config and host key),
each with its own install prefix standing in for / (``edgecam_prefix``: /etc, /var/lib and the
model bundles live under it). The restart command of each host starts the real device
(``edgecam-device run`` on the sample clip, publishing to a real Mosquitto); the rollout checks
each host's retained MQTT status for the new model's sha256 — from the control machine for one,
from the host itself for another. ``make test-fleet`` (about a minute; left out of the default run).

- A model goes out canary first, then to the rest; a host whose service does not restart is
  rolled back and reported while the others complete; the summary table says who is where.
- A model the canary cannot run (an Edge TPU model, no Edge TPU) is rolled back on the canary
  and the rest of the fleet is not touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from device.fetch import sha256_file
from device.manifest import LABELS_FILE, MODEL_FILE, InputSpec, Manifest, write_manifest

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
SSHD = Path("/usr/sbin/sshd")
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

RESTART = """#!/bin/sh
# test stand-in for `systemctl restart edgecam-device`: stop the device, start it again
P={prefix}
echo "$(date +%s.%N) {name}" >> {restarts}
if [ -f "$P/broken" ]; then
    echo "Job for edgecam-device.service failed (test: this host is broken)" >&2
    exit 1
fi
if [ -f "$P/device.pid" ]; then
    pid=$(cat "$P/device.pid")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
fi
setsid {python} -m device.cli run --config "$P/etc/edgecam/device.yaml" \\
    >>"$P/device.log" 2>&1 </dev/null &
echo $! > "$P/device.pid"
"""

CONFIG = """device_id: "{{{{ edgecam_device_id }}}}"
model:
  path: "{{{{ edgecam_state_dir }}}}/models/current"
  labels: null
inference: {{threads: 1}}
cameras:
  - {{name: street, source: {clip}, realtime: true, loop: true}}
mqtt: {{host: 127.0.0.1, port: {port}, keepalive: 10, reconnect_max_s: 2}}
alerts: {{enabled: false}}
console: {{format: "off"}}
"""


def make_bundle(folder: Path, tflite: Path, labels: Path, name: str) -> str:
    folder.mkdir(parents=True)
    shutil.copyfile(tflite, folder / MODEL_FILE)
    shutil.copyfile(labels, folder / LABELS_FILE)
    sha = sha256_file(folder / MODEL_FILE)
    raw = InputSpec(mean=(128.0,) * 3, std=(128.0,) * 3)  # input quantisation (q - 128) / 128
    write_manifest(folder, Manifest(name=name, version="1", variant="int8", sha256=sha, input=raw))
    return sha


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Fleet:
    """sshd "hosts" with their prefixes, an inventory, and ansible-playbook runs."""

    def __init__(self, tmp_path: Path, names: list[str], broker_port: int, test_data: Path):
        self.tmp = tmp_path
        self.names = names
        self.procs: list[subprocess.Popen] = []
        self.restarts = tmp_path / "restarts.log"
        self.key = tmp_path / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key], check=True)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.short = Path(tempfile.mkdtemp(prefix="ecssh"))  # ssh control sockets: short paths
        self.ports: dict[str, int] = {}
        for name in names:
            self.ports[name] = self._start_sshd(name)
        self.config = tmp_path / "device.yaml.j2"
        self.config.write_text(
            CONFIG.format(clip=test_data / "opencv" / "vtest.avi", port=broker_port)
        )
        self.inventory = tmp_path / "inventory.yml"
        self.inventory.write_text(yaml.safe_dump(self._inventory(broker_port), sort_keys=False))

    def prefix(self, name: str) -> Path:
        return self.tmp / "hosts" / name

    def models(self, name: str) -> Path:
        return self.prefix(name) / "var/lib/edgecam/models"

    def _start_sshd(self, name: str) -> int:
        from socket import socket as sock

        home = self.tmp / "sshd" / name
        home.mkdir(parents=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", home / "host_key"], check=True
        )
        shutil.copyfile(f"{self.key}.pub", home / "authorized_keys")
        with sock() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (home / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_key\n"
            f"PidFile {home}/sshd.pid\nAuthorizedKeysFile {home}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
        )
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", home / "sshd_config"],
            stdout=subprocess.DEVNULL,
            stderr=(home / "sshd.log").open("wb"),
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while not _port_open(port):
            assert proc.poll() is None, (home / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
        return port

    def _inventory(self, broker_port: int) -> dict:
        hosts = {}
        for name in self.names:
            prefix = self.prefix(name)
            restart = prefix / "restart.sh"
            prefix.mkdir(parents=True, exist_ok=True)
            restart.write_text(
                RESTART.format(
                    prefix=prefix, name=name, restarts=self.restarts, python=sys.executable
                )
            )
            restart.chmod(0o755)
            for sub in ("etc/edgecam", "var/lib/edgecam/models"):
                (prefix / sub).mkdir(parents=True, exist_ok=True)
            hosts[name] = {
                "ansible_port": self.ports[name],
                "edgecam_prefix": str(prefix),
                "edgecam_restart_command": str(restart),
            }
        return {
            "edgecam": {
                "hosts": hosts,
                "vars": {
                    "ansible_host": "127.0.0.1",
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                    "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "edgecam_code": False,
                    "edgecam_become": False,
                    "edgecam_user": "root",
                    "edgecam_group": "root",
                    "edgecam_python": sys.executable,
                    "edgecam_mqtt_host": "127.0.0.1",
                    "edgecam_mqtt_port": broker_port,
                    "edgecam_verify_timeout": 20,
                },
            }
        }

    def set_host_var(self, name: str, key: str, value) -> None:
        data = yaml.safe_load(self.inventory.read_text())
        data["edgecam"]["hosts"][name][key] = value
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False))

    def seed(self, name: str, bundle: Path, sha: str) -> None:
        """What install.sh leaves: the bundle in models/<sha12>/ and current -> it."""
        shutil.copytree(bundle, self.models(name) / sha[:12])
        (self.models(name) / "current").symlink_to(sha[:12])

    def deploy(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
            ANSIBLE_HOME=str(self.tmp / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(self.tmp / "ansible-tmp"),
            ANSIBLE_REMOTE_TEMP=str(self.tmp / "ansible-remote-tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.short),
            ANSIBLE_NOCOLOR="1",
        )
        return subprocess.run(
            [PLAYBOOK, "-i", self.inventory, ANSIBLE / "site.yml", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def restart_order(self) -> list[str]:
        lines = self.restarts.read_text().split("\n") if self.restarts.exists() else []
        return [line.split()[1] for line in lines if line.strip()]

    def close(self) -> None:
        for name in self.names:
            pidfile = self.prefix(name) / "device.pid"
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(self.short, ignore_errors=True)


def summary(output: str) -> dict[str, str]:
    """The summary table's lines by host (the table is printed too: pytest -s shows it)."""
    text = output.split("edgecam rollout summary:", 1)[1]
    print(f"\nedgecam rollout summary:{text}")
    table = text.strip().splitlines()[1:]
    return {line.split()[0]: line for line in table}


@pytest.fixture
def fleet(tmp_path, broker, test_data):
    if not SSHD.exists():
        pytest.skip("openssh-server not installed (.ci/run installs it)")
    if not PLAYBOOK.exists():
        pytest.skip("ansible-core not installed: pip install -e '.[deploy]'")
    if os.geteuid() != 0:
        pytest.skip("the test sshd servers log in as root")
    f = Fleet(tmp_path, ["pi-a", "pi-b", "pi-c"], broker.port, test_data)
    yield f
    f.close()


def test_rollout_canary_first_failed_host_rolled_back_others_done_then_bad_canary_stops(
    fleet, tmp_path, test_data, broker, subscriber_factory
):
    coral = test_data / "coral"
    labels = coral / "imagenet_labels.txt"
    old = make_bundle(
        tmp_path / "b/old", coral / "mobilenet_v2_1.0_224_quant.tflite", labels, "mnv2"
    )
    new = make_bundle(
        tmp_path / "b/new", coral / "mobilenet_v1_0.25_128_quant.tflite", labels, "mnv1"
    )
    bad = make_bundle(
        tmp_path / "b/bad", coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", labels, "tpu"
    )
    for name in fleet.names:
        fleet.seed(name, tmp_path / "b/old", old)
    (fleet.prefix("pi-c") / "broken").touch()  # pi-c's service will not restart
    for name in ("pi-a", "pi-c"):  # a bundle that no link names: pruned after a good rollout
        shutil.copytree(tmp_path / "b/old", fleet.models(name) / "0123456789ab")
    fleet.set_host_var("pi-b", "edgecam_verify", "host")  # checked from the host itself
    sub = subscriber_factory(broker.port, topic="edgecam/+/status")

    # -- 1: the new model, with a config, to all three: pi-c fails, the others complete -------
    run = fleet.deploy(
        "-e", f"edgecam_model={tmp_path / 'b/new'}", "-e", f"edgecam_config={fleet.config}"
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output  # 2: some host failed
    order = fleet.restart_order()
    # canary first; pi-c's restart fails, and so does the one after its rollback
    assert order[0] == "pi-a" and sorted(order[1:]) == ["pi-b", "pi-c", "pi-c"], output
    for name in ("pi-a", "pi-b"):
        models = fleet.models(name)
        assert os.readlink(models / "current") == new[:12]
        assert os.readlink(models / "previous") == old[:12]
        status = json.loads(sub.on(f"{name}/status")[-1][1])
        assert status["state"] == "online" and status["model"]["sha256"] == new
    assert not (fleet.models("pi-a") / "0123456789ab").exists()  # pruned
    assert os.readlink(fleet.models("pi-c") / "current") == old[:12]  # rolled back
    assert (fleet.models("pi-c") / "0123456789ab").exists()  # not after a failure
    assert not (fleet.models("pi-c") / "previous").exists()  # as it was
    assert (fleet.models("pi-c") / new[:12] / MODEL_FILE).exists()  # delivered, not current
    rows = summary(output)
    assert re.search(rf"pi-a\s+canary\s+ok\s+{new[:12]}\s+{old[:12]}\s+mqtt: online", rows["pi-a"])
    assert re.search(
        rf"pi-b\s+rollout\s+ok\s+{new[:12]}\s+{old[:12]}\s+mqtt from the host: online", rows["pi-b"]
    )
    assert re.search(r"pi-c\s+rollout\s+FAILED, rolled back\s+", rows["pi-c"])
    assert "test: this host is broken" in rows["pi-c"]

    # -- 2: a model the canary cannot run: rolled back there, pi-b not touched ------------------
    restarts_before = fleet.restart_order()
    run = fleet.deploy("-e", f"edgecam_model={tmp_path / 'b/bad'}", "--limit", "pi-a,pi-b")
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert fleet.restart_order()[len(restarts_before) :] == ["pi-a", "pi-a"]  # new, then back
    assert os.readlink(fleet.models("pi-a") / "current") == new[:12]
    assert os.readlink(fleet.models("pi-a") / "previous") == old[:12]
    assert "Edge TPU" in (fleet.prefix("pi-a") / "device.log").read_text()
    assert not (fleet.models("pi-b") / bad[:12]).exists()  # never reached
    assert os.readlink(fleet.models("pi-b") / "current") == new[:12]
    rows = summary(output)
    assert re.search(r"pi-a\s+canary\s+FAILED, rolled back\s+" + new[:12], rows["pi-a"])
    assert f"did not report model {bad[:12]}" in rows["pi-a"]
    assert "mqtt: online with mnv1@" + new[:12] in rows["pi-a"]  # the old model is back
    assert re.search(r"pi-b\s+not run\s+the rollout stopped before this host", rows["pi-b"])
    status = json.loads(sub.on("pi-a/status")[-1][1])
    assert status["state"] == "online" and status["model"]["sha256"] == new
