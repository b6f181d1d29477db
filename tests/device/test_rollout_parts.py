"""The parts of model updates, one by one: what is signed, the archive's strictness, downloads
(real HTTP server), the model store's links, the exported bundle of a bare model, the shadow
limits of a command, and the keygen / sign command line."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from conversion.sign import generate_keypair, load_private_key, main, sign_folder
from device.classifier import Classifier
from device.preprocess import load_image
from device.rollout.archive import pack, unpack
from device.rollout.download import download
from device.rollout.errors import RolloutError
from device.rollout.signing import load_public_key, verify_bundle
from device.rollout.store import ModelStore, export_bundle


@pytest.fixture
def keys(tmp_path):
    key, pub, _ = generate_keypair(tmp_path / "keys" / "operator.key")
    return load_private_key(key), load_public_key(pub)


@pytest.fixture
def bundle(tmp_path, test_data) -> Path:
    """A bundle folder exported from Coral's bare MobileNet V1 0.25 + ImageNet labels."""
    coral = test_data / "coral"
    classifier = Classifier.open(
        coral / "mobilenet_v1_0.25_128_quant.tflite", coral / "imagenet_labels.txt"
    )
    export_bundle(classifier, tmp_path / "bundle")
    return tmp_path / "bundle"


# -- signing -----------------------------------------------------------------------------------------
def test_the_signature_covers_model_labels_and_manifest(tmp_path, bundle, keys):
    private, public = keys
    sha, signature = sign_folder(bundle, private)
    verify_bundle(bundle, sha, signature, public)  # passes
    for name, change in (
        ("labels.txt", lambda b: b.replace(b"tabby", b"fox")),
        ("model.json", lambda b: b.replace(b'"version": "1"', b'"version": "9"')),
    ):
        copy = tmp_path / f"tampered-{name}"
        copy.mkdir()
        for f in bundle.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        path = copy / name
        changed = change(path.read_bytes())
        assert changed != path.read_bytes()
        path.write_bytes(changed)
        with pytest.raises(RolloutError, match="bad signature") as err:
            verify_bundle(copy, sha, signature, public)
        assert err.value.stage == "verify"
    with pytest.raises(RolloutError, match="sha256 mismatch"):
        verify_bundle(bundle, "0" * 64, signature, public)
    with pytest.raises(RolloutError, match="not base64"):
        verify_bundle(bundle, sha, "***", public)
    with pytest.raises(RolloutError, match="has 3 bytes"):
        verify_bundle(bundle, sha, "AAAA", public)


def test_a_device_refuses_a_private_key_or_other_files_as_its_public_key(tmp_path):
    from device.errors import ConfigError

    key, _, _ = generate_keypair(tmp_path / "operator.key")
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        load_public_key(key)
    with pytest.raises(ConfigError, match=r"rollout\.public_key not found"):
        load_public_key(tmp_path / "missing.pub")


# -- the archive -------------------------------------------------------------------------------------
def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_pack_is_reproducible_and_unpack_round_trips(tmp_path, bundle):
    a = pack(bundle, tmp_path / "a.tar.gz").read_bytes()
    os.utime(bundle / "model.tflite", (1, 1))  # file times do not matter
    b = pack(bundle, tmp_path / "b.tar.gz").read_bytes()
    assert a == b
    out = tmp_path / "out"
    out.mkdir()
    assert unpack(tmp_path / "a.tar.gz", out, 10**8) == ["model.tflite", "labels.txt", "model.json"]
    assert (out / "model.tflite").read_bytes() == (bundle / "model.tflite").read_bytes()


@pytest.mark.parametrize(
    "members, why",
    [
        ([_file("../model.tflite", b"x")], "holds '../model.tflite'"),
        ([_file("sub/model.tflite", b"x")], "holds 'sub/model.tflite'"),
        ([_file("model.tflite", b"x"), _file("run.sh", b"x")], "holds 'run.sh'"),
        ([_file("model.tflite", b"x"), _file("model.tflite", b"y")], "holds model.tflite twice"),
        ([_file("labels.txt", b"x")], "has no model.tflite"),
    ],
)
def test_unpack_refuses_anything_but_a_flat_bundle(tmp_path, members, why):
    archive = _tar_gz(tmp_path / "bad.tar.gz", members)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RolloutError, match="the bundle archive " + why):
        unpack(archive, out, 10**6)
    assert not (tmp_path / "model.tflite").exists()


def test_unpack_refuses_links_bombs_and_non_archives(tmp_path):
    link = tarfile.TarInfo("model.tflite")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    cases = {
        "link": (_tar_gz(tmp_path / "link.tar.gz", [(link, None)]), "link or special file"),
        # 50 MB of zeros packs into 50 KB: refused by the decompressed size, not the file size
        "bomb": (
            _tar_gz(tmp_path / "bomb.tar.gz", [_file("model.tflite", bytes(50 << 20))]),
            "unpacks to more than",
        ),
    }
    (tmp_path / "plain.tar.gz").write_bytes(b"not gzip at all")
    cases["plain"] = (tmp_path / "plain.tar.gz", "is not a readable .tar.gz")
    assert (tmp_path / "bomb.tar.gz").stat().st_size < 200_000
    for name, (archive, why) in cases.items():
        out = tmp_path / f"out-{name}"
        out.mkdir()
        with pytest.raises(RolloutError, match=why):
            unpack(archive, out, 1 << 20)
        assert sum(f.stat().st_size for f in out.iterdir()) <= 1 << 20


# -- downloads -----------------------------------------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/bundle.tar.gz")
            self.end_headers()
        elif self.path == "/endless":  # no Content-Length, more than the limit
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(bytes(1 << 16))
        else:
            super().do_GET()


@pytest.fixture
def web(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "bundle.tar.gz").write_bytes(os.urandom(300_000))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(www))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_limits(tmp_path, web):
    target = tmp_path / "got"
    get = functools.partial(download, max_bytes=1 << 20, timeout=10, allowed=["http"])
    assert get(f"{web}/bundle.tar.gz", target).bytes == 300_000
    cases = [
        (f"{web}/bundle.tar.gz", {"max_bytes": 100_000}, "is 300,000 bytes; at most 100,000"),
        (f"{web}/endless", {}, "larger than 1,048,576 bytes"),
        (f"{web}/missing", {}, "answered HTTP 404"),
        (f"{web}/to-ftp", {}, "scheme 'ftp' is not allowed"),
        (f"{web}/bundle.tar.gz", {"allowed": ["https"]}, "scheme 'http' is not allowed"),
        ("http://127.0.0.1:9/x", {}, "cannot reach it"),
    ]
    for url, options, why in cases:
        with pytest.raises(RolloutError, match=why) as err:
            get(url, target, **options)
        assert err.value.stage == "download"
        assert "/missing" not in err.value.message and "to-ftp" not in err.value.message


# -- the store -----------------------------------------------------------------------------------------
def test_store_links_promote_swap_and_prune(tmp_path):
    store = ModelStore(tmp_path / "state")
    folders = []
    for sha in ("a" * 64, "b" * 64, "c" * 64):
        staged = store.incoming()
        (staged / "model.tflite").write_bytes(sha.encode())
        folders.append(store.install(staged, sha))
    a, b, c = folders
    assert store.current() is None and store.promote(a) is None
    assert store.promote(b) == a and (store.current(), store.previous()) == (b, a)
    assert store.swap() == (a, b) and (store.current(), store.previous()) == (a, b)
    store.promote(c)
    assert (store.current(), store.previous()) == (c, a)
    assert store.prune() == ["b" * 12] and not b.exists()
    assert os.readlink(store.root / "current") == "c" * 12  # relative: the folder can move
    store.set_link("previous", None)
    with pytest.raises(Exception, match="no previous model"):
        store.swap()


def test_an_exported_bare_model_classifies_exactly_as_before(tmp_path, test_data):
    coral = test_data / "coral"
    image = load_image(coral / "cat.bmp")
    for model in ("mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v1_0.25_128_quant.tflite"):
        before = Classifier.open(coral / model, coral / "imagenet_labels.txt")
        manifest = export_bundle(before, tmp_path / model)
        assert manifest.input.mean is not None  # spelt out (raw pixels would read as 0/1)
        after = Classifier.open(tmp_path / model)
        assert after.bundle.ref == before.bundle.ref and after.bundle.labels == before.bundle.labels
        assert np.array_equal(after.scores(image), before.scores(image))


# -- command payloads ----------------------------------------------------------------------------------
def test_shadow_plans_within_the_limits():
    from device.commands import CommandError
    from device.config import InferenceConfig
    from device.rollout.config import RolloutConfig
    from device.rollout.service import RolloutService, ShadowRequest

    with pytest.raises(ValueError, match=r"shadow\.frames 100 is over limits\.max_frames 50"):
        RolloutConfig(limits={"max_frames": 50})
    cfg = RolloutConfig(limits={"max_frames": 150, "max_seconds": 60, "allow_skip": False})
    service = RolloutService(cfg, InferenceConfig(), [], [], lambda classifiers: None)
    plan = service.plan(ShadowRequest())
    assert (plan.frames, plan.seconds, plan.min_agreement) == (100, None, 0.9)
    plan = service.plan(ShadowRequest(seconds=30, min_agreement=0.5, max_latency_ms=80))
    assert (plan.frames, plan.seconds, plan.min_agreement, plan.max_latency_ms) == (
        None,
        30,
        0.5,
        80,
    )
    for request, why in (
        (ShadowRequest(frames=151), "over the limit of 150"),
        (ShadowRequest(seconds=61), "over the limit of 60"),
        (None, "allow_skip: false"),
    ):
        with pytest.raises(CommandError, match=why):
            service.plan(request)
    with pytest.raises(ValueError, match="not both"):
        ShadowRequest(frames=5, seconds=5)


# -- the command line ----------------------------------------------------------------------------------
def test_keygen_and_sign_command_line(tmp_path, test_data, capsys, monkeypatch):
    key = tmp_path / "k" / "operator.key"
    monkeypatch.setenv("SIGNING_PASS", "correct horse")
    assert main(["keygen", "--out", str(key), "--passphrase-env", "SIGNING_PASS"]) == 0
    assert (key.stat().st_mode & 0o777) == 0o600 and key.with_suffix(".pub").exists()
    assert main(["keygen", "--out", str(key)]) == 2
    assert "never overwrites a key" in capsys.readouterr().err
    model = test_data / "coral" / "mobilenet_v1_0.25_128_quant.tflite"
    labels = test_data / "coral" / "imagenet_labels.txt"
    args = ["sign", str(model), "--labels", str(labels), "--key", str(key), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "is encrypted: give --passphrase-env" in capsys.readouterr().err
    assert main([*args, "--passphrase-env", "SIGNING_PASS", "--url", "https://h/m/"]) == 0
    out = capsys.readouterr().out
    payloads = list(tmp_path.glob("*.json"))
    assert len(payloads) == 1 and payloads[0].read_text().count('"signature"') == 1
    assert "https://h/m/mobilenet_v1_0.25_128_quant-1-" in payloads[0].read_text()
    assert "sha256:" in out and "mosquitto_pub" in out
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0\0\0\0TFL3" + bytes(1000))
    assert main(["sign", str(garbage), "--key", str(key), "--passphrase-env", "SIGNING_PASS"]) == 2
    assert "cannot be loaded as a TFLite model" in capsys.readouterr().err
