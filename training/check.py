"""``edgecam-train check``: a curation report over a data folder, and ``--fix`` (quarantine).

Findings, each with a severity:

* error — will hurt training or make the evaluation dishonest; ``--fix`` moves the files:
  ``unreadable`` (not an image, truncated, undecodable), ``label_conflict`` (the same or a
  near-identical picture under two classes), ``leak`` (the same or near-identical picture in
  two splits: the held-out copy stays, the train/val copies move), ``empty_class``;
* warning — worth a look: ``exact_duplicate`` (extra copies move with ``--fix``),
  ``near_duplicate``, ``wrong_format`` (extension does not match the content), ``too_small``,
  ``imbalance``;
* info — handled automatically: ``color_mode`` (grayscale / alpha / 16-bit converted to RGB),
  ``ignored_file`` (not .jpg/.jpeg/.png/.bmp).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.dataset import DatasetScan, ImageEntry, scan_dataset
from training.duplicates import exact_groups, near_groups
from training.fileinfo import FileInfo, color_oddity, format_mismatch, inspect_file
from training.parallel import map_images
from training.quarantine import Moved, quarantine_file
from training.splits import default_manifest_path, read_manifest

log = logging.getLogger(__name__)

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_HELD_OUT_ORDER = ("test", "val", "train")  # keep the copy that is most held out


@dataclass
class Finding:
    kind: str
    severity: str
    message: str
    paths: list[str]
    move: list[str] = field(default_factory=list)  # what --fix quarantines

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "paths": self.paths,
            "fix_moves": self.move,
        }


@dataclass
class CheckOptions:
    near_distance: int = 6
    near_correlation: float = 0.993
    min_size: int | None = None  # None: flag images under half the median short side
    imbalance_ratio: float = 3.0
    manifest: Path | None = None
    workers: int = 8


@dataclass
class CheckReport:
    data_dir: Path
    presplit: bool
    split_source: str | None
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split ("all" or train/val/test) -> label -> n
    images: int
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def summary(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.findings))

    def to_json(self) -> dict:
        totals = self.counts.get("all", {})
        nonzero = [n for n in totals.values() if n]
        return {
            "data_dir": str(self.data_dir),
            "presplit": self.presplit,
            "split_source": self.split_source,
            "images": self.images,
            "labels": self.labels,
            "counts": self.counts,
            "imbalance_ratio": (max(nonzero) / min(nonzero)) if nonzero else None,
            "summary": self.summary(),
            "errors": len(self.errors),
            "findings": [f.to_json() for f in self.findings],
        }


def _entry_splits(scan: DatasetScan, options: CheckOptions) -> tuple[dict[str, str], str | None]:
    """relpath -> split, from the folder layout or from a split manifest when there is one."""
    if scan.presplit:
        return {e.relpath: e.folder_split or "train" for e in scan.entries}, "folders"
    path = options.manifest or default_manifest_path(scan.root)
    if not path.is_file():
        return {}, None
    manifest = read_manifest(path)
    return {it.path: it.split for it in manifest.items}, str(path)


def run_check(data_dir: Path, options: CheckOptions | None = None) -> CheckReport:
    """Inspect every image of ``data_dir`` and return the findings (changes nothing)."""
    options = options or CheckOptions()
    scan = scan_dataset(data_dir)
    splits, split_source = _entry_splits(scan, options)
    infos = _inspect_all(scan, options.workers)
    findings: list[Finding] = []
    findings += _empty_classes(scan)
    findings += _per_file(scan, infos, options)
    findings += _duplicates(scan, infos, splits, options)
    counts = _counts(scan, splits)
    findings += _imbalance(counts["all"], options.imbalance_ratio)
    if scan.ignored:
        findings.append(
            Finding(
                "ignored_file",
                "info",
                f"{len(scan.ignored)} file(s) are not .jpg/.jpeg/.png/.bmp images "
                "in a class folder and are not used",
                sorted(scan.ignored),
            )
        )
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.kind, f.paths))
    return CheckReport(
        data_dir=scan.root,
        presplit=scan.presplit,
        split_source=split_source,
        labels=scan.labels,
        counts=counts,
        images=len(scan.entries),
        findings=findings,
    )


def _inspect_all(scan: DatasetScan, workers: int) -> list[FileInfo]:
    return map_images(inspect_file, [scan.path(e) for e in scan.entries], "checking", workers)


def _counts(scan: DatasetScan, splits: dict[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"all": dict.fromkeys(scan.labels, 0)}
    for e in scan.entries:
        out["all"][e.label] += 1
        split = splits.get(e.relpath)
        if split:
            out.setdefault(split, dict.fromkeys(scan.labels, 0))[e.label] += 1
    return out


def _empty_classes(scan: DatasetScan) -> list[Finding]:
    return [
        Finding(
            "empty_class",
            "error",
            f"class {label!r} has no images: add some or remove its folder",
            [label],
        )
        for label in scan.empty_classes
    ]


def _per_file(scan: DatasetScan, infos: list[FileInfo], options: CheckOptions) -> list[Finding]:
    out: list[Finding] = []
    odd: dict[str, list[str]] = {}
    short_sides = [min(i.width, i.height) for i in infos if i.ok]
    min_size = options.min_size
    if min_size is None and short_sides:
        min_size = int(np.median(short_sides) // 2)
    small: list[str] = []
    for entry, info in zip(scan.entries, infos, strict=True):
        path = scan.path(entry)
        if not info.ok:
            out.append(
                Finding(
                    "unreadable",
                    "error",
                    f"{info.problem.replace('_', ' ')}: {info.detail}",
                    [entry.relpath],
                    [entry.relpath],
                )
            )
            continue
        if format_mismatch(path, info):
            out.append(
                Finding(
                    "wrong_format",
                    "warning",
                    f"extension {path.suffix} but the content is {info.format}; "
                    "it loads, but rename it to avoid surprises in other tools",
                    [entry.relpath],
                )
            )
        if min_size and min(info.width, info.height) < min_size:
            small.append(entry.relpath)
        oddity = color_oddity(info)
        if oddity:
            odd.setdefault(oddity, []).append(entry.relpath)
    if small:
        out.append(
            Finding(
                "too_small",
                "warning",
                f"{len(small)} image(s) with a side under {min_size} px: they are upscaled to the "
                "model's input and carry little detail; check they are not thumbnails or crops",
                small,
            )
        )
    for oddity, paths in sorted(odd.items()):
        out.append(Finding("color_mode", "info", f"{len(paths)} image(s): {oddity}", paths))
    return out


def _duplicates(
    scan: DatasetScan,
    infos: list[FileInfo],
    splits: dict[str, str],
    options: CheckOptions,
) -> list[Finding]:
    ok = [i for i, info in enumerate(infos) if info.ok and info.phash is not None]
    entries = [scan.entries[i] for i in ok]
    content = [infos[i].sha256 for i in ok]
    out: list[Finding] = []
    for group in exact_groups(content):
        out.append(_classify_group([entries[i] for i in group], splits, exact=True))
    if ok:
        phashes = np.array([infos[i].phash for i in ok], dtype=np.uint64)
        thumbs = np.stack([infos[i].thumb for i in ok]).astype(np.float32)
        groups = near_groups(
            phashes, thumbs, content, options.near_distance, options.near_correlation
        )
        for group in groups:
            out.append(_classify_group([entries[i] for i in group], splits, exact=False))
    return out


def _classify_group(group: list[ImageEntry], splits: dict[str, str], exact: bool) -> Finding:
    group = sorted(group, key=lambda e: e.relpath)
    paths = [e.relpath for e in group]
    what = "identical files" if exact else "near-identical images"
    labels = sorted({e.label for e in group})
    if len(labels) > 1:
        return Finding(
            "label_conflict",
            "error",
            f"{what} under different classes {labels}: at most one label is right; "
            "--fix quarantines all of them, put back the right one",
            paths,
            paths,
        )
    group_splits = {splits.get(e.relpath) for e in group} - {None}
    if len(group_splits) > 1:
        keep = next(s for s in _HELD_OUT_ORDER if s in group_splits)
        move = [e.relpath for e in group if splits.get(e.relpath) != keep]
        return Finding(
            "leak",
            "error",
            f"{what} in splits {sorted(group_splits)}: the {keep} score would be inflated; "
            f"--fix quarantines the copies outside {keep}",
            paths,
            move,
        )
    if exact:
        return Finding(
            "exact_duplicate",
            "warning",
            f"{len(group)} identical files in class {labels[0]!r}: they over-weight one "
            "picture; --fix keeps the first",
            paths,
            paths[1:],
        )
    return Finding(
        "near_duplicate",
        "warning",
        f"{len(group)} near-identical images in class {labels[0]!r} (e.g. burst shots or "
        "re-saved copies): fine for training, but keep them in one split",
        paths,
    )


def _imbalance(counts: dict[str, int], max_ratio: float) -> list[Finding]:
    nonzero = {k: v for k, v in counts.items() if v}
    if len(nonzero) < 2:
        return []
    big = max(nonzero, key=lambda k: nonzero[k])
    small = min(nonzero, key=lambda k: nonzero[k])
    ratio = nonzero[big] / nonzero[small]
    if ratio <= max_ratio:
        return []
    return [
        Finding(
            "imbalance",
            "warning",
            f"class imbalance {ratio:.1f}:1 ({big!r} {nonzero[big]} vs {small!r} "
            f"{nonzero[small]}): training uses class weights, but more images of the small "
            "classes help most; read per-class recall, not only accuracy",
            [big, small],
        )
    ]


def apply_fix(report: CheckReport, quarantine_dir: Path) -> list[Moved]:
    """Move every file an error or duplicate finding names into ``quarantine_dir``."""
    moved: list[Moved] = []
    done: set[str] = set()
    for finding in report.findings:
        for relpath in finding.move:
            if relpath in done or not (report.data_dir / relpath).exists():
                continue
            moved.append(
                quarantine_file(
                    report.data_dir,
                    relpath,
                    quarantine_dir,
                    finding.kind,
                    finding.message,
                    finding.paths,
                )
            )
            done.add(relpath)
    return moved
