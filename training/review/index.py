"""Keeping the review database's index of the inbox up to date.

:func:`index_new` reads the sidecars (and images, for their fingerprints) of the samples the
database has not seen; :class:`Indexer` runs it in a background thread every few seconds, and
computes the embeddings of the run's model for new samples when the server was given ``--run``.
The grid also asks for a sync when the index is older than a few seconds, so a sample uploaded
a moment ago shows on the next page load.
"""

from __future__ import annotations

import io
import logging
import threading
import time

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from training.hashing import thumbnail
from training.ingest.errors import StoreError
from training.ingest.store import Store
from training.review.db import Fingerprint, ReviewDB, key_of, ref_of

log = logging.getLogger(__name__)

BATCH = 64


def fingerprint(jpeg: bytes) -> Fingerprint | None:
    """pHash + thumbnail of an image; None when it does not decode (the server checked it)."""
    try:
        gray = Image.open(io.BytesIO(jpeg)).convert("L")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return Fingerprint(int(str(imagehash.phash(gray)), 16), thumbnail(np.asarray(gray)))


def index_new(store: Store, db: ReviewDB) -> int:
    """Add the samples of ``store`` that ``db`` does not index yet; returns how many."""
    known = db.indexed_keys()
    added = 0
    batch = []
    for ref in store.refs():
        if key_of(ref) in known:
            continue
        meta = store.read_meta(ref)
        batch.append((ref, meta, fingerprint(store.read_image(ref))))
        if len(batch) >= BATCH:
            added += db.add_samples(batch)
            batch = []
    added += db.add_samples(batch)
    if added:
        log.info("review index: %d new sample(s)", added)
    return added


class Indexer:
    """Syncs the index (and the embeddings, with a model) in the thread ``review-index``."""

    def __init__(self, store: Store, db: ReviewDB, model=None, interval_s: float = 10.0):
        self.store = store
        self.db = db
        self.model = model  # training.review.explain.RunModel or None
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last = -1e9
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self, max_age_s: float = 0.0) -> None:
        """Index new samples unless the last sync is younger than ``max_age_s``."""
        if time.monotonic() - self._last < max_age_s:
            return
        with self._lock:
            if time.monotonic() - self._last < max_age_s:
                return
            try:
                index_new(self.store, self.db)
            except StoreError as exc:
                log.warning("review index: cannot read the inbox: %s", exc)
            self._last = time.monotonic()

    def embed_pending(self) -> int:
        """Embeddings of the run's model for samples that have none (or another model's)."""
        if self.model is None:
            return 0
        done = 0
        while not self._stop.is_set():
            keys = self.db.keys_without_embedding(self.model.ident, limit=BATCH)
            if not keys:
                break
            images = []
            for key in keys:
                try:
                    images.append(self.store.read_image(ref_of(key)))
                except StoreError as exc:
                    log.warning("review index: cannot read %s: %s", key, exc)
                    images.append(None)
            vectors = self.model.embed(images)
            self.db.set_embeddings(
                self.model.ident,
                [(k, v.astype(np.float32).tobytes()) for k, v in zip(keys, vectors, strict=True)],
            )
            done += len(keys)
        if done:
            log.info("review index: embedded %d sample(s) with %s", done, self.model.ident)
        return done

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="review-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sync()
            try:
                self.embed_pending()
            except Exception:  # a model failure must not stop the indexing
                log.exception("review index: computing embeddings failed")
            self._stop.wait(self.interval_s)
