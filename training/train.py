"""``edgecam-train train DATA``: from a folder of images to a run folder.

Order of work: validate options -> set up the hardware -> build the backbone (weights are
resolved here, so a failed download stops the run before any data work) -> scan + split ->
tf.data pipelines -> phase 1 (head; or the whole net from scratch) -> phase 2 (fine-tune the
top of a pretrained backbone at a lower rate) -> best checkpoint -> SavedModel export ->
run.json -> evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training import models, runfolder
from training.config import TrainConfig
from training.dataset import DatasetScan, scan_dataset
from training.errors import DatasetError, RunError
from training.pipeline import make_dataset
from training.runtime import Runtime, setup_runtime
from training.splits import Manifest, default_manifest_path, load_split, resolve_split
from training.tfenv import import_tf

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    report: dict[str, Any]
    epochs_run: int
    train_seconds: float


def default_run_name(data_dir: Path) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{Path(data_dir).resolve().name}-{stamp}"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a new (or empty) folder; a resumed one needs its config.yaml."""
    if resume:
        if not (run_dir / runfolder.CONFIG).is_file():
            raise RunError(f"nothing to resume in {run_dir}: no {runfolder.CONFIG} there")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(
            f"run folder {run_dir} already exists: pick another --name/--out, "
            "or add --resume to continue it"
        )


def _manifest_location(config: TrainConfig, data_dir: Path, run_dir: Path) -> Path:
    if config.manifest is not None:
        return Path(config.manifest).resolve()
    path = default_manifest_path(data_dir)
    if os.access(data_dir, os.W_OK):
        return path
    log.warning("%s is read-only: keeping the split manifest in the run folder", data_dir)
    return run_dir / runfolder.SPLIT


def _class_weights(counts: Counter, num_classes: int) -> dict[int, float]:
    total = sum(counts.values())
    return {c: total / (num_classes * counts[c]) for c in range(num_classes) if counts[c]}


def _warn_leaks(manifest: Manifest) -> None:
    by_split: dict[str, set[str]] = {}
    for it in manifest.items:
        by_split.setdefault(it.split, set()).add(it.sha256)
    leaked = by_split.get("test", set()) & (
        by_split.get("train", set()) | by_split.get("val", set())
    )
    if leaked:
        log.warning(
            "%d test image(s) also appear in train/val: the test score will be inflated; "
            "run `edgecam-train check DATA --fix`",
            len(leaked),
        )


def train(
    data_dir: Path,
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    init_from: Path | None = None,
) -> TrainResult:
    """Train and evaluate; everything lands in ``run_dir`` (see training.runfolder).

    ``init_from``: a finished run whose weights the new model starts from (fine-tuning on a
    grown dataset, :mod:`training.warmstart`); its backbone is not downloaded again."""
    data_dir = Path(data_dir).resolve()
    run_dir = Path(run_dir).resolve()
    config = config.resolved()
    models.validate_backbone_options(config)
    check_run_dir(run_dir, resume)
    scan = scan_dataset(data_dir)
    scan.require_usable()

    import_tf()
    runtime = setup_runtime(config.mixed_precision, config.seed, config.deterministic)
    if init_from is not None:
        from training.warmstart import check_compatible

        check_compatible(Path(init_from), config)
    with runtime.strategy.scope():
        # a failed weights download stops us here; a warm start needs no download
        backbone = models.build_backbone(
            config if init_from is None else config.model_copy(update={"weights": "none"})
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / runfolder.CONFIG).write_text(config.to_yaml(), encoding="utf-8")
    file_log = _attach_log(run_dir)
    try:
        return _train(scan, config, run_dir, resume, runtime, backbone, init_from)
    finally:
        logging.getLogger().removeHandler(file_log)
        file_log.close()


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / runfolder.LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler


def _train(
    scan: DatasetScan,
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    runtime: Runtime,
    backbone: Any,
    init_from: Path | None = None,
) -> TrainResult:
    import keras

    from training.history import HistoryFile
    from training.interrupt import KeepBackupWhenStopped, StopOnSignal, TrainingInterrupted

    data_dir = scan.root
    manifest_path = _manifest_location(config, data_dir, run_dir)
    manifest = resolve_split(
        scan, manifest_path, config.val_fraction, config.test_fraction, config.seed
    )
    if manifest_path != run_dir / runfolder.SPLIT:
        shutil.copyfile(manifest_path, run_dir / runfolder.SPLIT)
    _warn_leaks(manifest)
    split = load_split(run_dir / runfolder.SPLIT)
    for name in ("train", "val", "test"):
        if not split[name]:
            raise DatasetError(
                f"the {name} split is empty ({len(manifest.items)} images in all): "
                "add images or change --val-fraction/--test-fraction"
            )
    labels = manifest.labels
    runfolder.write_labels(run_dir / runfolder.LABELS, labels)
    log.info(
        "%d classes; train %d, val %d, test %d images",
        len(labels),
        len(split["train"]),
        len(split["val"]),
        len(split["test"]),
    )

    size = config.size
    train_ds = make_dataset(
        split["train"], size, config.batch_size, True, config.augment, config.seed, config.cache
    )
    val_cache = config.cache if config.cache in ("memory", "none") else f"{config.cache}.val"
    val_ds = make_dataset(split["val"], size, config.batch_size, cache=val_cache)
    counts = Counter(c for _, c in split["train"])
    class_weight = (
        _class_weights(counts, len(labels)) if config.class_weights == "balanced" else None
    )

    with runtime.strategy.scope():
        model = models.build_classifier(backbone, config, len(labels))
    state_path = run_dir / runfolder.STATE
    state = runfolder.read_json(state_path) if (resume and state_path.is_file()) else {}
    best_path = run_dir / runfolder.MODEL
    if resume and state.get("phase_done", 0) >= 1 and best_path.is_file():
        model.load_weights(best_path)
    elif init_from is not None:
        from training.warmstart import load_run_weights

        load_run_weights(model, Path(init_from), labels)

    history = run_dir / runfolder.HISTORY
    phases = _phases(config)
    start = time.perf_counter()
    epochs_before = state.get("epochs_run", 0)
    epoch = epochs_before
    for phase, (epochs, lr, fine_tune) in enumerate(phases, start=1):
        if state.get("phase_done", 0) >= phase:
            continue
        with runtime.strategy.scope():
            if models.is_pretrained(config) and not fine_tune:
                models.freeze_backbone(model)
            elif fine_tune:
                n = models.unfreeze_top(model, config.fine_tune_fraction)
                log.info("phase %d: fine-tuning %d backbone layers at lr %g", phase, n, lr)
            rate: Any = lr
            if config.lr_schedule == "cosine" and not fine_tune:
                steps = epochs * math.ceil(len(split["train"]) / config.batch_size)
                rate = keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.01)
            model.compile(
                optimizer=keras.optimizers.Adam(rate),
                loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=["accuracy"],
            )
        recorder = HistoryFile(history, phase)
        stopper = StopOnSignal()
        callbacks = [
            keras.callbacks.ModelCheckpoint(
                best_path,
                monitor="val_loss",
                save_best_only=True,
                initial_value_threshold=recorder.best_val_loss(),
            ),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True
            ),
            KeepBackupWhenStopped(str(run_dir / runfolder.BACKUP / f"phase{phase}"), stopper),
            recorder,
            stopper,
        ]
        fit = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epoch + epochs,
            initial_epoch=epoch,
            class_weight=class_weight,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=2 if log.isEnabledFor(logging.INFO) else 0,
        )
        if stopper.received is not None:
            raise TrainingInterrupted(
                f"training stopped by {signal.Signals(stopper.received).name} in phase {phase}; "
                f"continue it with: edgecam-train train {data_dir} --out {run_dir} --resume"
            )
        # The history file also holds epochs from before a resume.
        epoch = max((r["epoch"] for r in recorder.records), default=epoch)
        log.debug("phase %d ran %d epoch(s)", phase, len(fit.history.get("loss", [])))
        if best_path.is_file():
            model.load_weights(best_path)
        state = {"phase_done": phase, "epochs_run": epoch}
        runfolder.write_json(state_path, state)
    train_seconds = time.perf_counter() - start
    shutil.rmtree(run_dir / runfolder.BACKUP, ignore_errors=True)

    best = keras.models.load_model(best_path, compile=False)
    saved = run_dir / runfolder.SAVED_MODEL
    shutil.rmtree(saved, ignore_errors=True)
    best.export(str(saved), verbose=False)
    previous = (
        runfolder.read_json(run_dir / runfolder.RUN_JSON)
        if resume and (run_dir / runfolder.RUN_JSON).is_file()
        else {}
    )
    record = runfolder.RunRecord(
        name=run_dir.name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data_dir=str(data_dir),
        dataset_hash=manifest.dataset_hash,
        split_manifest=run_dir / runfolder.SPLIT,
        labels=tuple(labels),
        input=runfolder.input_spec(*size),
        extra={
            "backbone": config.backbone,
            "weights": config.weights_resolved,
            "alpha": config.alpha,
            "epochs_run": epoch,
            "train_seconds": round(previous.get("train_seconds", 0) + train_seconds, 2),
            "runtime": runtime.describe(),
            "split_counts": {k: len(v) for k, v in split.items()},
            **({"init_from": str(Path(init_from).resolve())} if init_from is not None else {}),
        },
    )
    runfolder.write_json(run_dir / runfolder.RUN_JSON, record.to_json())
    log.info("trained %d epochs in %.1f s; run folder %s", epoch, train_seconds, run_dir)

    from training.evaluate import evaluate_run

    report = evaluate_run(run_dir, baselines=config.baselines)
    return TrainResult(run_dir, report, epoch, train_seconds)


def _phases(config: TrainConfig) -> list[tuple[int, float, bool]]:
    """(epochs, learning rate, fine_tune) per phase."""
    phases = [(config.epochs, config.learning_rate, False)]
    if models.is_pretrained(config) and config.fine_tune_epochs:
        phases.append(
            (config.fine_tune_epochs, config.learning_rate * config.fine_tune_lr_factor, True)
        )
    return phases
