"""Evaluation figures (PNG, matplotlib's headless Agg backend)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

log = logging.getLogger(__name__)


def confusion_matrix_png(cm: np.ndarray, labels: list[str], path: Path) -> None:
    n = len(labels)
    side = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90 if n > 8 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (counts; colour = share of the true class)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_curves_png(records: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train vs val; a dashed line where fine-tuning starts."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in records]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker=".", label=key)
        phase2 = [r["epoch"] for r in records if r.get("phase") == 2]
        if phase2:
            ax.axvline(min(phase2) - 0.5, color="gray", linestyle=":", label="fine-tuning")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mistakes_png(images: list[np.ndarray], titles: list[str], path: Path) -> None:
    """A grid of images with a caption each (the worst mistakes: true / predicted / score)."""
    if not images:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes on the test set", ha="center", va="center")
    else:
        cols = min(6, len(images))
        rows = math.ceil(len(images) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, img, title in zip(axes.ravel(), images, titles, strict=False):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
