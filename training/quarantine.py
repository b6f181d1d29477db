"""Moving problem files out of a dataset (never deleting them), with a reason beside each."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

LOG_NAME = "quarantine.jsonl"


@dataclass(frozen=True)
class Moved:
    source: Path
    target: Path
    reason_file: Path


def default_quarantine_dir(data_dir: Path) -> Path:
    """``<DATA>.quarantine`` next to the data folder (outside it, so it is never trained on)."""
    return data_dir.parent / f"{data_dir.name}.quarantine"


def _free_target(target: Path) -> Path:
    if not target.exists():
        return target
    for n in range(1, 10_000):
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name for {target}")


def quarantine_file(
    data_dir: Path, relpath: str, quarantine_dir: Path, kind: str, message: str, related: list[str]
) -> Moved:
    """Move ``data_dir/relpath`` to ``quarantine_dir/relpath`` and write ``<file>.reason.txt``."""
    source = data_dir / relpath
    target = _free_target(quarantine_dir / relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    others = [r for r in related if r != relpath]
    reason = [
        f"problem: {kind}",
        f"detail: {message}",
        f"original: {source}",
        f"moved: {when}",
    ]
    if others:
        reason.append("related: " + ", ".join(others))
    reason.append(f"to restore: mv '{target}' '{source}'")
    reason_file = target.with_name(target.name + ".reason.txt")
    reason_file.write_text("\n".join(reason) + "\n", encoding="utf-8")
    record = {"kind": kind, "source": str(source), "target": str(target), "message": message}
    with (quarantine_dir / LOG_NAME).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    log.info("quarantined %s (%s)", relpath, kind)
    return Moved(source, target, reason_file)
