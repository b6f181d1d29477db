"""Deterministic, stratified train/val/test splits, stable as a dataset grows.

Each image is assigned by its *content* sha256, never by its name or position:

* an image already in the previous manifest keeps its split (same content hash);
* new images of a class are taken in a seeded hash order, and each goes to the split furthest
  below its target share of that class (stratified greedy fill);
* identical files (same hash) always land in the same split, so they cannot leak;
* a dataset that comes split (``DATA/train``, ``DATA/test``, optional ``DATA/val``) keeps its
  folders' splits; when it has no ``val`` folder, val is carved out of ``train`` the same way.

The manifest is a JSON file (default ``DATA/edgecam-split.json``)::

    {"version": 1, "data_dir": "/abs/DATA", "seed": 1234, "presplit": false,
     "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "labels": ["cat", "dog"],
     "items": [{"path": "cat/1.jpg", "label": "cat", "sha256": "...", "split": "train"}, ...]}
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from training.dataset import SPLITS, DatasetScan
from training.errors import DatasetError
from training.hashing import dataset_hash, keyed_order, sha256_file
from training.parallel import map_images

log = logging.getLogger(__name__)

MANIFEST_NAME = "edgecam-split.json"
MANIFEST_VERSION = 1
# Candidate order when two splits are equally short: a small class gets its test image first.
_FILL_ORDER = ("test", "val", "train")


@dataclass(frozen=True)
class SplitItem:
    path: str  # relative to data_dir, POSIX separators
    label: str
    sha256: str
    split: str


@dataclass
class Manifest:
    data_dir: Path
    labels: list[str]
    items: list[SplitItem]
    seed: int
    fractions: dict[str, float]
    presplit: bool
    created_at: str = field(default_factory=lambda: _now())

    @property
    def dataset_hash(self) -> str:
        return dataset_hash(i.sha256 for i in self.items)

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> label -> number of images."""
        out = {s: dict.fromkeys(self.labels, 0) for s in SPLITS}
        for it in self.items:
            out[it.split][it.label] += 1
        return out

    def to_json(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "created_at": self.created_at,
            "data_dir": str(self.data_dir),
            "dataset_hash": self.dataset_hash,
            "seed": self.seed,
            "presplit": self.presplit,
            "fractions": self.fractions,
            "labels": self.labels,
            "items": [
                {"path": i.path, "label": i.label, "sha256": i.sha256, "split": i.split}
                for i in self.items
            ],
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_manifest_path(data_dir: Path) -> Path:
    return Path(data_dir) / MANIFEST_NAME


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest file; raise DatasetError naming the file if it is not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"split manifest not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"split manifest {path} is not valid JSON: {exc}") from None
    try:
        items = [SplitItem(d["path"], d["label"], d["sha256"], d["split"]) for d in raw["items"]]
        manifest = Manifest(
            data_dir=Path(raw["data_dir"]),
            labels=list(raw["labels"]),
            items=items,
            seed=int(raw["seed"]),
            fractions={k: float(v) for k, v in raw["fractions"].items()},
            presplit=bool(raw.get("presplit", False)),
            created_at=str(raw.get("created_at", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"split manifest {path} is missing or has a bad field: {exc}") from None
    bad = {i.split for i in items} - set(SPLITS)
    if bad:
        raise DatasetError(f"split manifest {path}: unknown split name(s) {sorted(bad)}")
    if not manifest.data_dir.is_dir() and path.parent.is_dir():
        # The dataset moved together with its manifest: resolve paths next to the manifest.
        manifest.data_dir = path.resolve().parent
    return manifest


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a manifest."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_split(manifest_path: str | Path) -> dict[str, list[tuple[Path, int]]]:
    """split name -> [(absolute image path, class index)] for "train", "val" and "test".

    The class index is the position of the label in the manifest's sorted ``labels`` (the same
    order as a run's ``labels.txt``).
    """
    manifest = read_manifest(Path(manifest_path))
    index = {label: i for i, label in enumerate(manifest.labels)}
    out: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for it in manifest.items:
        out[it.split].append((manifest.data_dir / it.path, index[it.label]))
    return out


def hash_images(scan: DatasetScan, workers: int = 8) -> dict[str, str]:
    """relative path -> content sha256 for every image in the scan (threaded, progress bar)."""
    digests = map_images(sha256_file, [scan.path(e) for e in scan.entries], "hashing", workers)
    return {e.relpath: d for e, d in zip(scan.entries, digests, strict=True)}


def make_split(
    scan: DatasetScan,
    hashes: dict[str, str],
    previous: Manifest | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 1234,
) -> Manifest:
    """Assign every image of ``scan`` to train/val/test (see the module docstring)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(
            f"split fractions must be in [0, 1) and sum below 1: "
            f"val={val_fraction}, test={test_fraction}"
        )
    if previous is not None:
        seed = previous.seed
        val_fraction = previous.fractions.get("val", val_fraction)
        test_fraction = previous.fractions.get("test", test_fraction)
    fractions = {
        "train": round(1 - val_fraction - test_fraction, 6),
        "val": val_fraction,
        "test": test_fraction,
    }
    has_val_folder = any(e.folder_split == "val" for e in scan.entries)
    assigned: dict[str, str] = {}  # content hash -> split, shared by all classes
    if previous is not None:
        for it in previous.items:
            assigned.setdefault(it.sha256, it.split)
    by_class: dict[str, list] = defaultdict(list)
    for e in scan.entries:
        by_class[e.label].append(e)

    final: dict[str, str] = {}  # relpath -> split
    moved_by_folder = 0
    for label in scan.labels:
        entries = by_class.get(label, [])
        counts = dict.fromkeys(SPLITS, 0)
        pending = []
        for e in entries:
            h = hashes[e.relpath]
            split = _fixed_split(e.folder_split, assigned.get(h), has_val_folder)
            if split is None:
                pending.append(e)
                continue
            if e.folder_split is not None and assigned.get(h) not in (None, split):
                moved_by_folder += 1
            assigned[h] = split
            final[e.relpath] = split
            counts[split] += 1
        if scan.presplit:
            # Only the train folder's new images are open: carve val out of them.
            pool_total = counts["train"] + counts["val"] + len(pending)
            targets = {"train": (1 - val_fraction) * pool_total, "val": val_fraction * pool_total}
        else:
            total = len(entries)
            targets = {s: fractions[s] * total for s in SPLITS}
        for e in sorted(pending, key=lambda e: keyed_order(hashes[e.relpath], seed)):
            h = hashes[e.relpath]
            split = assigned.get(h)
            if split not in targets:
                split = max(
                    (s for s in _FILL_ORDER if s in targets),
                    key=lambda s: (targets[s] - counts[s], -_FILL_ORDER.index(s)),
                )
                assigned[h] = split
            final[e.relpath] = split
            counts[split] += 1
    if moved_by_folder:
        log.warning(
            "%d image(s) sit in a different split folder than the previous manifest says; "
            "the folder wins",
            moved_by_folder,
        )
    items = [
        SplitItem(e.relpath, e.label, hashes[e.relpath], final[e.relpath])
        for e in sorted(scan.entries, key=lambda e: e.relpath)
    ]
    manifest = Manifest(
        data_dir=scan.root,
        labels=list(scan.labels),
        items=items,
        seed=seed,
        fractions=fractions,
        presplit=scan.presplit,
        created_at=previous.created_at if previous is not None else _now(),
    )
    if previous is not None:
        _log_changes(previous, manifest)
    return manifest


def _fixed_split(
    folder_split: str | None, previous: str | None, has_val_folder: bool
) -> str | None:
    """The split an image must keep, or None when it is free to be assigned."""
    if folder_split in ("test", "val"):
        return folder_split
    if folder_split == "train":
        if has_val_folder:
            return "train"
        return previous if previous in ("train", "val") else None
    return previous


def _log_changes(previous: Manifest, current: Manifest) -> None:
    old = {it.path for it in previous.items}
    new = {it.path for it in current.items}
    added, removed = len(new - old), len(old - new)
    if added or removed:
        log.info("split manifest updated: %d new image(s), %d gone", added, removed)


def resolve_split(
    scan: DatasetScan,
    manifest_path: Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 1234,
    write: bool = True,
) -> Manifest:
    """Hash the images, update (or create) the manifest at ``manifest_path`` and return it."""
    previous = read_manifest(manifest_path) if manifest_path.is_file() else None
    if previous is not None and sorted(previous.labels) != sorted(scan.labels):
        log.warning(
            "classes changed since %s was written: %s -> %s",
            manifest_path,
            previous.labels,
            scan.labels,
        )
    hashes = hash_images(scan)
    manifest = make_split(scan, hashes, previous, val_fraction, test_fraction, seed)
    if write:
        write_manifest(manifest, manifest_path)
        log.info("split manifest: %s", manifest_path)
    return manifest
