"""Finding the images of an ImageFolder dataset: ``DATA/<class>/*`` or ``DATA/<split>/<class>/*``.

Accepted layouts:

* ``DATA/<class>/**/*.{jpg,jpeg,png,bmp}`` — one folder per class (nested folders allowed);
* ``DATA/train/<class>/...`` and ``DATA/test/<class>/...``, optionally ``DATA/val/<class>/...``
  (also ``training``, ``valid``/``validation``, ``testing``) — a dataset that comes split.

Class labels are the folder names, sorted; the class index is the position in that list.
Hidden files and folders (``.name``) are skipped; other file types are listed as ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class ImageEntry:
    """One image file: path relative to the data folder, class label, split from the layout."""

    relpath: str
    label: str
    folder_split: str | None = None


@dataclass
class DatasetScan:
    """What is in a data folder."""

    root: Path
    labels: list[str]
    entries: list[ImageEntry]
    presplit: bool
    ignored: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def path(self, entry: ImageEntry) -> Path:
        return self.root / entry.relpath

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.labels, 0)
        for e in self.entries:
            out[e.label] += 1
        return out

    def require_usable(self) -> None:
        """Raise a DatasetError when the scan cannot be trained on."""
        if self.empty_classes:
            names = ", ".join(repr(c) for c in self.empty_classes)
            raise DatasetError(
                f"class folder(s) with no images in {self.root}: {names} "
                f"(add images or remove the folder; accepted: {_ext_list()})"
            )
        if len(self.labels) < 2:
            raise DatasetError(
                f"need at least 2 class folders in {self.root}, found {len(self.labels)}"
            )


def _ext_list() -> str:
    return ", ".join(sorted(IMAGE_EXTENSIONS))


def _visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _files_under(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(p)
    return out


def is_presplit(root: Path) -> bool:
    """True when ``root`` holds ``train`` and ``test`` folders (the already-split layout)."""
    names = {SPLIT_ALIASES.get(p.name.lower()) for p in root.iterdir() if p.is_dir()}
    return "train" in names and "test" in names


def scan_dataset(root: Path) -> DatasetScan:
    """List a data folder's classes and images; raise DatasetError if it is not a dataset."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root} (expected DATA/<class>/<images>)")
    presplit = is_presplit(root)
    entries: list[ImageEntry] = []
    ignored: list[str] = []
    class_files: dict[str, int] = {}
    if presplit:
        for child in _visible_children(root):
            split = SPLIT_ALIASES.get(child.name.lower())
            if child.is_dir() and split is not None:
                _scan_classes(root, child, split, entries, ignored, class_files)
            else:
                ignored.append(child.name)
    else:
        _scan_classes(root, root, None, entries, ignored, class_files)
    labels = sorted(class_files)
    if not labels:
        raise DatasetError(
            f"no class folders in {root}: expected DATA/<class>/<images> "
            f"or DATA/train/<class>/ + DATA/test/<class>/"
        )
    empty = sorted(c for c, n in class_files.items() if n == 0)
    scan = DatasetScan(root, labels, entries, presplit, ignored, empty)
    log.debug(
        "scanned %s: %d images, %d classes%s",
        root,
        len(entries),
        len(labels),
        " (pre-split)" if presplit else "",
    )
    return scan


def _scan_classes(
    root: Path,
    folder: Path,
    split: str | None,
    entries: list[ImageEntry],
    ignored: list[str],
    class_files: dict[str, int],
) -> None:
    for class_dir in _visible_children(folder):
        if not class_dir.is_dir():
            ignored.append(class_dir.relative_to(root).as_posix())
            continue
        label = class_dir.name
        class_files.setdefault(label, 0)
        for f in _files_under(class_dir):
            rel = f.relative_to(root).as_posix()
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                entries.append(ImageEntry(rel, label, split))
                class_files[label] += 1
            else:
                ignored.append(rel)
