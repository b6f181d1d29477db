"""The frame record and the source base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType

import numpy as np


@dataclass
class Frame:
    """One captured frame: RGB pixels, capture time (monotonic and wall clock), index."""

    pixels: np.ndarray  # HxWx3 uint8 RGB
    ts_mono: float  # time.monotonic() at capture
    ts_wall: float  # time.time() at capture
    index: int


class FrameSource(ABC):
    """A camera, stream, file or folder that delivers RGB frames.

    ``live`` sources (cameras, streams) are reconnected when they fail and their frames may be
    dropped when inference is slower; file sources end (or loop) and are never dropped unless
    paced in real time.
    """

    live: bool = False
    # A file standing in for a camera (the sample clip picked by `auto`): paced at its frame
    # rate and looped, like a camera.
    stand_in: bool = False

    @abstractmethod
    def open(self) -> None:
        """Open the device or file; SourceError with a clear message when it cannot."""

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The next RGB frame, or None at the end of a file / when a live source failed."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file (idempotent)."""

    @property
    def is_open(self) -> bool:
        """True between a successful ``open()`` and ``close()``."""
        return False

    @property
    def fps(self) -> float | None:
        """Nominal frame rate when known."""
        return None

    def rewind(self) -> bool:
        """Start a file source again from its beginning; False when not possible."""
        self.close()
        self.open()
        return True

    def describe(self) -> str:
        return type(self).__name__

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
