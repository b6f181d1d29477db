"""``edgecam-convert keygen`` and ``edgecam-convert sign``: the operator's side of model updates.

``keygen`` makes an Ed25519 key pair: ``operator.key`` (PKCS#8 PEM, mode 0600, optionally
encrypted with a passphrase from an environment variable) stays on the operator's
workstation; ``operator.pub`` goes to every device (``rollout.public_key``).

``sign`` turns a bundle folder (or a bare ``.tflite`` with its labels) into what a device
accepts: a reproducible archive ``<name>-<version>-<sha12>.tar.gz`` and, beside it, the
``cmd/model`` payload (``.json``) with the model's sha256 and the Ed25519 signature of the
bundle statement (``device.rollout.signing`` defines what is signed). The model is loaded in
the device's own interpreter first, so a bundle that cannot run is never signed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from device import __version__
from device.cliapp import EXIT_OK, ArgumentParser, CliApp
from device.errors import EdgecamError
from device.manifest import MANIFEST_FILE, read_manifest, write_manifest
from device.rollout.archive import pack
from device.rollout.signing import bundle_digests, key_id, statement

PASSPHRASE_HELP = "the name of an environment variable holding the key's passphrase"


class SigningError(EdgecamError):
    """A key or bundle the signing commands cannot use."""


# -- keys ----------------------------------------------------------------------------------------------
def _passphrase(env: str | None) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise SigningError(
            f"the environment variable {env} is not set or empty",
            f"export {env}=... (the passphrase), or leave out --passphrase-env",
        )
    return value.encode("utf-8")


def generate_keypair(key_path: Path, force: bool = False, passphrase_env: str | None = None):
    """Write a new private key to ``key_path`` (0600) and its public key to ``.pub`` beside
    it; return (private key path, public key path, key id)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    pub_path = key_path.with_suffix(".pub")
    for path in (key_path, pub_path):
        if path.exists() and not force:
            raise SigningError(
                f"{path} exists: keygen never overwrites a key",
                "give another --out, or --force to replace it (devices that trust the old "
                "public key then refuse bundles signed with the new one)",
            )
    passphrase = _passphrase(passphrase_env)
    key = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    pub_path.write_bytes(public_pem)
    return key_path, pub_path, key_id(key.public_key())


def load_private_key(path: Path, passphrase_env: str | None = None):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(
            f"cannot read the signing key {path}: {exc.strerror}",
            "give --key operator.key (make one with `edgecam-convert keygen`)",
        ) from None
    try:
        key = load_pem_private_key(data, password=_passphrase(passphrase_env))
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        raise SigningError(
            f"{path} is encrypted: give --passphrase-env VAR"
            if passphrase_env is None
            else f"{path} is not encrypted: leave out --passphrase-env"
        ) from None
    except ValueError:
        raise SigningError(
            f"{path} is not a PEM private key, or the passphrase is wrong",
            "use the operator.key that `edgecam-convert keygen` wrote",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(
            f"{path} is not an Ed25519 key", "make one with `edgecam-convert keygen`"
        )
    return key


# -- signing -------------------------------------------------------------------------------------------
def sign_folder(folder: Path, private_key: Any) -> tuple[str, str]:
    """(sha256 of model.tflite, base64 signature of the folder's statement)."""
    digests = bundle_digests(folder)
    signature = private_key.sign(statement(digests))
    return digests[0].sha256, base64.b64encode(signature).decode("ascii")


@dataclass(frozen=True)
class SignedBundle:
    archive: Path
    payload_file: Path
    payload: dict[str, Any]
    name: str
    version: str
    key_id: str


def stage_bundle(
    source: Path,
    dest: Path,
    labels: Path | None = None,
    name: str | None = None,
    version: str | None = None,
) -> Any:
    """Copy a bundle folder (or make one from a bare .tflite) into ``dest`` with a model.json
    that says how to preprocess (written from the model's tensors when the source has none).
    The model is loaded in the device's interpreter on the way; returns its ModelBundle."""
    from device.classifier import Classifier
    from device.rollout.store import export_bundle

    had_manifest = source.is_dir() and (source / MANIFEST_FILE).is_file()
    classifier = Classifier.open(source, labels)
    manifest = export_bundle(classifier, dest)
    if name or version:
        changed = replace(manifest, name=name or manifest.name, version=version or manifest.version)
        write_manifest(dest / MANIFEST_FILE, changed)
    elif had_manifest:
        shutil.copyfile(source / MANIFEST_FILE, dest / MANIFEST_FILE)  # signed as it was made
    return classifier.bundle


def sign_bundle(
    source: Path,
    key: Path,
    out_dir: Path | None = None,
    url: str | None = None,
    labels: Path | None = None,
    name: str | None = None,
    version: str | None = None,
    passphrase_env: str | None = None,
) -> SignedBundle:
    private_key = load_private_key(key, passphrase_env)
    with tempfile.TemporaryDirectory(prefix="edgecam-sign-") as tmp:
        staged = Path(tmp) / "bundle"
        bundle = stage_bundle(source, staged, labels, name, version)
        manifest = read_manifest(staged / MANIFEST_FILE)
        sha256, signature = sign_folder(staged, private_key)
        stem = f"{_safe(manifest.name or bundle.name)}-{_safe(manifest.version)}-{sha256[:12]}"
        out = out_dir or source.parent
        archive = pack(staged, out / f"{stem}.tar.gz")
    if url is None:
        link = f"https://<your server>/{archive.name}"
    elif url.endswith("/"):
        link = url + archive.name
    else:
        link = url
    payload = {"url": link, "sha256": sha256, "signature": signature}
    payload_file = out / f"{stem}.json"
    payload_file.write_text(json.dumps(payload, indent=2) + "\n")
    return SignedBundle(
        archive,
        payload_file,
        payload,
        manifest.name or bundle.name,
        manifest.version,
        key_id(private_key.public_key()),
    )


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:64] or "model"


# -- the command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="edgecam-convert",
        description="Sign model bundles for updates over MQTT (docs/fleet.md).",
    )
    p.add_argument("--version", action="version", version=f"edgecam {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser(
        "keygen",
        help="make the operator's Ed25519 key pair",
        description="Write operator.key (private, mode 0600: keep it on this workstation, "
        "offline and backed up) and operator.pub (copy it to every device, rollout.public_key).",
    )
    k.add_argument("--out", type=Path, default=Path("operator.key"), help="private key file")
    k.add_argument("--force", action="store_true", help="replace existing key files")
    k.add_argument("--passphrase-env", metavar="VAR", help=f"encrypt the key: {PASSPHRASE_HELP}")
    s = sub.add_parser(
        "sign",
        help="sign a bundle: archive + cmd/model payload",
        description="Check that BUNDLE loads, pack it into <name>-<version>-<sha12>.tar.gz and "
        "write the cmd/model payload (sha256 + Ed25519 signature) beside it as .json.",
    )
    s.add_argument("bundle", type=Path, help="a bundle folder, or a bare .tflite (with --labels)")
    s.add_argument("--key", type=Path, required=True, help="the operator's private key")
    s.add_argument("--passphrase-env", metavar="VAR", help=PASSPHRASE_HELP)
    s.add_argument("--out", type=Path, help="output folder (default: beside BUNDLE)")
    s.add_argument(
        "--url",
        help="where devices will download the archive (a URL ending in / gets the file name)",
    )
    s.add_argument("--labels", type=Path, help="labels file for a bare .tflite")
    s.add_argument("--name", help="model name written into model.json")
    s.add_argument("--model-version", help="model version written into model.json")
    return p


def keygen(args: argparse.Namespace) -> int:
    key, pub, kid = generate_keypair(args.out, args.force, args.passphrase_env)
    print(f"private key: {key} (mode 0600; key id {kid})")
    print(f"public key:  {pub}")
    print("Keep the private key off the devices (offline, backed up); copy the public key to")
    print("each device and set rollout.public_key to its path (docs/fleet.md).")
    return EXIT_OK


def sign(args: argparse.Namespace) -> int:
    signed = sign_bundle(
        args.bundle,
        args.key,
        args.out,
        args.url,
        args.labels,
        args.name,
        args.model_version,
        args.passphrase_env,
    )
    print(f"bundle:    {signed.archive} ({signed.name} {signed.version}, key {signed.key_id})")
    print(f"sha256:    {signed.payload['sha256']}")
    print(f"payload:   {signed.payload_file}")
    print("send it (after putting the archive at the url):")
    print(
        "  mosquitto_pub -q 1 -t edgecam/<device>/cmd/model -f "
        + json.dumps(str(signed.payload_file))
    )
    return EXIT_OK


APP = CliApp(build_parser, {"keygen": keygen, "sign": sign})


def main(argv: Sequence[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
