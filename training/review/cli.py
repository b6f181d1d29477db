"""The ``reviewer``, ``purge``, ``merge`` and ``retrain`` subcommands of ``edgecam-train``, and
the review options of ``serve``. Kept light to import: TensorFlow loads only in ``retrain``."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from device.cliapp import EXIT_FAILURE, EXIT_OK


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The review page's options of ``serve``."""
    p.add_argument(
        "--reviewers",
        type=Path,
        help="reviewers file of the review page (default: $EDGECAM_REVIEWERS or "
        "edgecam-reviewers.txt beside the tokens file)",
    )
    p.add_argument(
        "--review-db",
        type=Path,
        help="review database (default INBOX/review.sqlite; required for an s3:// inbox)",
    )
    p.add_argument(
        "--run",
        type=Path,
        help="the run folder of the model on the devices: groups by its embeddings and shows "
        "where it looked (Grad-CAM); loads TensorFlow on first use",
    )
    p.add_argument("--no-review", action="store_true", help="serve the upload API only")


def _inbox_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inbox", help="inbox folder, or s3://bucket/prefix")
    p.add_argument("--review-db", type=Path, help="review database (default INBOX/review.sqlite)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL of an s3:// inbox (MinIO, Ceph)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reviewer", help="add, list and remove the review page's reviewers")
    rsub = p.add_subparsers(dest="reviewer_command", required=True, metavar="ACTION")
    for action, text in (
        ("add", "add a reviewer (asks for the password; only its argon2id hash is kept)"),
        ("list", "list the reviewers"),
        ("remove", "remove a reviewer (their sessions end)"),
    ):
        r = rsub.add_parser(action, help=text)
        if action != "list":
            r.add_argument("name", help="the reviewer's login name (letters, digits, _ . -)")
        r.add_argument("--reviewers", type=Path, help="reviewers file (see serve --reviewers)")
        r.add_argument("--tokens", type=Path, help="tokens file the reviewers file sits beside")
        if action == "add":
            r.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
            r.add_argument("--replace", action="store_true", help="set a new password")

    p = sub.add_parser(
        "purge",
        help="delete the rejected samples from the inbox (asks for --yes)",
        description="Delete the samples whose review decision is 'reject' from the inbox "
        "(JPEG and sidecar). The decisions stay in the review database, with a 'purge' "
        "decision recorded for each deleted sample.",
    )
    _inbox_options(p)
    p.add_argument("--yes", action="store_true", help="really delete (default: list only)")
    p.add_argument("--by", default=None, help="name recorded as who purged (default: $USER)")

    p = sub.add_parser(
        "merge",
        help="copy the accepted field samples into a dataset (+ a field test split)",
        description="Copy the samples accepted on the review page into the ImageFolder DATA "
        "under their reviewed labels, keeping them out of DATA's test split, and put a share "
        "of them into a field test set of their own (DATA.field-test/). Samples whose image "
        "is already in the test split, or under another label, are refused. Runs the data "
        "checks of `edgecam-train check` on the result. See docs/field-loop.md.",
    )
    _inbox_options(p)
    p.add_argument("data", type=Path, help="the dataset folder (DATA/<class>/ or DATA/train/...)")
    p.add_argument(
        "--field-test", type=Path, help="field test folder (default: DATA.field-test beside DATA)"
    )
    p.add_argument(
        "--field-test-fraction",
        type=float,
        default=0.25,
        help="share of each class's field samples kept for the field test (0.25)",
    )
    p.add_argument("--seed", type=int, default=1234, help="seed of the field test choice")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, copy nothing")
    p.add_argument("--json", type=Path, help="also write the merge report to this JSON file")

    p = sub.add_parser(
        "retrain",
        help="fine-tune a run on a merged dataset, convert, verify, compare (report)",
        description="Fine-tune from RUN's weights on DATA (after `edgecam-train merge`), "
        "convert and verify the new model with edgecam-convert's steps, and write a "
        "before/after report (retrain-report.md) into the new run folder.",
    )
    p.add_argument("run", type=Path, help="the previous run folder (runs/<name>)")
    p.add_argument("data", type=Path, help="the merged dataset")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--name", help="name of the new run (default <run>-retrain-<time>)")
    where.add_argument("--out", type=Path, help="folder of the new run")
    p.add_argument("--runs-dir", type=Path, help="parent of named runs (default: RUN's parent)")
    p.add_argument("--epochs", type=int, help="epochs (default: RUN's)")
    p.add_argument("--learning-rate", type=float, help="learning rate (default: half of RUN's)")
    p.add_argument("--field-test", type=Path, help="field test folder (default DATA.field-test)")
    p.add_argument("--bundles", type=Path, help="bundle folder (default models/<new run name>)")
    p.add_argument("--variants", nargs="+", metavar="V", help="variants to build (default: all)")
    p.add_argument("--max-drop", type=float, default=1.0, help="gate: accuracy points (1.0)")
    p.add_argument("--no-convert", action="store_true", help="train and compare only")


def _reviewers_path(args: argparse.Namespace) -> Path:
    from training.ingest.tokens import default_tokens_path
    from training.review.users import default_reviewers_path

    return args.reviewers or default_reviewers_path(args.tokens or default_tokens_path())


def _read_password(from_stdin: bool) -> str:
    from training.review.users import ReviewerError

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ReviewerError(
            "no terminal to ask for the password", "give --password-stdin and pipe it in"
        )
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ReviewerError("the two passwords differ", "run the command again")
    return first


def cmd_reviewer(args: argparse.Namespace) -> int:
    from training.review import users

    path = _reviewers_path(args)
    if args.reviewer_command == "add":
        password = _read_password(args.password_stdin)
        users.add_reviewer(path, args.name, password, replace=args.replace)
        print(f"reviewer {args.name!r} stored in {path} (argon2id hash)", file=sys.stderr)
    elif args.reviewer_command == "list":
        reviewers = users.read_reviewers(path) if path.exists() else []
        for r in reviewers:
            print(f"{r.name:<24} {r.created}")
        if not reviewers:
            print(f"no reviewers in {path}", file=sys.stderr)
    else:
        users.remove_reviewer(path, args.name)
        print(f"removed {args.name!r} from {path}; their sessions end", file=sys.stderr)
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    from training.ingest.store import open_store
    from training.review.db import Filters, ReviewDB, db_path_for
    from training.review.index import index_new

    store = open_store(args.inbox, args.s3_endpoint)
    with ReviewDB(db_path_for(args.inbox, args.review_db)) as db:
        index_new(store, db)
        rows, _ = db.query(Filters(status="rejected"), limit=10_000_000)
        if not args.yes:
            for r in rows:
                print(f"would delete {r.key}  (rejected by {r.reviewer} at {r.decided_at})")
            print(f"{len(rows)} rejected sample(s); give --yes to delete them", file=sys.stderr)
            return EXIT_OK
        who = args.by or os.environ.get("USER") or "purge"
        for r in rows:
            store.delete(r.ref)
            db.decide([r.key], "purge", who, via="cli")
        print(f"deleted {len(rows)} rejected sample(s) from {store.url}", file=sys.stderr)
    store.close()
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from training.merge import MergeOptions, merge

    report = merge(
        args.inbox,
        args.data,
        MergeOptions(
            review_db=args.review_db,
            s3_endpoint=args.s3_endpoint,
            field_test=args.field_test,
            field_test_fraction=args.field_test_fraction,
            seed=args.seed,
            dry_run=args.dry_run,
        ),
    )
    for line in report.lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    return EXIT_FAILURE if report.refused else EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    from training.retrain import RetrainOptions, retrain

    result = retrain(
        args.run,
        args.data,
        RetrainOptions(
            name=args.name,
            out=args.out,
            runs_dir=args.runs_dir,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            field_test=args.field_test,
            bundles=args.bundles,
            variants=args.variants,
            max_drop=args.max_drop,
            convert=not args.no_convert,
        ),
    )
    for line in result.summary_lines():
        print(line)
    return result.exit_code


COMMANDS = {
    "reviewer": cmd_reviewer,
    "purge": cmd_purge,
    "merge": cmd_merge,
    "retrain": cmd_retrain,
}
