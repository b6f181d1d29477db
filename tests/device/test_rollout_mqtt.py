"""Model updates over MQTT, end to end: a real device loop (Runner), a real Mosquitto, a real
HTTP server, real models signed with a real Ed25519 key.

The device runs MobileNet V2 (Coral's quantised model) on the looping street clip. The bundles:
the same network with 64 bytes appended (another sha256, the same answers: it agrees), MobileNet
V1 0.25/128 (it disagrees on these frames), a file that is not a model (signed all the same),
and the good bundle sent with a wrong sha256 or a signature by another key.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from conversion.sign import generate_keypair, load_private_key, sign_bundle, sign_folder
from device.config import load_config
from device.rollout.archive import pack

CORAL_V2 = "mobilenet_v2_1.0_224_quant.tflite"
CORAL_V1 = "mobilenet_v1_0.25_128_quant.tflite"


@pytest.fixture(scope="module")
def served(tmp_path_factory, test_data):
    """Signed bundles on a local HTTP server: {name: cmd/model payload}, plus the keys."""
    root = tmp_path_factory.mktemp("rollout")
    www = root / "www"
    www.mkdir()
    key, pub, _ = generate_keypair(root / "keys" / "operator.key")
    other, _, _ = generate_keypair(root / "keys" / "other.key")
    coral = test_data / "coral"
    labels = coral / "imagenet_labels.txt"

    handler = functools.partial(QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"

    src = root / "src"
    src.mkdir()
    padded = src / "mnv2-repacked.tflite"  # the same network, another sha256
    padded.write_bytes((coral / CORAL_V2).read_bytes() + b"\0" * 64)
    payloads = {
        "agrees": sign_bundle(padded, key, www, base, labels, "mnv2-repacked", "2").payload,
        "disagrees": sign_bundle(coral / CORAL_V1, key, www, base, labels).payload,
    }
    # not a model: `edgecam-convert sign` would refuse it, so sign it by hand
    garbage = src / "garbage"
    garbage.mkdir()
    (garbage / "model.tflite").write_bytes(b"\0\0\0\0TFL3" + os.urandom(50_000))
    shutil.copyfile(labels, garbage / "labels.txt")
    sha, signature = sign_folder(garbage, load_private_key(key))
    pack(garbage, www / "garbage.tar.gz")
    payloads["garbage"] = {"url": base + "garbage.tar.gz", "sha256": sha, "signature": signature}
    good = payloads["agrees"]
    payloads["wrong_sha"] = {**good, "sha256": payloads["disagrees"]["sha256"]}
    _, foreign = sign_folder(_unpacked(www, good, root / "agrees"), load_private_key(other))
    payloads["foreign_key"] = {**good, "signature": foreign}
    yield {"payloads": payloads, "public_key": pub, "base": base}
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def _unpacked(www: Path, payload: dict, dest: Path) -> Path:
    from device.rollout.archive import unpack

    dest.mkdir()
    unpack(www / payload["url"].rsplit("/", 1)[1], dest, 10**8)
    return dest


def device_config(write_config, test_data, port, served, tmp_path, **rollout):
    clip = str(test_data / "opencv" / "vtest.avi")
    return write_config(
        port,
        cameras=[{"name": "street", "source": clip, "loop": True, "realtime": True, "fps": 10}],
        rollout={
            "public_key": str(served["public_key"]),
            "state_dir": str(tmp_path / "state"),
            "allowed_schemes": ["http"],
            "shadow": {"frames": 15, "min_agreement": 0.9},
            "watch_s": 1,
            **rollout,
        },
    )


class Device:
    """A Runner in a thread, stopped on exit."""

    def __init__(self, path: Path):
        from device.runner import Runner

        self.runner = Runner(load_config(path), config_path=path)
        self.thread = threading.Thread(target=self.runner.run, name="test-runner")

    def __enter__(self) -> Device:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()

    @property
    def ref(self) -> str:
        return self.runner.pipelines[0].classifier.bundle.ref


def run_command(sub, payload: dict, wait_until, name: str = "model", timeout: float = 60.0):
    """Send ``cmd/<name>`` and return every reply to it up to the final one."""
    result = f"edgecam/test-pi/cmd/{name}/result"
    rid = payload["id"]

    def replies() -> list[dict]:
        return [r for r in sub.json_on(result) if r.get("id") == rid]

    def final(replies: list[dict]) -> bool:
        return any(r.get("step") in (None, "promoted", "rolled_back", "unchanged") for r in replies)

    sub.client.publish(f"edgecam/test-pi/cmd/{name}", json.dumps(payload), qos=1)
    wait_until(lambda: final(replies()), timeout, what=f"the final reply to {rid}")
    return replies()


def statuses(sub) -> list[dict]:
    return sub.json_on("edgecam/test-pi/status")


def refs_after(sub, count: int) -> set[str]:
    """The model refs of classifications after the first ``count`` classifications."""
    return {m["model"] for m in sub.json_on("/street/classification")[count:]}


def test_bad_updates_leave_the_old_model_running_and_say_why(
    broker, subscriber_factory, write_config, test_data, tmp_path, served, wait_until
):
    payloads = served["payloads"]
    path = device_config(write_config, test_data, broker.port, served, tmp_path)
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/#")
    with Device(path) as device:
        wait_until(lambda: sub.json_on("/street/classification"), 30, what="classifications")
        assert run_command(sub, {"id": "ready"}, wait_until, name="state")[-1]["ok"]
        old_ref, old_sha = device.ref, device.runner.status["model"]["sha256"]

        # refused before anything starts: a scheme that is not allowed, a shadow over the limit
        reply = run_command(
            sub, {**payloads["agrees"], "id": "ftp", "url": "ftp://x/b"}, wait_until
        )
        assert reply[-1]["ok"] is False and "scheme 'ftp' is not allowed" in reply[-1]["error"]
        too_long = {**payloads["agrees"], "id": "long", "shadow": {"frames": 10**6}}
        reply = run_command(sub, too_long, wait_until)
        assert "over the limit of 5000" in reply[-1]["error"]

        cases = [
            ("wrong_sha", "verify", "sha256 mismatch"),
            ("foreign_key", "verify", "bad signature"),
            ("garbage", "load", "cannot be loaded"),
            ("disagrees", "shadow", "below min_agreement 0.9"),
        ]
        for name, stage, why in cases:
            seen = len(sub.json_on("/street/classification"))
            replies = run_command(sub, {**payloads[name], "id": name}, wait_until)
            steps = [r["step"] for r in replies]
            last = replies[-1]
            assert steps[0] == "accepted" and last["step"] == "rolled_back", (name, replies)
            assert last["ok"] is False and last["result"]["stage"] == stage, (name, last)
            assert why in last["error"], (name, last)
            assert last["result"]["model"]["sha256"] == old_sha
            # the old model goes on classifying
            wait_until(lambda n=seen: len(sub.json_on("/street/classification")) > n + 3, 20)
            assert refs_after(sub, seen) == {old_ref}, name
            assert device.ref == old_ref
        shadow = [r for r in replies if r["step"] == "shadow"][-1]["result"]
        assert shadow["done"] and shadow["frames"] >= 15 and shadow["agreement"] < 0.5
        assert shadow["latency_ms"]["p50"] > 0 and shadow["current_latency_ms"]["p50"] > 0
        assert statuses(sub)[-1]["model"]["sha256"] == old_sha
        # nothing was kept: no links, no bundles, no downloads left
        models = tmp_path / "state" / "models"
        assert sorted(p.name for p in models.iterdir()) == []

        # told to skip the shadow, the device takes even the disagreeing model; its input is
        # 128x128 instead of 224x224: frames in flight are prepared again, nothing fails
        skip = {**payloads["disagrees"], "id": "skip", "shadow": None}
        replies = run_command(sub, skip, wait_until)
        assert [r["step"] for r in replies][-2:] == ["loaded", "promoted"], replies
        assert replies[-1]["result"]["shadow"] == "skipped"
        seen = len(sub.json_on("/street/classification"))
        wait_until(lambda: len(sub.json_on("/street/classification")) > seen + 5, 20)
        assert refs_after(sub, seen) == {device.ref} and device.ref != old_ref
        assert device.runner.pipelines[0].health.last_error is None


def test_good_update_is_promoted_survives_a_restart_and_rolls_back(
    broker, subscriber_factory, write_config, test_data, tmp_path, served, wait_until
):
    good = served["payloads"]["agrees"]
    path = device_config(write_config, test_data, broker.port, served, tmp_path)
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/#")
    models = tmp_path / "state" / "models"
    with Device(path) as device:
        wait_until(lambda: sub.json_on("/street/classification"), 30, what="classifications")
        assert run_command(sub, {"id": "ready"}, wait_until, name="state")[-1]["ok"]
        old_ref, old_sha = device.ref, device.runner.status["model"]["sha256"]

        replies = run_command(sub, {**good, "id": "up1"}, wait_until)
        steps = [r["step"] for r in replies]
        assert steps[:4] == ["accepted", "downloaded", "verified", "loaded"], replies
        assert steps[-2:] == ["shadow", "promoted"] and all(r["ok"] for r in replies), replies
        shadow = replies[-2]["result"]
        assert shadow["agreement"] == 1.0 and shadow["frames"] >= 15
        promoted = replies[-1]["result"]
        assert promoted["model"]["sha256"] == good["sha256"]
        assert promoted["previous"]["sha256"] == old_sha
        new_ref = f"mnv2-repacked@{good['sha256'][:12]}"
        assert device.ref == new_ref
        wait_until(lambda: statuses(sub)[-1]["model"]["sha256"] == good["sha256"], 10)
        status = statuses(sub)[-1]
        assert status["model"]["name"] == "mnv2-repacked" and status["model"]["version"] == "2"
        seen = len(sub.json_on("/street/classification"))
        wait_until(lambda: len(sub.json_on("/street/classification")) > seen + 3, 20)
        assert refs_after(sub, seen) == {new_ref}
        assert os.readlink(models / "current") == good["sha256"][:12]
        assert os.readlink(models / "previous") == old_sha[:12]

        # the same bundle again: nothing to do
        again = run_command(sub, {**good, "id": "up2"}, wait_until)
        assert [r["step"] for r in again] == ["unchanged"] and again[0]["ok"]

    # a restart runs the promoted model (models/current wins over model.path)
    with Device(path) as device:
        assert device.ref == new_ref
        wait_until(lambda: statuses(sub)[-1]["model"]["sha256"] == good["sha256"], 10)
        seen = len(sub.json_on("/street/classification"))
        wait_until(lambda: len(sub.json_on("/street/classification")) > seen + 3, 30)
        assert refs_after(sub, seen) == {new_ref}

        # a manual rollback brings the model of the config back (kept as `previous`)
        replies = run_command(sub, {"id": "rb"}, wait_until, name="rollback")
        assert replies[-1]["ok"] and replies[-1]["step"] == "rolled_back", replies
        assert replies[-1]["result"]["model"]["sha256"] == old_sha
        assert device.ref == old_ref
        wait_until(lambda: statuses(sub)[-1]["model"]["sha256"] == old_sha, 10)
        seen = len(sub.json_on("/street/classification"))
        wait_until(lambda: len(sub.json_on("/street/classification")) > seen + 3, 20)
        assert refs_after(sub, seen) == {old_ref}
        assert os.readlink(models / "current") == old_sha[:12]
        assert os.readlink(models / "previous") == good["sha256"][:12]


def test_a_device_without_a_public_key_refuses_updates(
    broker, subscriber_factory, write_config, test_data, tmp_path, served, wait_until
):
    path = device_config(write_config, test_data, broker.port, served, tmp_path, public_key=None)
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/#")
    with Device(path):
        wait_until(lambda: statuses(sub), 30, what="the status")
        for name, payload in (("model", served["payloads"]["agrees"]), ("rollback", {})):
            reply = run_command(sub, {**payload, "id": name}, wait_until, name=name)[-1]
            assert reply["ok"] is False and "rollout.public_key is not set" in reply["error"]
            assert "edgecam-convert keygen" in reply["error"]


def test_a_new_model_that_fails_to_run_is_rolled_back(
    broker, subscriber_factory, write_config, test_data, tmp_path, served, wait_until, monkeypatch
):
    """A model that raises on live frames, in shadow and after a promotion (the failure is
    injected into the real interpreter's call: no real model fails only at run time)."""
    from device.classifier import Classifier

    good = served["payloads"]["agrees"]
    path = device_config(write_config, test_data, broker.port, served, tmp_path, watch_s=10)
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/#")

    def boom(*args, **kwargs):
        raise RuntimeError("the interpreter failed")

    with Device(path) as device:
        wait_until(lambda: sub.json_on("/street/classification"), 30, what="classifications")
        assert run_command(sub, {"id": "ready"}, wait_until, name="state")[-1]["ok"]
        old_ref = device.ref
        with monkeypatch.context() as patch:
            patch.setattr(Classifier, "classify", boom)  # the shadow's call, not the live one
            replies = run_command(sub, {**good, "id": "shadow-fails"}, wait_until)
        last = replies[-1]
        assert last["step"] == "rolled_back" and last["result"]["stage"] == "shadow", replies
        assert "failed on a live frame: RuntimeError: the interpreter failed" in last["error"]
        assert device.ref == old_ref

        replies = run_command(sub, {**good, "id": "run-fails", "shadow": None}, wait_until)
        assert replies[-1]["step"] == "promoted" and device.ref != old_ref
        device.runner.pipelines[0].classifier.classify_tensor = boom  # the live model fails

        def rolled_back():
            return [
                r
                for r in sub.json_on("/cmd/model/result")
                if r["id"] == "run-fails" and r["step"] == "rolled_back"
            ]

        last = wait_until(rolled_back, 30, what="the automatic rollback")[0]
        assert last["ok"] is False and last["result"]["stage"] == "run"
        assert "camera street failed with the new model: inference: RuntimeError" in last["error"]
        wait_until(lambda: device.ref == old_ref, 10, what="the old model back")
        seen = len(sub.json_on("/street/classification"))
        wait_until(lambda: len(sub.json_on("/street/classification")) > seen + 3, 20)
        assert refs_after(sub, seen) == {old_ref}
        models = tmp_path / "state" / "models"
        assert os.readlink(models / "current") != good["sha256"][:12]
