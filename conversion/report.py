"""The verification table (terminal and Markdown) and ``verification.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from conversion.gate import GateResult, VariantFigures

log = logging.getLogger(__name__)

HEADERS = ("variant", "accuracy", "macro-F1", "agreement", "size", "latency", "vs float32", "gate")


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.2f} MiB"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _row(f: VariantFigures) -> list[str]:
    return [
        f.variant,
        _pct(f.accuracy),
        "-" if f.macro_f1 is None else f"{f.macro_f1:.4f}",
        _pct(f.agreement),
        human_size(f.size_bytes),
        "-" if f.latency_ms is None else f"{f.latency_ms:.3f} ms",
        "-"
        if f.drop_points is None or f.status == "reference"
        else f"{0.0 - f.drop_points + 0.0:+.2f} pt",
        f.status,
    ]


def rows(gate: GateResult) -> list[list[str]]:
    return [_row(f) for f in gate.figures.values()]


def terminal_table(gate: GateResult) -> str:
    body = rows(gate)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def markdown_table(gate: GateResult) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(gate)]
    return "\n".join(lines)


def markdown_report(gate: GateResult, name: str, extra: list[str] | None = None) -> str:
    parts = [
        f"# Verification of {name}",
        "",
        f"{gate.test_images} test images, run through the device's inference code. "
        f"Gate: each variant may lose at most {gate.max_drop:.1f} accuracy points against "
        f"{gate.reference} — **{gate.status}**.",
        "",
        markdown_table(gate),
    ]
    if gate.failures:
        parts += ["", "## Failures", ""] + [f"- {m}" for m in gate.failures]
    notes = [f"- {f.variant}: {f.note}" for f in gate.figures.values() if f.note]
    if notes or extra:
        parts += ["", "## Notes", ""] + notes + [f"- {e}" for e in extra or []]
    return "\n".join(parts) + "\n"


def verification_json(gate: GateResult, **extra: Any) -> dict[str, Any]:
    return {
        "gate": gate.status,
        "max_drop": gate.max_drop,
        "reference": gate.reference,
        "test_images": gate.test_images,
        "variants": {v: f.as_json() for v, f in gate.figures.items()},
        "failures": gate.failures,
        **extra,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
