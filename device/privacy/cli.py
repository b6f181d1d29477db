"""``edgecam-device redact``: what privacy does to your own images, with the loop's own code.

Each image goes through ``PrivacyGuard.protect`` (masks, then faces found by the detector and
redacted) and is written as a JPEG into ``--out``; the faces found (box in pixels, score) are
printed, so that the threshold (``--min-score``) and the margin can be tuned on frames of the
camera before they go into the config (``privacy.faces``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from device.errors import ConfigError, EdgecamError
from device.privacy.config import METHODS, FacesConfig, PrivacyConfig

DEFAULT_QUALITY = 90
_FLAGS = {
    "model": "--model",
    "min_score": "--min-score",
    "margin": "--margin",
    "tile_px": "--tile",
    "threads": "--threads",
}


def add_parser(sub: Any) -> None:
    """The ``redact`` subcommand on ``edgecam-device``'s subparsers."""
    p = sub.add_parser(
        "redact",
        help="redact faces (and masks) in image files, print the faces found",
        description="Redact faces (and a camera's privacy masks) in image files with the code "
        "the camera loop uses for snapshots and samples; write the results as JPEGs into --out "
        "and print each face found (box in pixels, score). Tune --min-score and --margin on "
        "your camera's frames, then put them in the config (privacy.faces). See "
        "docs/privacy.md.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, BMP)")
    p.add_argument("--out", type=Path, required=True, help="folder for the redacted JPEGs")
    p.add_argument(
        "--config",
        type=Path,
        help="device config: its privacy.faces settings (flags win) and, with --camera, that "
        "camera's masks",
    )
    p.add_argument("--camera", help="apply this camera's privacy masks (needs --config)")
    p.add_argument("--model", help="face detector .tflite (privacy.faces.model)")
    p.add_argument("--min-score", type=float, help="detection threshold (privacy.faces.min_score)")
    p.add_argument(
        "--margin", type=float, help="grow face boxes by this fraction (privacy.faces.margin)"
    )
    p.add_argument("--method", choices=METHODS, help="blur, pixelate or box (privacy.faces.method)")
    p.add_argument(
        "--tile",
        type=int,
        dest="tile_px",
        help="also scan overlapping squares of this many pixels, for small faces "
        "(privacy.faces.tile_px)",
    )
    p.add_argument("--threads", type=int, default=None, help="detector CPU threads")
    p.add_argument(
        "--quality",
        type=int,
        default=DEFAULT_QUALITY,
        help=f"JPEG quality (default {DEFAULT_QUALITY})",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image")


def privacy_section(args: argparse.Namespace) -> PrivacyConfig:
    """The ``privacy`` section the flags describe: the config file's (or the defaults), faces
    on, the flags given; only ``--camera``'s masks."""
    base = PrivacyConfig()
    if args.config is not None:
        from device.config import load_config

        base = load_config(args.config).privacy
    if args.camera is not None:
        if args.config is None:
            raise ConfigError("--camera needs --config (the masks are in its privacy section)")
        cameras = {k: v for k, v in base.cameras.items() if k == args.camera}
        if not cameras:
            raise ConfigError(
                f"{args.config} has no privacy masks for camera {args.camera!r}",
                f"cameras with masks: {', '.join(base.cameras) or 'none'}",
            )
    else:
        cameras = {}
    values = base.faces.model_dump()
    flags = {
        "enabled": True,
        "model": args.model,
        "min_score": args.min_score,
        "margin": args.margin,
        "method": args.method,
        "tile_px": args.tile_px,
        "threads": args.threads,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    from device.cli import _section  # one flag-error format for every command

    return PrivacyConfig(faces=_section(FacesConfig, _FLAGS, **values), cameras=cameras)


def _output_path(out: Path, image: Path, taken: set[Path]) -> Path:
    """``<out>/<stem>.jpg``, never the input itself nor a name used before in this run."""
    stem = image.stem
    candidate = out / f"{stem}.jpg"
    n = 1
    while candidate.resolve() in taken or candidate.resolve() == image.resolve():
        n += 1
        candidate = out / f"{stem}-redacted{'' if n == 2 else f'-{n - 1}'}.jpg"
    taken.add(candidate.resolve())
    return candidate


def cmd_redact(args: argparse.Namespace) -> int:
    from device.alerts.snapshots import SnapshotError, encode_jpeg
    from device.preprocess import load_image
    from device.privacy.detector import FaceDetector
    from device.privacy.guard import PrivacyGuard, Withheld

    if not 1 <= args.quality <= 100:
        raise ConfigError(f"--quality: {args.quality} is not in 1..100")
    privacy = privacy_section(args)
    faces = privacy.faces
    detector = FaceDetector(
        faces.model, min_score=faces.min_score, threads=faces.threads, tile_px=faces.tile_px
    )
    guard = PrivacyGuard(privacy, detector=detector)
    camera = args.camera or "redact"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgecamError(f"cannot create the output folder {args.out}: {exc}") from None
    status = 0
    taken: set[Path] = set()
    for path in args.images:
        try:
            image = load_image(path)
            safe = guard.protect(camera, image, "image")
            target = _output_path(args.out, path, taken)
            target.write_bytes(encode_jpeg(safe.pixels, args.quality))
        except (EdgecamError, Withheld, SnapshotError, OSError) as exc:
            message = exc.message if isinstance(exc, EdgecamError) else str(exc)
            print(f"error: {path}: {message}", file=sys.stderr)
            status = 1
            continue
        height, width = image.shape[:2]
        found = [f.as_dict(width, height) for f in safe.faces]
        if args.json:
            record = {
                "image": str(path),
                "output": str(target),
                "width": width,
                "height": height,
                "faces": found,
                "redaction": safe.redaction.to_json() if safe.redaction else None,
                "detect_ms": round(detector.last_ms, 2),
            }
            print(json.dumps(record), flush=True)
            continue
        print(
            f"{path} -> {target}: {len(found)} face{'' if len(found) == 1 else 's'} "
            f"({detector.ref}, {detector.spec.name}, min_score {faces.min_score:g}, "
            f"{faces.method}, margin {faces.margin:g}"
            f"{f', tiles of {faces.tile_px} px' if faces.tile_px else ''}; "
            f"{detector.last_ms:.1f} ms)"
        )
        for face in found:
            x0, y0, x1, y1 = face["box"]
            print(f"  box {x0},{y0} {x1},{y1} ({x1 - x0}x{y1 - y0} px)  score {face['score']:.3f}")
    return status
