"""The before/after report of ``edgecam-train retrain``: Markdown + PNG figures + JSON.

Written into the new run folder::

    retrain-report.md      the tables (accuracy per test set, per-class recall, the gate)
    retrain-report.json    the same figures
    retrain_accuracy.png   accuracy of the old and the new model per test set
    retrain_recall.png     per-class recall, old vs new, per test set
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training import runfolder

log = logging.getLogger(__name__)

REPORT_MD = "retrain-report.md"
REPORT_JSON = "retrain-report.json"
ACCURACY_PNG = "retrain_accuracy.png"
RECALL_PNG = "retrain_recall.png"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _delta(old: float | None, new: float | None) -> str:
    return "–" if old is None or new is None else f"{100 * (new - old):+.2f} pt"


def accuracy_png(scores: dict[str, dict[str, Any]], path: Path) -> None:
    names = [n for n, pair in scores.items() if pair["old"].accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(names))
    for offset, which, color in ((-0.2, "old", "#9aa7b8"), (0.2, "new", "#2f6fdf")):
        values = [100 * scores[n][which].accuracy for n in names]
        bars = ax.bar(x + offset, values, 0.4, label=f"{which} model", color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [f"{n}\n({scores[n]['old'].images} images)" for n in names])
    ax.set_ylabel("accuracy (%)")
    low = min([100 * scores[n][w].accuracy for n in names for w in ("old", "new")], default=0)
    ax.set_ylim(max(0, low - 10), 100)
    ax.legend(loc="lower right")
    ax.set_title("accuracy before and after retraining")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def recall_png(scores: dict[str, dict[str, Any]], path: Path) -> None:
    names = [n for n, pair in scores.items() if pair["old"].accuracy is not None]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.2 * max(1, len(names))), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        labels = sorted(scores[name]["old"].support)
        x = np.arange(len(labels))
        for offset, which, color in ((-0.2, "old", "#9aa7b8"), (0.2, "new", "#2f6fdf")):
            ax.bar(x + offset, [100 * scores[name][which].recall[lab] for lab in labels], 0.4,
                   label=f"{which} model", color=color)  # fmt: skip
        ax.set_xticks(x, labels, rotation=90 if len(labels) > 12 else 0)
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"per-class recall: {name}")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: Any, data_dir: Path, field_test_dir: Path) -> Path:
    """Write the report files into the new run folder; returns the Markdown file."""
    folder = Path(result.new_run)
    scores = result.scores
    accuracy_png(scores, folder / ACCURACY_PNG)
    recall_png(scores, folder / RECALL_PNG)
    new_record = runfolder.read_run_record(folder)
    lines = [
        f"# Retraining: {Path(result.old_run).name} → {folder.name}",
        "",
        f"- started from: `{result.old_run}` (its weights; classes matched by label)",
        f"- data: `{data_dir}` (dataset hash `{(new_record.dataset_hash or '')[:12]}`), "
        f"epochs run: {new_record.extra.get('epochs_run')}",
        f"- field test set: `{field_test_dir}` (field samples kept out of training by "
        "`edgecam-train merge`)",
        "- the original test split is the previous run's: field samples never enter it",
        "",
        "## Accuracy",
        "",
        "| test set | images | old model | new model | change |",
        "|---|---|---|---|---|",
    ]
    for name, pair in scores.items():
        old, new = pair["old"], pair["new"]
        lines.append(
            f"| {name} | {old.images} | {_pct(old.accuracy)} | {_pct(new.accuracy)} | "
            f"{_delta(old.accuracy, new.accuracy)} |"
        )
    lines += ["", f"![accuracy]({ACCURACY_PNG})", "", "## Per-class recall", ""]
    names = [n for n, pair in scores.items() if pair["old"].accuracy is not None]
    header = "| class | " + " | ".join(f"{n}: old | {n}: new" for n in names) + " |"
    lines += [header, "|---|" + "---|---|" * len(names)]
    labels = sorted({lab for n in names for lab in scores[n]["old"].support})
    for lab in labels:
        cells = []
        for n in names:
            for which in ("old", "new"):
                value = scores[n][which].recall.get(lab)
                cells.append(_pct(value) if value is not None else "–")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", f"![per-class recall]({RECALL_PNG})", "", "## Gate of the new bundle", ""]
    if result.gate is not None:
        from conversion.report import markdown_table

        lines += [
            f"Bundles in `{result.bundles}`, verified on {result.gate.test_images} test images "
            "through the device's inference code; each variant may lose at most "
            f"{result.gate.max_drop:.1f} accuracy points against float32: "
            f"**{result.gate.status}**.",
            "",
            markdown_table(result.gate),
        ]
        lines += [f"- {m}" for m in result.gate.failures]
    else:
        lines.append("Not converted (`--no-convert`).")
    lines += ["", "## Time", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in result.seconds.items()]
    md = folder / REPORT_MD
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    runfolder.write_json(
        folder / REPORT_JSON,
        {
            "old_run": str(result.old_run),
            "new_run": str(folder),
            "data_dir": str(data_dir),
            "field_test_dir": str(field_test_dir),
            "scores": {n: {w: s.to_json() for w, s in pair.items()} for n, pair in scores.items()},
            "gate": result.gate.status if result.gate is not None else None,
            "bundles": str(result.bundles) if result.bundles else None,
            "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        },
    )
    log.info("retrain report: %s", md)
    return md
