"""Per-image work over a whole dataset: a thread pool and a progress bar for large folders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

PROGRESS_FROM = 500  # items; smaller jobs finish before a bar is worth drawing


def map_images(fn: Callable[[T], R], items: Sequence[T], desc: str, workers: int) -> list[R]:
    """``[fn(item) for item in items]`` on ``workers`` threads (I/O and OpenCV release the GIL),
    in order, with a progress bar named ``desc`` when there are many."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(
                pool.map(fn, items),
                total=len(items),
                desc=desc,
                unit="img",
                disable=None if len(items) > PROGRESS_FROM else True,
                leave=False,
            )
        )
