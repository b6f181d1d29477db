"""What a reviewed label may be: it becomes a class folder (``DATA/<label>/``) on merge."""

from __future__ import annotations

from training.dataset import SPLIT_ALIASES

MAX_LABEL = 100


def check_label(value: str) -> str:
    """The label stripped, or ValueError saying what is wrong.

    Refused: empty, longer than 100 characters, control characters, ``/`` or ``\\``, a leading
    ``.`` (hidden folders are skipped by the dataset scan) and the split folder names
    (``train``, ``test``, ...), which would turn a dataset into a pre-split one."""
    label = value.strip() if isinstance(value, str) else ""
    if not label:
        raise ValueError("a label must not be empty")
    if len(label) > MAX_LABEL:
        raise ValueError(f"a label has at most {MAX_LABEL} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise ValueError("a label must not contain control characters")
    if "/" in label or "\\" in label:
        raise ValueError("a label must not contain '/' or '\\' (it becomes a folder name)")
    if label.startswith("."):
        raise ValueError("a label must not start with '.' (hidden folders are not read)")
    if label.lower() in SPLIT_ALIASES:
        raise ValueError(f"{label!r} is the name of a split folder: choose another label")
    return label
