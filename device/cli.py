"""``edgecam-device``: classify images, run the camera loop, validate a config, benchmark."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from device import __version__
from device.errors import EdgecamError

log = logging.getLogger("edgecam")


def _add_model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="a .tflite file or a model bundle folder")
    p.add_argument("--labels", help="labels file (one per line, or '<id> <label>' lines)")
    p.add_argument(
        "--mean",
        type=float,
        nargs="+",
        metavar="M",
        help="normalisation mean, 1 or 3 values (default: the model's own)",
    )
    p.add_argument(
        "--std",
        type=float,
        nargs="+",
        metavar="S",
        help="normalisation std, 1 or 3 values (default: the model's own)",
    )
    p.add_argument("--resize", choices=["bilinear", "area", "nearest"], help="resize filter")
    p.add_argument("--crop", choices=["none", "center"], help="centre-crop to the model's aspect")
    p.add_argument(
        "--allow-failed-gate",
        action="store_true",
        help="run a bundle whose verification gate failed in `make convert`",
    )
    p.add_argument("--threads", type=int, help="interpreter CPU threads")
    p.add_argument("--no-xnnpack", action="store_true", help="disable the XNNPACK delegate")
    p.add_argument("--edgetpu", action="store_true", help="run on a Coral Edge TPU")
    p.add_argument("--edgetpu-device", default="usb", help="usb, usb:0, pci:0 (default usb)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        "validate", help="check a config file", description="Check a config file without running."
    )
    p.add_argument("--config", type=Path, required=True, help="device config YAML")

    p = sub.add_parser(
        "bench",
        help="measure the loop",
        description=(
            "Measure, in one run: raw interpreter invoke rate, full loop rate, their ratio, "
            "capture-to-result latency p50/p95, time to first result, peak RSS, and a plain "
            "sequential loop for comparison."
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
    return parser


def _input_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "mean": args.mean,
        "std": args.std,
        "resize": args.resize,
        "crop": args.crop,
        "allow_failed_gate": args.allow_failed_gate,
    }


def cmd_classify(args: argparse.Namespace) -> int:
    from device.classifier import Classifier, InferenceOptions
    from device.preprocess import load_image

    options = InferenceOptions(
        threads=args.threads,
        xnnpack=not args.no_xnnpack,
        edgetpu=args.edgetpu,
        edgetpu_device=args.edgetpu_device,
    )
    classifier = Classifier.open(args.model, args.labels, options=options, **_input_overrides(args))
    status = 0
    for path in args.images:
        try:
            image = load_image(path)
        except EdgecamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        top, ms = classifier.classify(image, k=args.top_k)
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


def _run_config(args: argparse.Namespace):
    from device.config import load_config

    config = load_config(args.config)
    if args.model:
        config.model.path = args.model
        config.model.labels = args.labels
    elif args.labels:
        config.model.labels = args.labels
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
    from device.runner import run

    config = _run_config(args)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.log_level)
    return run(config, max_results=args.frames, config_path=args.config)


def cmd_validate(args: argparse.Namespace) -> int:
    from device.config import load_config

    config = load_config(args.config)
    model = Path(config.model.path)
    print(
        f"{args.config}: valid ({len(config.cameras)} camera(s): "
        f"{', '.join(c.name + '=' + c.source for c in config.cameras)}; "
        f"mqtt {'off' if not config.mqtt.enabled else config.mqtt.host + ':' + str(config.mqtt.port)})"
    )
    if not model.exists():
        print(f"warning: model {model} does not exist yet (run `make models`)", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from device.bench import format_report, run_bench

    report = run_bench(
        model=args.model,
        labels=args.labels,
        source=args.source,
        frames=args.frames,
        threads=args.threads,
        xnnpack=not args.no_xnnpack,
        edgetpu=args.edgetpu,
        edgetpu_device=args.edgetpu_device,
        input_overrides=_input_overrides(args),
        realtime=args.realtime,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


COMMANDS = {"classify": cmd_classify, "run": cmd_run, "validate": cmd_validate, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except EdgecamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
