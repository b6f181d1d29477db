"""The frame record and the source base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType

import numpy as np


@dataclass
class Frame:
    """One captured frame: RGB pixels, capture time (monotonic and wall clock), index.

    ``full`` is the full-resolution picture when ``pixels`` is a smaller stream scaled for the
    model (the Pi camera's ISP-scaled low-resolution stream): snapshots and samples use
    ``full_pixels``, the classifier ``pixels``.
    """

    pixels: np.ndarray  # HxWx3 uint8 RGB
    ts_mono: float  # time.monotonic() at capture
    ts_wall: float  # time.time() at capture
    index: int
    full: np.ndarray | None = None  # HxWx3 uint8 RGB, or None: pixels is the full picture

    @property
    def full_pixels(self) -> np.ndarray:
        """The largest picture of this frame: ``full`` when there is one, else ``pixels``."""
        return self.pixels if self.full is None else self.full


class FrameSource(ABC):
    """A camera, stream, file or folder that delivers RGB frames.

    ``live`` sources (cameras, streams) are reconnected when they fail and their frames may be
    dropped when inference is slower; file sources end (or loop) and are never dropped unless
    paced in real time.
    """

    live: bool = False
    # The channel order ``read_native`` delivers (OpenCV decodes to BGR); ``to_rgb`` converts.
    native_order: str = "RGB"
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

    def read_native(self) -> np.ndarray | None:
        """The next frame in ``native_order``, before any colour conversion: the capture thread
        converts (``to_rgb``) only the frames it classifies, not those motion gating skips."""
        return self.read()

    def to_rgb(self, pixels: np.ndarray) -> np.ndarray:
        """A frame from ``read_native`` as RGB (in place where a conversion is needed)."""
        return pixels

    def full_res(self) -> np.ndarray | None:
        """The full-resolution picture of the last ``read()`` when that returned a copy scaled
        for the model (the Pi camera's main stream beside its low-resolution one); None when
        ``read()`` returned the full picture."""
        return None

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
