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
    live = False

    def __init__(self, folder: str | Path, *, fps: float | None = None):
        self.folder = Path(folder)
        self.requested_fps = fps
        self._files: list[Path] = []
        self._pos = 0

    def describe(self) -> str:
        return f"image folder {self.folder}"

    @property
    def fps(self) -> float | None:
        return self.requested_fps

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}")
        self._files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self._files:
            raise SourceError(
                f"no images in {self.folder}", f"put {', '.join(IMAGE_SUFFIXES)} files there"
            )
        self._pos = 0

    def read(self) -> np.ndarray | None:
        while self._pos < len(self._files):
            path = self._files[self._pos]
            self._pos += 1
            try:
                return load_image(path)
            except SourceError as exc:
                log.warning("skipping %s", exc.message)
        return None

    def rewind(self) -> bool:
        self._pos = 0
        return bool(self._files)

    def close(self) -> None:
        self._pos = len(self._files)
