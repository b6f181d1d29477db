"""``edgecam-train``: check, split, train and evaluate image classifiers; serve the ingest
server that receives field samples (``serve``, ``token``) and its review page (``reviewer``);
merge reviewed samples into a dataset and retrain (``merge``, ``purge``, ``retrain``).

Errors caused by data, files or options print one line on stderr and exit with status 2;
``check`` exits with 1 when it leaves errors in the data; an interrupted ``train`` exits with
130 and names the command that resumes it. Logging, error output and exit statuses come from
the shared scaffold, :mod:`device.cliapp`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from device.cliapp import EXIT_FAILURE, EXIT_OK, CliApp
from training.errors import TrainingError
from training.ingest import cli as ingest_commands
from training.review import cli as review_commands

log = logging.getLogger(__name__)

PROG = "edgecam-train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train image classifiers for edgecam from a folder of images "
        "(DATA/<class>/*.jpg, or DATA/train|val|test/<class>/*.jpg).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="report data problems; --fix quarantines them")
    p.add_argument("data", type=Path, help="data folder")
    p.add_argument("--fix", action="store_true", help="move problem files to the quarantine")
    p.add_argument(
        "--quarantine", type=Path, help="quarantine folder (default: DATA.quarantine beside DATA)"
    )
    p.add_argument("--json", type=Path, help="also write the full report to this JSON file")
    p.add_argument("--manifest", type=Path, help="split manifest to check leakage against")
    p.add_argument("--min-size", type=int, help="flag images with a side below this (px)")
    p.add_argument(
        "--near-distance", type=int, default=6, help="max pHash distance of near-duplicates"
    )
    p.add_argument(
        "--near-correlation",
        type=float,
        default=0.993,
        help="min thumbnail correlation of near-duplicates (0..1)",
    )

    p = sub.add_parser("split", help="write a stable, stratified train/val/test split manifest")
    p.add_argument("data", type=Path, help="data folder")
    p.add_argument("--manifest", type=Path, help="manifest path (default DATA/edgecam-split.json)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)

    p = sub.add_parser("train", help="train a classifier into runs/<name>/")
    p.add_argument("data", type=Path, help="data folder")
    p.add_argument("--config", type=Path, help="training config YAML (flags override it)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--name", help="run name: the run goes to runs/<name>/")
    where.add_argument("--out", type=Path, help="run folder (instead of runs/<name>)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent of named runs")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument(
        "--backbone",
        choices=[
            "small_cnn",
            "mobilenetv2",
            "mobilenetv3small",
            "mobilenetv3large",
            "efficientnetb0",
        ],
    )
    p.add_argument("--weights", help="imagenet | none | PATH to a backbone weights file")
    p.add_argument("--alpha", type=float, help="width multiplier")
    p.add_argument("--input-size", help="N or HxW (default 224; 32 for small_cnn)")
    p.add_argument("--epochs", type=int, help="epochs of phase 1 (head / from scratch)")
    p.add_argument("--fine-tune-epochs", type=int, help="epochs of phase 2 (fine-tuning)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int, help="early stopping patience (epochs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--manifest", type=Path, help="split manifest (default DATA/edgecam-split.json)")
    p.add_argument("--class-weights", choices=["balanced", "none"])
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"])
    p.add_argument("--flip", choices=["none", "horizontal", "vertical", "horizontal_and_vertical"])
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--baselines", action="store_true", default=None, help="add k-NN/SVM baselines")
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN",
        help="start from a finished run's weights (fine-tuning; classes matched by label)",
    )

    p = sub.add_parser("evaluate", help="evaluate a run on its test split (report.json + figures)")
    p.add_argument("run", type=Path, help="run folder (runs/<name>)")
    p.add_argument("--baselines", action="store_true", help="add k-NN / linear SVM baselines")
    p.add_argument("--top-k", type=int, default=5)

    ingest_commands.add_parsers(sub)  # serve, token add|list|revoke
    review_commands.add_parsers(sub)  # reviewer, purge, merge, retrain
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from training.check import CheckOptions, apply_fix, run_check
    from training.quarantine import default_quarantine_dir

    options = CheckOptions(
        near_distance=args.near_distance,
        near_correlation=args.near_correlation,
        min_size=args.min_size,
        manifest=args.manifest,
    )
    report = run_check(args.data, options)
    _print_check(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    if args.fix:
        qdir = (args.quarantine or default_quarantine_dir(report.data_dir)).resolve()
        moved = apply_fix(report, qdir)
        print(f"\nmoved {len(moved)} file(s) to {qdir} (a .reason.txt beside each)")
        return EXIT_OK
    if report.errors:
        print(f"\n{len(report.errors)} error(s): fix them, or run with --fix to quarantine")
        return EXIT_FAILURE
    return EXIT_OK


def _print_check(report: Any) -> None:
    print(f"data: {report.data_dir}  ({report.images} images, {len(report.labels)} classes)")
    splits = [s for s in ("train", "val", "test") if s in report.counts]
    header = f"  {'class':<24}{'all':>8}" + "".join(f"{s:>8}" for s in splits)
    print(header)
    for label in report.labels:
        row = f"  {label:<24}{report.counts['all'][label]:>8}"
        row += "".join(f"{report.counts[s][label]:>8}" for s in splits)
        print(row)
    if not report.findings:
        print("no problems found")
        return
    for f in report.findings:
        shown = ", ".join(f.paths[:4]) + (
            f" (+{len(f.paths) - 4} more)" if len(f.paths) > 4 else ""
        )
        print(f"[{f.severity}] {f.kind}: {f.message}\n    {shown}")


def cmd_split(args: argparse.Namespace) -> int:
    from training.dataset import scan_dataset
    from training.splits import default_manifest_path, resolve_split

    scan = scan_dataset(args.data)
    scan.require_usable()
    path = (args.manifest or default_manifest_path(scan.root)).resolve()
    manifest = resolve_split(scan, path, args.val_fraction, args.test_fraction, args.seed)
    counts = manifest.counts()
    print(f"manifest: {path}")
    print(f"  {'class':<24}{'train':>8}{'val':>8}{'test':>8}")
    for label in manifest.labels:
        print(
            f"  {label:<24}" + "".join(f"{counts[s][label]:>8}" for s in ("train", "val", "test"))
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import build_config, read_config_file
    from training.train import default_run_name, train

    if args.resume and not (args.out or args.name):
        raise TrainingError("--resume needs the run to continue: --name NAME or --out DIR")
    run_dir = args.out or (args.runs_dir / (args.name or default_run_name(args.data)))
    if args.resume:
        from training.runfolder import CONFIG
        from training.train import check_run_dir

        check_run_dir(run_dir, resume=True)
        file_values = read_config_file(run_dir / CONFIG)
        overrides: dict[str, Any] = {}
        source = str(run_dir / CONFIG)
    else:
        file_values = read_config_file(args.config) if args.config else {}
        source = str(args.config) if args.config else "command line"
        overrides = {
            "backbone": args.backbone,
            "weights": args.weights,
            "alpha": args.alpha,
            "input_size": args.input_size,
            "epochs": args.epochs,
            "fine_tune_epochs": args.fine_tune_epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "patience": args.patience,
            "seed": args.seed,
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
            "manifest": args.manifest,
            "class_weights": args.class_weights,
            "mixed_precision": args.mixed_precision,
            "baselines": args.baselines,
            "augment.flip": args.flip,
            "augment.enabled": False if args.no_augment else None,
        }
    config = build_config(file_values, overrides, source)
    result = train(args.data, config, run_dir, resume=args.resume, init_from=args.init_from)
    _print_report(result.report)
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_run

    report = evaluate_run(args.run, baselines=args.baselines, top_k=args.top_k)
    _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    print(f"test accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}")
    for k, v in report.get("top_k_accuracy", {}).items():
        print(f"  top-{k} accuracy {v:.4f}")
    print(f"  {'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for label, m in report["per_class"].items():
        print(
            f"  {label:<24}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}"
            f"{m['support']:>9}"
        )
    for name, acc in report.get("baselines", {}).items():
        print(f"  baseline {name:<20}{acc:.4f}")


COMMANDS = {
    "check": cmd_check,
    "split": cmd_split,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    **ingest_commands.COMMANDS,
    **review_commands.COMMANDS,
}


APP = CliApp(build_parser, COMMANDS, error_prefix=f"{PROG}: ")


def main(argv: list[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
