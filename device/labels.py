"""Label files: one label per line (index = line number), or "<id> <label>" lines.

Both formats of Coral's label files are accepted:

- ``imagenet_labels.txt``: ``background`` / ``tench, Tinca tinca`` ... (line index = class)
- ``imagenet_labels_with_ids.txt``: ``   0  background`` / ``   1  tench, Tinca tinca`` ...

A file is read as the id format only when *every* non-empty line starts with an integer
followed by whitespace or a colon; otherwise lines are labels as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from device.errors import ModelError

_ID_LINE = re.compile(r"^\s*(\d+)[\s:]+(.*\S)\s*$")


def parse_labels(text: str) -> dict[int, str]:
    """Parse label text into {class index: label}."""
    lines = [line for line in text.splitlines() if line.strip()]
    matches = [_ID_LINE.match(line) for line in lines]
    if lines and all(matches):
        return {int(m.group(1)): m.group(2).strip() for m in matches if m}
    return {i: line.strip() for i, line in enumerate(lines)}


def read_labels(path: str | Path) -> dict[int, str]:
    """Read a labels file; a clear ModelError when it is missing, unreadable or empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(
            f"labels file not found: {path}", "check the --labels path or the model.labels field"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file {path}: {exc}") from None
    labels = parse_labels(text)
    if not labels:
        raise ModelError(f"labels file {path} is empty", "one label per line, index = line")
    return labels
