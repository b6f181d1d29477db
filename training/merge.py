"""``edgecam-train merge INBOX DATA``: the accepted field samples into an ImageFolder dataset.

What it does, in order:

1. fixes DATA's split first (``DATA/edgecam-split.json``, written when missing), so the test
   split is settled before any field sample arrives;
2. takes the samples whose current review state is accepted (the model's guess confirmed, or
   relabelled), with their reviewed labels;
3. refuses, and says why, a sample whose image (content sha256) is already in DATA's **test
   split** (a leak: training on it would inflate the test score), one already in DATA under
   **another label**, and samples with the same image reviewed under two labels; skips samples
   already merged or already in DATA under the same label;
4. splits the rest per class between the **field test set** (``DATA.field-test/<label>/``, a
   share ``field_test_fraction``; its own ImageFolder beside DATA with a manifest
   ``edgecam-field-test.json``) and training (``DATA/<label>/`` or ``DATA/train/<label>/``,
   assigned to train or val in the split manifest, never to test). Near-duplicates (pHash and
   thumbnail, as ``check``) go to the same side, so a burst of frames cannot sit on both;
5. copies the JPEGs (atomically), updates the split manifest, and runs the data checks of
   ``edgecam-train check`` on DATA: a new file in a ``leak``, ``label_conflict`` or
   ``unreadable`` finding (e.g. a near-identical copy of a test image) is taken out again and
   reported as refused; problems DATA already had are reported, not touched;
6. records every merged sample in the review database (``merges``), so a second merge copies
   only what is new.

Field files are named ``field-<device>-<sample_id[:16]>.jpg``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.check import CheckOptions, run_check
from training.dataset import SPLIT_ALIASES, scan_dataset
from training.duplicates import near_groups
from training.errors import DatasetError
from training.hashing import keyed_order
from training.ingest.store import Store, open_store
from training.review.db import Filters, ReviewDB, SampleRow, db_path_for, now_iso
from training.review.index import index_new
from training.review.labels import check_label
from training.splits import (
    SplitItem,
    default_manifest_path,
    read_manifest,
    resolve_split,
    write_manifest,
)

log = logging.getLogger(__name__)

FIELD_TEST_MANIFEST = "edgecam-field-test.json"
FIELD_PREFIX = "field-"
BLOCKING = ("leak", "label_conflict", "unreadable")
TRAIN_SIDE, FIELD_TEST = "train", "field_test"


@dataclass
class MergeOptions:
    review_db: Path | None = None
    s3_endpoint: str | None = None
    field_test: Path | None = None  # default DATA.field-test beside DATA
    field_test_fraction: float = 0.25
    seed: int = 1234
    dry_run: bool = False
    check: bool = True


@dataclass(frozen=True)
class Placed:
    key: str
    label: str
    path: str  # relative to DATA, or to the field test folder
    split: str  # train | val | field_test


@dataclass(frozen=True)
class Refused:
    key: str
    label: str
    reason: str  # leak | label_conflict | unreadable | relabelled_after_merge
    message: str


@dataclass
class MergeReport:
    data_dir: Path
    field_test_dir: Path
    accepted: int = 0
    placed: list[Placed] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    existing_problems: list[str] = field(default_factory=list)
    dry_run: bool = False

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(Counter)
        for p in self.placed:
            out[p.split][p.label] += 1
        return {k: dict(v) for k, v in out.items()}

    def lines(self) -> list[str]:
        verb = "would copy" if self.dry_run else "copied"
        n_train = sum(1 for p in self.placed if p.split != FIELD_TEST)
        n_test = sum(1 for p in self.placed if p.split == FIELD_TEST)
        out = [
            f"{self.accepted} accepted sample(s) in the review database",
            f"{verb} {n_train} into {self.data_dir} (train/val, never its test split) and "
            f"{n_test} into the field test set {self.field_test_dir}",
        ]
        for split, labels in sorted(self.counts().items()):
            out.append(f"  {split:<11}" + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())))
        if self.skipped:
            reasons = Counter(why.split(":")[0] for _, why in self.skipped)
            out.append(
                f"skipped {len(self.skipped)}: "
                + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
            )
        for r in self.refused:
            out.append(f"REFUSED {r.key} ({r.label}): {r.message}")
        for problem in self.existing_problems:
            out.append(f"note: DATA already had: {problem}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "field_test_dir": str(self.field_test_dir),
            "dry_run": self.dry_run,
            "accepted": self.accepted,
            "counts": self.counts(),
            "placed": [p.__dict__ for p in self.placed],
            "refused": [r.__dict__ for r in self.refused],
            "skipped": [{"key": k, "why": w} for k, w in self.skipped],
            "existing_problems": self.existing_problems,
        }


def default_field_test_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).resolve()
    return data_dir.parent / f"{data_dir.name}.field-test"


# -- the field test set ---------------------------------------------------------------------
def read_field_test(folder: Path) -> list[dict[str, str]]:
    """The field test manifest's items: {path (relative to folder), label, sha256, key}."""
    path = Path(folder) / FIELD_TEST_MANIFEST
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = list(data["items"])
        for it in items:
            str(it["path"]), str(it["label"]), str(it["sha256"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"field test manifest {path} is not valid: {exc}") from None
    return items


def field_test_items(folder: Path, labels: list[str] | None = None) -> list[tuple[Path, str]]:
    """(absolute image path, label) of a field test set (for evaluation)."""
    folder = Path(folder).resolve()
    out = [(folder / it["path"], it["label"]) for it in read_field_test(folder)]
    missing = [p for p, _ in out if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} field test image(s) are missing, e.g. {missing[0]}")
    return [(p, lab) for p, lab in out if labels is None or lab in labels]


def _write_field_test(folder: Path, items: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FIELD_TEST_MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    body = {
        "version": 1,
        "updated_at": now_iso(),
        "note": "field samples kept out of training (edgecam-train merge); evaluate on them",
        "items": sorted(items, key=lambda it: it["path"]),
    }
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- helpers --------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _train_root(data_dir: Path, presplit: bool) -> Path:
    if not presplit:
        return data_dir
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and SPLIT_ALIASES.get(child.name.lower()) == "train":
            return child
    return data_dir / "train"


def _file_name(row: SampleRow) -> str:
    return f"{FIELD_PREFIX}{row.device}-{row.sample_id[:16]}.jpg"


def _side_groups(rows: list[SampleRow]) -> list[list[int]]:
    """Indices of near-identical rows (pHash + thumbnail), each row in exactly one group."""
    have = [i for i, r in enumerate(rows) if r.phash is not None and r.thumb is not None]
    parent = list(range(len(rows)))
    if len(have) > 1:
        phashes = np.array([rows[i].phash for i in have], dtype=np.uint64)
        thumbs = np.stack([rows[i].thumb for i in have]).astype(np.float32)
        content = [rows[i].sample_id for i in have]
        for group in near_groups(phashes, thumbs, content, 6, 0.98):
            root = have[group[0]]
            for g in group:
                parent[have[g]] = root
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        groups[parent[i]].append(i)
    return list(groups.values())


# -- the merge ------------------------------------------------------------------------------
def merge(inbox: str, data_dir: Path, options: MergeOptions | None = None) -> MergeReport:
    options = options or MergeOptions()
    if not 0 <= options.field_test_fraction < 1:
        raise DatasetError("--field-test-fraction must be from 0 to below 1")
    store = open_store(inbox, options.s3_endpoint)
    try:
        with ReviewDB(db_path_for(inbox, options.review_db)) as db:
            index_new(store, db)
            return _merge(store, db, Path(data_dir), options)
    finally:
        store.close()


def _merge(store: Store, db: ReviewDB, data_dir: Path, options: MergeOptions) -> MergeReport:
    scan = scan_dataset(data_dir)
    data_dir = scan.root
    ft_dir = (options.field_test or default_field_test_dir(data_dir)).resolve()
    report = MergeReport(data_dir, ft_dir, dry_run=options.dry_run)
    manifest_path = default_manifest_path(data_dir)
    if not manifest_path.is_file():
        log.info("%s has no split manifest: writing it before adding field samples", data_dir)
    manifest = resolve_split(scan, manifest_path, write=not options.dry_run)
    in_data: dict[str, list[SplitItem]] = defaultdict(list)
    for it in manifest.items:
        in_data[it.sha256].append(it)
    ft_items = read_field_test(ft_dir)
    in_ft = {it["sha256"]: it for it in ft_items}
    merged = db.merges(data_dir)

    rows, _ = db.query(Filters(status="accepted"), limit=10_000_000, features=True)
    report.accepted = len(rows)
    labels_of_image: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        labels_of_image[r.sample_id].add(r.final_label or "")

    candidates: list[SampleRow] = []
    placed_side: dict[str, str] = {}  # key -> side of samples merged before
    for r in rows:
        label = r.final_label or ""
        try:
            check_label(label)
        except ValueError as exc:
            report.refused.append(Refused(r.key, label, "bad_label", str(exc)))
            continue
        if r.key in merged:
            old_label, old_path, old_split = merged[r.key]
            placed_side[r.key] = FIELD_TEST if old_split == FIELD_TEST else TRAIN_SIDE
            if old_label != label:
                report.refused.append(
                    Refused(
                        r.key,
                        label,
                        "relabelled_after_merge",
                        f"it was merged as {old_label!r} ({old_path}) and relabelled since: "
                        "move or delete that file by hand",
                    )
                )
            else:
                report.skipped.append((r.key, "already merged"))
            continue
        if len(labels_of_image[r.sample_id]) > 1:
            report.refused.append(
                Refused(
                    r.key,
                    label,
                    "label_conflict",
                    "the same image was reviewed under several labels "
                    f"{sorted(labels_of_image[r.sample_id])}: decide one on the review page",
                )
            )
            continue
        found = in_data.get(r.sample_id, [])
        test_copy = next((it for it in found if it.split == "test"), None)
        if test_copy is not None:
            report.refused.append(
                Refused(
                    r.key,
                    label,
                    "leak",
                    f"its image is already in the test split as {test_copy.path} (same sha256): "
                    f"putting it into {label}/ would leak test data into training",
                )
            )
            continue
        other = next((it for it in found if it.label != label), None)
        if other is not None:
            report.refused.append(
                Refused(
                    r.key,
                    label,
                    "label_conflict",
                    f"its image is already in the dataset as {other.path} under {other.label!r}: "
                    "one of the two labels is wrong",
                )
            )
            continue
        if found:
            report.skipped.append((r.key, f"already in the dataset: {found[0].path}"))
            continue
        if r.sample_id in in_ft:
            if in_ft[r.sample_id]["label"] != label:
                report.refused.append(
                    Refused(
                        r.key,
                        label,
                        "label_conflict",
                        f"its image is in the field test set under {in_ft[r.sample_id]['label']!r}",
                    )
                )
            else:
                report.skipped.append((r.key, "already in the field test set"))
            continue
        if r.sample_id in {c.sample_id for c in candidates}:
            report.skipped.append((r.key, "same image as another accepted sample"))
            continue
        candidates.append(r)

    sides = _choose_sides(candidates, rows, placed_side, in_ft, options)
    val_fraction = manifest.fractions.get("val", 0.1)
    train_root = _train_root(data_dir, scan.presplit)
    plan: list[tuple[SampleRow, Placed]] = []
    val_count: Counter = Counter()
    side_count: Counter = Counter()
    for r in sorted(candidates, key=lambda r: keyed_order(r.sample_id, options.seed)):
        label = r.final_label or ""
        if sides[r.key] == FIELD_TEST:
            plan.append((r, Placed(r.key, label, f"{label}/{_file_name(r)}", FIELD_TEST)))
            continue
        side_count[label] += 1
        split = "val" if val_count[label] < round(val_fraction * side_count[label]) else "train"
        if split == "val":
            val_count[label] += 1
        rel = (train_root / label / _file_name(r)).relative_to(data_dir).as_posix()
        plan.append((r, Placed(r.key, label, rel, split)))
    if options.dry_run:
        report.placed = [p for _, p in plan]
        return report

    for r, p in plan:
        jpeg = store.read_image(r.ref)
        _write_atomic((ft_dir if p.split == FIELD_TEST else data_dir) / p.path, jpeg)
    new_items = [
        SplitItem(p.path, p.label, r.sample_id, p.split) for r, p in plan if p.split != FIELD_TEST
    ]
    manifest.items = sorted([*manifest.items, *new_items], key=lambda it: it.path)
    manifest.labels = sorted({*manifest.labels, *(it.label for it in new_items)})
    write_manifest(manifest, manifest_path)
    new_paths = {it.path: (r, p) for (r, p), it in _pairs(plan, new_items)}
    if options.check and new_paths:
        _check_and_undo(data_dir, manifest_path, new_paths, report)
    placed = [(r, p) for r, p in plan if p.split == FIELD_TEST or p.path in new_paths]
    ft_items += [
        {"path": p.path, "label": p.label, "sha256": r.sample_id, "key": r.key}
        for r, p in placed
        if p.split == FIELD_TEST
    ]
    if any(p.split == FIELD_TEST for _, p in placed) or ft_items:
        _write_field_test(ft_dir, ft_items)
    db.record_merges(data_dir, [(r.key, r.sample_id, p.label, p.path, p.split) for r, p in placed])
    report.placed = [p for _, p in placed]
    log.info("merged %d field sample(s) into %s", len(placed), data_dir)
    return report


def _pairs(plan: list[tuple[SampleRow, Placed]], items: list[SplitItem]):
    by_path = {it.path: it for it in items}
    for r, p in plan:
        if p.path in by_path and p.split != FIELD_TEST:
            yield (r, p), by_path[p.path]


def _choose_sides(
    candidates: list[SampleRow],
    rows: list[SampleRow],
    placed_side: dict[str, str],
    in_ft: dict[str, dict[str, str]],
    options: MergeOptions,
) -> dict[str, str]:
    """key -> train or field_test for each candidate: a share per class, whole groups of
    near-duplicates together, following a member that was placed before."""
    pool = [r for r in rows if r.key in placed_side] + candidates
    groups = _side_groups(pool)
    per_label_total: Counter = Counter(r.final_label for r in pool)
    per_label_ft: Counter = Counter(it["label"] for it in in_ft.values())
    sides: dict[str, str] = {}
    open_groups = []
    for group in groups:
        members = [pool[i] for i in group]
        fixed = {placed_side[m.key] for m in members if m.key in placed_side}
        if fixed:
            side = FIELD_TEST if FIELD_TEST in fixed else TRAIN_SIDE
            for m in members:
                if m.key not in placed_side:
                    sides[m.key] = side
                    if side == FIELD_TEST:
                        per_label_ft[m.final_label] += 1
        else:
            open_groups.append(members)
    open_groups.sort(key=lambda g: keyed_order(min(m.sample_id for m in g), options.seed))
    for members in open_groups:
        label = Counter(m.final_label for m in members).most_common(1)[0][0]
        target = options.field_test_fraction * per_label_total[label]
        side = FIELD_TEST if per_label_ft[label] + len(members) / 2 <= target else TRAIN_SIDE
        for m in members:
            sides[m.key] = side
            if side == FIELD_TEST:
                per_label_ft[m.final_label] += 1
    return sides


def _check_and_undo(
    data_dir: Path,
    manifest_path: Path,
    new_paths: dict[str, tuple[SampleRow, Placed]],
    report: MergeReport,
) -> None:
    """Run ``check`` on DATA; take new files in blocking findings out again (refused)."""
    result = run_check(data_dir, CheckOptions(manifest=manifest_path))
    undo: dict[str, str] = {}
    for finding in result.findings:
        involved = [p for p in finding.paths if p in new_paths]
        if finding.kind in BLOCKING and involved:
            for p in involved:
                undo.setdefault(
                    p, f"{finding.kind}: {finding.message} ({', '.join(finding.paths[:4])})"
                )
        elif finding.severity == "error":
            report.existing_problems.append(f"{finding.kind}: {', '.join(finding.paths[:4])}")
    if not undo:
        return
    for path, why in undo.items():
        r, p = new_paths.pop(path)
        (data_dir / path).unlink(missing_ok=True)
        report.refused.append(Refused(r.key, p.label, why.split(":")[0], why))
    manifest = read_manifest(manifest_path)
    manifest.items = [it for it in manifest.items if it.path not in undo]
    write_manifest(manifest, manifest_path)
    log.warning("took %d field file(s) out again after the data checks", len(undo))
