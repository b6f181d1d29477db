"""``edgecam-convert``: TFLite bundles for every target, verified on held-out data.

Exit status: 0 all good; 1 the verification gate failed; 2 an error (bad input, conversion
failure); 3 ``--variants edgetpu`` was asked for but ``edgetpu_compiler`` is not installed
(everything else was built and verified).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from conversion.pipeline import (
    EXIT_EDGETPU_MISSING,
    VARIANTS,
    ConversionResult,
    ConvertOptions,
)
from device import __version__
from device.cliapp import ArgumentParser, CliApp, numbers
from device.manifest import CROP_MODES, RESIZE_FILTERS

log = logging.getLogger(__name__)


def _variants(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [v.strip().lower() for v in value.split(",") if v.strip()]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="edgecam-convert",
        description=(
            "Convert a trained run (or any Keras model / SavedModel) into TFLite model bundles "
            "(float32, float16, dynamic, int8, edgetpu), verify each on the test split through "
            "the device's inference code, and fail when quantization costs too much accuracy."
        ),
        epilog=(
            "exit status: 0 ok; 1 the gate failed; 2 error; 3 edgetpu asked for but "
            "edgetpu_compiler is not installed. Example: edgecam-convert runs/garden. "
            "Model updates over MQTT: edgecam-convert keygen / edgecam-convert sign BUNDLE "
            "--key operator.key (docs/fleet.md)"
        ),
    )
    p.add_argument("--version", action="version", version=f"edgecam {__version__}")
    p.add_argument(
        "run", nargs="?", type=Path, help="a training run folder (runs/<name>) from `make train`"
    )
    p.add_argument("--model", type=Path, help="a SavedModel folder or .keras/.h5 file (no run)")
    p.add_argument("--labels", type=Path, help="labels file for --model (one label per line)")
    p.add_argument("--name", help="bundle name (default: the run's or the model's name)")
    p.add_argument(
        "--data",
        type=Path,
        help="ImageFolder to calibrate and verify with (DIR/<class>/*, or DIR/train|test/...); "
        "default for a run: its split manifest",
    )
    p.add_argument(
        "--calibration-data",
        type=Path,
        help="use the images under this folder to calibrate int8 instead of the train split",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="V",
        help=f"variants to build: {', '.join(VARIANTS)} (default: all that apply)",
    )
    p.add_argument("--out", type=Path, help="output folder (default models/<name>/)")
    p.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="accuracy points a variant may lose against float32 (default 1.0)",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=300,
        help="int8 calibration images, stratified over classes (default 300)",
    )
    p.add_argument(
        "--max-test-images", type=int, help="verify on at most N test images (stratified)"
    )
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size when the model does not fix it",
    )
    p.add_argument("--resize", choices=RESIZE_FILTERS, help="resize filter")
    p.add_argument("--crop", choices=CROP_MODES, help="centre-crop to the input aspect")
    p.add_argument(
        "--mean",
        type=numbers,
        metavar="M[,M,M]",
        help="input normalisation mean (--model): one number, or R,G,B",
    )
    p.add_argument(
        "--std",
        type=numbers,
        metavar="S[,S,S]",
        help="input normalisation std (--model): one number, or R,G,B",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="interpreter threads for verification (default: up to 4)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    return p


def _source(args: argparse.Namespace):
    from conversion.errors import ConversionError
    from conversion.source import from_model, from_run
    from device.model import make_input_spec

    if args.run is not None and args.model is not None:
        raise ConversionError("give either a run folder or --model, not both")
    if args.run is not None:
        source = from_run(args.run)
        if args.name:
            source = replace(source, name=args.name)
    elif args.model is not None:
        source = from_model(args.model, args.labels, args.name)
    else:
        raise ConversionError(
            "nothing to convert",
            "usage: edgecam-convert runs/<name>  or  edgecam-convert --model PATH --labels FILE "
            "--data DIR",
        )
    spec = make_input_spec(
        source.input, mean=args.mean, std=args.std, resize=args.resize, crop=args.crop
    )
    return source.with_input(spec)


def _print_edgetpu(result: ConversionResult, args: argparse.Namespace) -> None:
    from conversion.edgetpu import INSTALL_NOTE, INSTALL_STEPS

    status = result.edgetpu
    if status.compiled is not None:
        print(f"Edge TPU: {status.compiled.report.summary()}")
        return
    if not status.missing:
        return
    level = "error" if status.explicit else "warning"
    print(
        f"{level}: edgetpu_compiler not found — the edgetpu variant was not built "
        "(everything else was).",
        file=sys.stderr,
    )
    print(f"  {INSTALL_NOTE} To install it:", file=sys.stderr)
    for step in INSTALL_STEPS:
        print(f"    {step}", file=sys.stderr)
    target = shlex.quote(str(args.run)) if args.run else "..."
    print("  then compile the int8 model:", file=sys.stderr)
    print(f"    {status.command}", file=sys.stderr)
    print(
        f"  or re-run the conversion: edgecam-convert {target} --variants edgetpu",
        file=sys.stderr,
    )


def _print_result(result: ConversionResult, args: argparse.Namespace) -> None:
    from conversion.report import terminal_table

    gate = result.gate
    print(f"\nverification on {gate.test_images} test images (device inference code):")
    print(terminal_table(gate))
    if result.op_check is not None:
        print(result.op_check.summary())
    _print_edgetpu(result, args)
    f32 = gate.figures.get("float32")
    i8 = gate.figures.get("int8")
    if f32 and i8 and f32.size_bytes:
        print(f"int8 / float32 size: {i8.size_bytes / f32.size_bytes:.3f}")
    print(f"bundles: {', '.join(str(p) for p in result.bundles.values())}")
    print(f"report: {result.out_dir / 'verification.json'}, {result.out_dir / 'verification.md'}")
    if gate.passed:
        print(f"gate: passed (max drop {gate.max_drop:.1f} accuracy points against float32)")
    else:
        for message in gate.failures:
            print(f"gate FAILED: {message}", file=sys.stderr)
        print(
            "  do not deploy the failing variant(s): calibrate with more / more typical images "
            "(--calibration-size, --calibration-data), or deploy a variant that passed",
            file=sys.stderr,
        )


def convert(args: argparse.Namespace) -> int:
    """The one command: convert, verify, print the table; the exit status is the gate's."""
    from conversion.pipeline import run_conversion

    if args.run is None and args.model is None and args.variants:
        # `--variants int8 runs/x`: the run folder was taken as a variant
        last = Path(args.variants[-1])
        if last.exists():
            args.run, args.variants = last, args.variants[:-1] or None
    source = _source(args)
    options = ConvertOptions(
        variants=_variants(args.variants) if args.variants else None,
        out_dir=args.out,
        data_dir=args.data,
        calibration_data=args.calibration_data,
        calibration_size=args.calibration_size,
        max_test_images=args.max_test_images,
        max_drop=args.max_drop,
        threads=args.threads,
        seed=args.seed,
        input_size=tuple(args.input_size) if args.input_size else None,
    )
    result = run_conversion(source, options)
    _print_result(result, args)
    code = result.exit_code
    if code == EXIT_EDGETPU_MISSING:
        print("exit 3: edgetpu was asked for but could not be built here", file=sys.stderr)
    return code


APP = CliApp(build_parser, convert, quiet_loggers=("absl",))  # absl: TF's converter chatter


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("sign", "keygen"):  # model signing (a run folder: ./sign)
        from conversion.sign import APP as SIGN_APP

        return SIGN_APP.main(args)
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
