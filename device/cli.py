"""``edgecam-device``: classify images, run the camera loop, validate a config, benchmark,
redact faces (device.privacy.cli)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device import __version__
from device.cliapp import ArgumentParser, numbers
from device.errors import EdgecamError
from device.privacy import cli as redact

if TYPE_CHECKING:
    from device.config import DeviceConfig, InferenceConfig, ModelConfig

log = logging.getLogger("edgecam")


def _add_model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="a .tflite file or a model bundle folder")
    p.add_argument("--labels", help="labels file (one per line, or '<id> <label>' lines)")
    p.add_argument(
        "--mean",
        type=numbers,
        metavar="M[,M,M]",
        help="normalisation mean: one number, or R,G,B (default: the model's own)",
    )
    p.add_argument(
        "--std",
        type=numbers,
        metavar="S[,S,S]",
        help="normalisation std: one number, or R,G,B (default: the model's own)",
    )
    p.add_argument("--resize", choices=["bilinear", "area", "nearest"], help="resize filter")
    p.add_argument("--crop", choices=["none", "center"], help="centre-crop to the model's aspect")
    p.add_argument(
        "--allow-failed-gate",
        action="store_true",
        help="run a bundle whose verification gate failed in `make convert`",
    )
    _add_inference_args(p)


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, help="interpreter CPU threads (inference.threads)")
    p.add_argument(
        "--no-xnnpack", action="store_true", help="disable the XNNPACK delegate (inference.xnnpack)"
    )
    p.add_argument(
        "--edgetpu", action="store_true", help="run on a Coral Edge TPU (inference.edgetpu)"
    )
    p.add_argument(
        "--edgetpu-device", help="usb, usb:0, pci:0 (inference.edgetpu_device; default usb)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="edgecam-device",
        description="edgecam device runtime: classify camera frames with TFLite, publish over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edgecam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("classify", help="classify image files", description="Classify image files.")
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, BMP)")
    _add_model_args(p, required=True)
    p.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")

    p = sub.add_parser(
        "run", help="run the camera loop", description="Run the camera -> TFLite -> MQTT loop."
    )
    p.add_argument("--config", type=Path, help="device config YAML (default: built-in defaults)")
    p.add_argument(
        "--source", help="override the source of every camera (auto, 0, file, URL, folder)"
    )
    p.add_argument("--model", help="override model.path")
    p.add_argument("--labels", help="override model.labels")
    _add_inference_args(p)
    p.add_argument("--device-id", help="override device_id")
    p.add_argument("--mqtt-host", help="override mqtt.host")
    p.add_argument("--mqtt-port", type=int, help="override mqtt.port")
    p.add_argument("--no-mqtt", action="store_true", help="do not connect to a broker")
    p.add_argument("--frames", type=int, help="stop after N results per camera")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace file sources at their frame rate and drop frames like a live camera",
    )
    p.add_argument("--loop", action="store_true", help="loop file sources")

    p = sub.add_parser(
        "validate",
        help="check a config file",
        description="Check a config file without running: what `run` checks before it starts "
        "(the config, the sources, the model in the real interpreter, its labels, the alert "
        "rules), without opening a camera or connecting to the broker.",
    )
    p.add_argument("--config", type=Path, required=True, help="device config YAML")

    p = sub.add_parser(
        "bench",
        help="measure the loop",
        description=(
            "Measure, in one run: raw interpreter invoke rate, the shipped camera loop's rate, "
            "their ratio, capture-to-result latency p50/p95, time to first result, peak RSS, "
            "and a plain sequential loop for comparison."
        ),
    )
    _add_model_args(p, required=True)
    p.add_argument("--source", required=True, help="video file, folder or camera")
    p.add_argument("--frames", type=int, default=300, help="frames per measurement (default 300)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace a file at its frame rate in the loop phase, like a live camera "
        "(latest-frame slot: latency stays flat, drops are counted)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--privacy",
        action="store_true",
        help="instead: face redaction's cost per image (short vs full range, at the snapshot "
        "size) and the loop's rate with redacted snapshots made beside it (docs/privacy.md)",
    )
    p.add_argument(
        "--detectors",
        type=Path,
        help="with --privacy: the folder with the two face detectors (default: --model's)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the measurements this many times and report each one's best round "
        "(steadier figures on a busy machine; make bench uses 3)",
    )
    p.add_argument(
        "--thread-counts",
        type=int,
        nargs="+",
        metavar="N",
        help="run the three measurements once per interpreter thread count and report them "
        "side by side (e.g. --thread-counts 1 2)",
    )
    p.add_argument(
        "--motion",
        action="store_true",
        help="instead: motion gating's CPU saving, on a mostly still clip built from --source "
        "(its first frame held, the clip, its last frame held), with and without gating, the "
        "same alert rules (docs/operations.md#motion-gating)",
    )
    p.add_argument(
        "--still-s",
        type=float,
        default=60.0,
        help="with --motion: seconds each still part lasts (default 60)",
    )
    p.add_argument(
        "--end-still",
        choices=["first", "last"],
        default="first",
        help="with --motion: the frame held at the end, the clip's first (default) or last",
    )
    p.add_argument(
        "--moving-frames",
        type=int,
        help="with --motion: frames of --source played between the still parts (default all)",
    )
    p.add_argument(
        "--motion-labels",
        help="with --motion: comma-separated labels of the alert rule (default: unicycle,crutch,"
        "ski, what people walking in vtest.avi are to the ImageNet models)",
    )
    redact.add_parser(sub)
    return parser


# -- config sections from flags: one meaning for each flag in every command -----------------------
def _section(cls: Any, flags: dict[str, str], **values: Any) -> Any:
    """``cls(**values)`` without the values left unset; an invalid one is a ConfigError naming
    its flag."""
    from pydantic import ValidationError

    from device.errors import ConfigError

    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise ConfigError(
            f"{flags.get(field, field)}: {err['msg']}", "see edgecam-device COMMAND --help"
        ) from None


_MODEL_FLAGS = {"path": "--model", "labels": "--labels", "mean": "--mean", "std": "--std"}
_INFERENCE_FLAGS = {
    "threads": "--threads",
    "edgetpu_device": "--edgetpu-device",
    "top_k": "--top-k",
}


def model_section(args: argparse.Namespace) -> ModelConfig:
    """The ``model:`` section that classify's and bench's flags describe."""
    from device.config import ModelConfig

    section = _section(
        ModelConfig,
        _MODEL_FLAGS,
        path=args.model,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        crop=args.crop,
        allow_failed_gate=args.allow_failed_gate,
    )
    section.labels = args.labels  # no --labels: the bundle's own (not the config's default)
    return section


def inference_section(
    args: argparse.Namespace, base: InferenceConfig | None = None, **extra: Any
) -> InferenceConfig:
    """The ``inference:`` section: ``base`` (the config file's, or the defaults) with the
    interpreter flags given on the command line."""
    from device.config import InferenceConfig

    flags = {
        "threads": args.threads,
        "xnnpack": False if args.no_xnnpack else None,
        "edgetpu": True if args.edgetpu else None,
        "edgetpu_device": args.edgetpu_device,
        **extra,
    }
    values = (base or InferenceConfig()).model_dump()
    values.update({k: v for k, v in flags.items() if v is not None})
    return _section(InferenceConfig, _INFERENCE_FLAGS, **values)


def cmd_classify(args: argparse.Namespace) -> int:
    from device.classifier import Classifier
    from device.preprocess import load_image

    inference = inference_section(args, top_k=args.top_k)
    classifier = Classifier.from_config(model_section(args), inference)
    status = 0
    for path in args.images:
        try:
            image = load_image(path)
        except EdgecamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        top, ms = classifier.classify(image, k=inference.top_k)
        if args.json:
            record = {
                "image": str(path),
                "top": [c.as_dict() for c in top],
                "inference_ms": round(ms, 3),
            }
            print(json.dumps(record), flush=True)
        else:
            if len(args.images) > 1:
                print(f"{path}:")
            for c in top:
                print(f"{c.label}: {c.score:.5f}")
    return status


def _run_config(args: argparse.Namespace) -> DeviceConfig:
    from device.config import load_config

    config = load_config(args.config)
    if args.model:
        config.model.path = args.model
        config.model.labels = args.labels
    elif args.labels:
        config.model.labels = args.labels
    config.inference = inference_section(args, config.inference)
    if args.device_id:
        config.device_id = args.device_id
    if args.mqtt_host:
        config.mqtt.host = args.mqtt_host
    if args.mqtt_port:
        config.mqtt.port = args.mqtt_port
    if args.no_mqtt:
        config.mqtt.enabled = False
    for cam in config.cameras:
        if args.source:
            cam.source = args.source
        if args.realtime:
            cam.realtime = True
        if args.loop:
            cam.loop = True
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from device.runner import Runner, preflight

    config = _run_config(args)
    if not (args.verbose or getattr(args, "quiet", False)):  # -v / -q win over log_level
        logging.getLogger().setLevel(config.log_level)
    checked = preflight(config)
    return Runner(config, args.frames, args.config, checked).run()


def cmd_validate(args: argparse.Namespace) -> int:
    from device.config import load_config
    from device.privacy.guard import PrivacyGuard
    from device.runner import preflight
    from device.sources import describe_source

    config = load_config(args.config)
    checked = preflight(config)
    bundle = checked.classifiers[0].bundle
    cameras = ", ".join(
        f"{c.name}={describe_source(c.source)} ({checked.source_kinds[c.name]})"
        for c in config.cameras
    )
    mqtt = f"{config.mqtt.host}:{config.mqtt.port}" if config.mqtt.enabled else "off"
    rules = len(config.alerts.rules) if config.alerts.enabled else 0
    privacy = PrivacyGuard(config.privacy)  # what run builds; logs why a detector cannot run
    verdict = "valid" if not privacy.problem else "valid, but the face detector cannot run"
    print(
        f"{args.config}: {verdict}\n"
        f"  model: {bundle.ref} ({bundle.variant}, {len(bundle.labels)} labels, "
        f"{checked.classifiers[0].backend_name})\n"
        f"  cameras: {cameras}\n"
        f"  mqtt: {mqtt}; alert rules: {rules}\n"
        f"  privacy: {privacy.describe()}"
    )
    return 1 if privacy.problem else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from device.bench import format_report, run_bench

    if args.privacy:
        from device.privacy.bench import format_privacy_report, run_privacy_bench

        report = run_privacy_bench(
            model=model_section(args),
            inference=inference_section(args),
            source=args.source,
            detectors=args.detectors or Path(args.model).parent,
            frames=args.frames,
        )
        print(json.dumps(report, indent=2) if args.json else format_privacy_report(report))
        return 0

    if args.motion:
        from device.motion_bench import (
            DEFAULT_LABELS,
            format_motion_report,
            run_motion_bench,
        )

        labels = args.motion_labels.split(",") if args.motion_labels else DEFAULT_LABELS
        report = run_motion_bench(
            model=model_section(args),
            inference=inference_section(args),
            source=args.source,
            still_s=args.still_s,
            moving_frames=args.moving_frames,
            end_still=args.end_still,
            labels=tuple(label.strip() for label in labels if label.strip()),
        )
        print(json.dumps(report, indent=2) if args.json else format_motion_report(report))
        return 0

    report = run_bench(
        model=model_section(args),
        inference=inference_section(args),
        source=args.source,
        frames=args.frames,
        realtime=args.realtime,
        thread_counts=args.thread_counts,
        rounds=args.rounds,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


COMMANDS = {
    "classify": cmd_classify,
    "run": cmd_run,
    "validate": cmd_validate,
    "bench": cmd_bench,
    "redact": redact.cmd_redact,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Logging (-v/-q), ``error:``/``fix:`` output and exit statuses: see device.cliapp."""
    from device.cliapp import CliApp

    return CliApp(build_parser, COMMANDS).main(argv)


if __name__ == "__main__":
    sys.exit(main())
