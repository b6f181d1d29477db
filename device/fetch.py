"""``make models``: the pretrained reference model, its labels and a sample clip, sha256-checked.

Files come from their public URLs (pinned commits), or are copied from ``EDGECAM_TEST_DATA``
(a folder laid out like ../shared/data) when that is set, or given with ``--from``.
Run as ``python -m device.fetch --dest models``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from device.errors import EdgecamError

log = logging.getLogger(__name__)

CORAL = "https://raw.githubusercontent.com/google-coral/test_data/104342d2d3480b3e66203073dac24f4e2dbb4c41"
OPENCV = "https://raw.githubusercontent.com/opencv/opencv/4.6.0/samples/data"


@dataclass(frozen=True)
class Asset:
    name: str  # file name under the destination
    url: str
    sha256: str
    local: str  # path inside a reference data folder
    what: str


ASSETS = (
    Asset(
        "mobilenet_v2_1.0_224_quant.tflite",
        f"{CORAL}/mobilenet_v2_1.0_224_quant.tflite",
        "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
        "coral/mobilenet_v2_1.0_224_quant.tflite",
        "ImageNet MobileNet V2 (uint8), 1001 classes",
    ),
    Asset(
        "imagenet_labels.txt",
        f"{CORAL}/imagenet_labels.txt",
        "b8aaeb5630c62626a7d124a05c0e14230a7ffdd2136a31d0190a4fb71c1d82f1",
        "coral/imagenet_labels.txt",
        "ImageNet labels (line = class index)",
    ),
    Asset(
        "vtest.avi",
        f"{OPENCV}/vtest.avi",
        "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
        "opencv/vtest.avi",
        "sample street clip (OpenCV samples)",
    ),
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, timeout: float = 60.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise EdgecamError(
            f"download failed: {url} ({exc})",
            "check the internet connection, or set EDGECAM_TEST_DATA to a folder that has "
            "coral/ and opencv/ (like ../shared/data) and run `make models` again",
        ) from None


def fetch(dest: Path, source_dir: Path | None = None) -> list[Path]:
    """Put every asset into ``dest`` (skipping those already there with the right hash)."""
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for asset in ASSETS:
        target = dest / asset.name
        if target.exists() and sha256_file(target) == asset.sha256:
            log.info("%s: already present", target)
            done.append(target)
            continue
        with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{asset.name}.", delete=False) as tmp:
            partial = Path(tmp.name)
        try:
            if source_dir is not None:
                src = source_dir / asset.local
                if not src.exists():
                    raise EdgecamError(
                        f"{src} not found", f"{source_dir} should hold {asset.local}"
                    )
                shutil.copyfile(src, partial)
                origin = str(src)
            else:
                _download(asset.url, partial)
                origin = asset.url
            digest = sha256_file(partial)
            if digest != asset.sha256:
                raise EdgecamError(
                    f"{asset.name} from {origin} has sha256 {digest[:16]}…, expected {asset.sha256[:16]}…",
                    "the file is corrupt or was changed upstream; delete it and try again",
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        log.info("%s: %s (from %s)", target, asset.what, origin)
        done.append(target)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device.fetch", description=__doc__)
    parser.add_argument("--dest", type=Path, default=Path("models"), help="destination folder")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="copy from this reference data folder (default: $EDGECAM_TEST_DATA)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = args.source or (
        Path(os.environ["EDGECAM_TEST_DATA"]) if os.environ.get("EDGECAM_TEST_DATA") else None
    )
    try:
        fetch(args.dest, source)
    except EdgecamError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
