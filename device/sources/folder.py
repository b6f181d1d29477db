"""Replay a folder of images as frames (sorted by name)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from device.errors import SourceError
from device.preprocess import IMAGE_SUFFIXES, load_image
from device.sources.base import FrameSource

log = logging.getLogger(__name__)


class ImageFolderSource(FrameSource):
    """Images of a folder in name order. A folder that disappears raises SourceError from
    ``read()`` (the capture thread then retries with backoff); an unreadable image is skipped
    with one warning per file, not one per pass."""

    live = False

    def __init__(self, folder: str | Path, *, fps: float | None = None):
        self.folder = Path(folder)
        self.requested_fps = fps
        self._files: list[Path] = []
        self._pos = 0
        self._open = False
        self._warned: set[Path] = set()

    def describe(self) -> str:
        return f"image folder {self.folder}"

    @property
    def fps(self) -> float | None:
        return self.requested_fps

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}")
        try:
            entries = list(self.folder.iterdir())
        except OSError as exc:
            raise SourceError(f"cannot list image folder {self.folder}: {exc.strerror}") from None
        self._files = sorted(
            p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self._files:
            raise SourceError(
                f"no images in {self.folder}", f"put {', '.join(IMAGE_SUFFIXES)} files there"
            )
        self._pos = 0
        self._open = True

    def read(self) -> np.ndarray | None:
        while self._pos < len(self._files):
            path = self._files[self._pos]
            self._pos += 1
            try:
                return load_image(path)
            except SourceError as exc:
                if not self.folder.is_dir():
                    self._open = False
                    raise SourceError(f"image folder {self.folder} disappeared") from None
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("skipping %s", exc.message)
        return None

    def rewind(self) -> bool:
        """Start again, with the folder listed afresh (files added or removed meanwhile)."""
        self.open()
        return True

    def close(self) -> None:
        self._pos = len(self._files)
        self._open = False
