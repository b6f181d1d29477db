"""Label files: one label per line (index = line number), or "<id> <label>" lines.

Both formats of Coral's label files are accepted:

- ``imagenet_labels.txt``: ``background`` / ``tench, Tinca tinca`` ... (line index = class)
- ``imagenet_labels_with_ids.txt``: ``   0  background`` / ``   1  tench, Tinca tinca`` ...

A file is read as the id format only when *every* non-empty line starts with an integer
followed by whitespace or a colon; otherwise lines are labels as they are. Files are UTF-8, with
or without a byte-order mark (which is not part of the first label).
"""

from __future__ import annotations

import re
from pathlib import Path

from device.errors import ModelError
from device.files import read_text

MAX_LABELS_BYTES = 16 << 20  # 100,000 classes of 100 characters each is 10 MB

_ID_LINE = re.compile(r"^\s*(\d{1,9})[\s:]+(.*\S)\s*$")


def parse_labels(text: str, where: str = "labels") -> dict[int, str]:
    """Parse label text into {class index: label}; ModelError when an id is given twice."""
    lines = [line for line in text.removeprefix("\ufeff").splitlines() if line.strip()]
    matches = [_ID_LINE.match(line) for line in lines]
    if not (lines and all(matches)):
        return {i: line.strip() for i, line in enumerate(lines)}
    labels: dict[int, str] = {}
    for number, m in enumerate(matches, 1):
        assert m is not None
        index = int(m.group(1))
        if index in labels:
            raise ModelError(
                f"{where}: id {index} is given twice (again on non-empty line {number})",
                "give each class id once",
            )
        labels[index] = m.group(2).strip()
    return labels


def read_labels(path: str | Path) -> dict[int, str]:
    """Read a labels file; a clear ModelError when it is missing, unreadable, binary or empty."""
    text = read_text(
        path,
        "labels file",
        ModelError,
        max_bytes=MAX_LABELS_BYTES,
        missing_hint="check the --labels path or the model.labels field",
    )
    labels = parse_labels(text, f"labels file {path}")
    if not labels:
        raise ModelError(f"labels file {path} is empty", "one label per line, index = line")
    return labels
