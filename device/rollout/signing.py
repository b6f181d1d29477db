"""What an operator signs, and how a device checks it (Ed25519, the ``cryptography`` package).

The signature covers a short text *statement* that names every file of a bundle with its
sha256 and size, so the network, the labels and the manifest are all covered::

    edgecam-bundle-signature/1
    model.tflite <sha256 hex> <bytes>
    labels.txt <sha256 hex> <bytes>
    model.json <sha256 hex> <bytes>

(lines for labels.txt and model.json only when the bundle has them; LF line ends, UTF-8).
The signature is the 64-byte Ed25519 signature of those bytes, in standard base64. The device
rebuilds the statement from the files it unpacked and checks the signature with the operator's
public key; the ``sha256`` of a ``model`` command is the sha256 of ``model.tflite`` (the one the
retained status reports and ``models/<sha12>/`` is named after).

Keys are PEM files: the private key PKCS#8 (``operator.key``, on the operator's workstation
only), the public key SubjectPublicKeyInfo (``operator.pub``, on every device). Signing lives
in ``conversion.sign``; a device only verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from device.errors import ConfigError
from device.files import read_bytes
from device.manifest import LABELS_FILE, MANIFEST_FILE, MODEL_FILE
from device.rollout.errors import RolloutError

STATEMENT_HEADER = "edgecam-bundle-signature/1"
BUNDLE_FILES = (MODEL_FILE, LABELS_FILE, MANIFEST_FILE)  # in statement order
MAX_KEY_BYTES = 16 * 1024


@dataclass(frozen=True)
class FileDigest:
    name: str
    sha256: str
    size: int


def digest_file(path: Path) -> FileDigest:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(path.name, digest.hexdigest(), size)


def bundle_digests(folder: Path) -> list[FileDigest]:
    """The digests of the bundle files present in ``folder`` (model.tflite must be there)."""
    if not (folder / MODEL_FILE).is_file():
        raise RolloutError("verify", f"{folder} has no {MODEL_FILE}")
    return [digest_file(folder / name) for name in BUNDLE_FILES if (folder / name).is_file()]


def statement(digests: list[FileDigest]) -> bytes:
    """The bytes that are signed (module docstring)."""
    lines = [STATEMENT_HEADER] + [f"{d.name} {d.sha256} {d.size}" for d in digests]
    return ("\n".join(lines) + "\n").encode("utf-8")


def key_id(public_key: object) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined]
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path):
    """The Ed25519 public key in a PEM file; ConfigError naming the file otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = read_bytes(
        path,
        "rollout.public_key",
        ConfigError,
        max_bytes=MAX_KEY_BYTES,
        missing_hint="copy the operator's public key (operator.pub from `edgecam-convert "
        "keygen`) to the device and set rollout.public_key to its path",
    )
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(
            f"rollout.public_key: {path} is not a PEM public key",
            "use the operator.pub that `edgecam-convert keygen` wrote (never the private key)",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"rollout.public_key: {path} is not an Ed25519 key",
            "make an Ed25519 key pair with `edgecam-convert keygen`",
        )
    return key


def decode_signature(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RolloutError("verify", "the signature is not base64") from None
    if len(raw) != 64:
        raise RolloutError("verify", f"the signature has {len(raw)} bytes; Ed25519 has 64")
    return raw


def verify_bundle(folder: Path, sha256: str, signature: str, public_key) -> list[FileDigest]:
    """Check that ``folder``'s model.tflite has ``sha256`` and that ``signature`` signs the
    bundle's statement with ``public_key``; RolloutError (stage "verify") says which failed."""
    from cryptography.exceptions import InvalidSignature

    digests = bundle_digests(folder)
    model = digests[0]
    if model.sha256 != sha256.lower():
        raise RolloutError(
            "verify",
            f"sha256 mismatch: {MODEL_FILE} has sha256 {model.sha256[:12]}…, the command says "
            f"{sha256[:12]}…",
            "send the sha256 that `edgecam-convert sign` printed for this bundle",
        )
    raw = decode_signature(signature)
    try:
        public_key.verify(raw, statement(digests))
    except InvalidSignature:
        raise RolloutError(
            "verify",
            f"bad signature: it does not sign this bundle with the operator key {key_id(public_key)}",
            "sign the bundle with `edgecam-convert sign BUNDLE --key operator.key` using the "
            "private key that matches rollout.public_key",
        ) from None
    return digests
