"""Which images calibrate the int8 model and which verify every variant.

Sources, in order of preference:

* a run's split manifest (``run.json`` ``split_manifest``, read by ``training.splits``):
  calibration is drawn from ``train``, verification uses ``test``;
* ``--data DIR``, an ImageFolder (``DIR/<class>/*`` or ``DIR/train|test/<class>/*``): with a
  split manifest inside (``DIR/edgecam-split.json``) as above; pre-split folders give
  train/test; otherwise calibration is a stratified sample and verification the remaining images;
* ``--calibration-data DIR`` overrides the calibration images only (any images, with or
  without class folders).

Calibration images are preprocessed by the device's own ``Preprocessor`` (same resize filter,
crop and normalisation as at inference).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conversion.errors import ConversionError
from device.errors import SourceError
from device.inference import TensorInfo
from device.model import InputSpec
from device.preprocess import IMAGE_SUFFIXES, Preprocessor, load_image
from training.dataset import scan_dataset
from training.errors import TrainingError
from training.splits import default_manifest_path, load_split

log = logging.getLogger(__name__)

Item = tuple[Path, int]  # (image path, class index; -1 when unknown)


@dataclass
class DataPlan:
    """Calibration and verification images."""

    calibration: list[Item]
    test: list[Item]
    description: str


def stratified_sample(items: Sequence[Item], size: int, seed: int = 0) -> list[Item]:
    """Up to ``size`` items, classes taking turns (round-robin), each class in seeded order."""
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_class[item[1]].append(item)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_class):
        bucket = sorted(by_class[label], key=lambda it: str(it[0]))
        rng.shuffle(bucket)
        queues.append(bucket)
    out: list[Item] = []
    depth = 0
    while len(out) < size and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < size:
                out.append(q[depth])
        depth += 1
    return out


def _plan_from_manifest(manifest: Path, calibration_size: int, seed: int) -> DataPlan:
    try:
        splits = load_split(manifest)
    except TrainingError as exc:
        raise ConversionError(
            f"cannot read the split manifest: {exc}",
            "pass the data folder with --data DIR (for instance when it moved)",
        ) from None
    missing = [p for p, _ in splits["test"][:5] + splits["train"][:5] if not p.exists()]
    if missing:
        raise ConversionError(
            f"images of the split manifest {manifest} are missing (e.g. {missing[0]})",
            "the data folder moved or was deleted: pass its new location with --data DIR",
        )
    pool = splits["train"] or splits["val"]
    return DataPlan(
        calibration=stratified_sample(pool, calibration_size, seed),
        test=list(splits["test"]),
        description=f"split manifest {manifest}",
    )


def plan_from_run(manifest: Path | None, calibration_size: int, seed: int = 0) -> DataPlan:
    """Calibration from the run's train split, verification on its test split."""
    if manifest is None:
        raise ConversionError(
            "the run folder names no split manifest (run.json split_manifest)",
            "pass the data folder with --data DIR",
        )
    return _plan_from_manifest(manifest, calibration_size, seed)


def plan_from_folder(
    data_dir: Path, labels: Sequence[str], calibration_size: int, seed: int = 0
) -> DataPlan:
    """Calibration and verification images from an ImageFolder."""
    data_dir = Path(data_dir).expanduser()
    manifest = default_manifest_path(data_dir)
    if manifest.exists():
        return _plan_from_manifest(manifest, calibration_size, seed)
    try:
        scan = scan_dataset(data_dir)
    except TrainingError as exc:
        raise ConversionError(str(exc), "--data takes DATA/<class>/<images>") from None
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(scan.labels) - set(index))
    if unknown:
        raise ConversionError(
            f"class folder(s) in {data_dir} that the model does not know: {', '.join(unknown)}",
            f"the model's labels are: {', '.join(labels)}",
        )
    items = [(scan.path(e), index[e.label], e.folder_split) for e in scan.entries]
    if scan.presplit:
        test = [(p, i) for p, i, s in items if s == "test"]
        pool = [(p, i) for p, i, s in items if s == "train"]
        return DataPlan(stratified_sample(pool, calibration_size, seed), test, str(data_dir))
    everything = [(p, i) for p, i, _ in items]
    calibration = stratified_sample(everything, calibration_size, seed)
    chosen = {p for p, _ in calibration}
    test = [it for it in everything if it[0] not in chosen] or everything
    return DataPlan(calibration, test, str(data_dir))


def images_in(folder: Path) -> list[Item]:
    """Every image under ``folder`` (class unknown): for ``--calibration-data``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConversionError(f"calibration folder not found: {folder}")
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not found:
        raise ConversionError(f"no images in {folder}", f"accepted: {', '.join(IMAGE_SUFFIXES)}")
    return [(p, -1) for p in found]


class CalibrationSet:
    """The representative dataset: images as the network's input, preprocessed by the device.

    The int8 input tensor gets scale 1 / zero point 0 (raw pixels) only when the calibration
    pixels span 0..255. When they do not, a last "range anchor" sample is added: the first
    image with one pixel set to 0 and one to 255, so the input quantization stays the identity
    (no clipping of bright pixels on a camera, and no per-pixel math on the device).
    """

    def __init__(self, items: Sequence[Item], spec: InputSpec, height: int, width: int, dtype):
        if not items:
            raise ConversionError(
                "no calibration images", "int8 needs images from the train split or --data"
            )
        self.items = list(items)
        self.spec = spec
        self.height = height
        self.width = width
        tensor = TensorInfo(0, "image", (1, height, width, 3), np.dtype(dtype), 0.0, 0)
        self.preprocessor = Preprocessor(spec, tensor)
        self.used = 0
        self.anchored = False

    def __call__(self) -> Iterator[list[np.ndarray]]:
        low, high = 255, 0
        first: np.ndarray | None = None
        self.used = 0
        for path, _ in self.items:
            try:
                image = load_image(path)
            except SourceError as exc:
                log.warning("calibration: skipping %s (%s)", path, exc.message)
                continue
            low, high = min(low, int(image.min())), max(high, int(image.max()))
            if first is None:
                first = image
            self.used += 1
            yield [self.preprocessor.process(image).copy()]
        if first is None:
            raise ConversionError("none of the calibration images could be read")
        if low > 0 or high < 255:
            import cv2

            anchor = cv2.resize(first, (self.width, self.height), interpolation=cv2.INTER_AREA)
            anchor[0, 0] = 0
            anchor[0, -1] = 255
            self.anchored = True
            log.info("calibration pixels span %d..%d: adding a 0..255 range anchor", low, high)
            yield [self.preprocessor.process(anchor).copy()]
