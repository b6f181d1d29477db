"""The outbox forwarder: publishes queued messages in order, deletes them on PUBACK.

One thread ("alerts-outbox") owns the sending side. It keeps at most ``inflight`` messages
published and unacknowledged; paho's ``on_publish`` (called in paho's network thread, while
paho holds its own lock) only puts the message id on a queue, so nothing blocks there.

While the broker is away nothing new is published; paho itself re-sends the QoS 1 messages
that were in flight when the connection dropped (same message ids, DUP flag), so their
acknowledgements still find their outbox entries. After a restart the outbox is sent again from
its oldest entry: delivery is at least once, in order; consumers collapse duplicates by
``event_id`` and ``seq``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Protocol

from device.alerts.outbox import Outbox

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the alerts need from device.mqtt.MqttPublisher (or NullPublisher)."""

    connected: threading.Event

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> Any: ...

    def add_ack_hook(self, hook: Any) -> None: ...

    def add_connect_hook(self, hook: Any) -> None: ...


class Forwarder:
    def __init__(
        self, outbox: Outbox, publisher: Publisher, inflight: int = 20, stall_s: float = 60.0
    ):
        self.outbox = outbox
        self.publisher = publisher
        self.window = inflight
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._last_id = 0  # highest outbox id handed to paho in this process
        self._progress_mono = time.monotonic()  # last publish or ack
        self.stall_s = stall_s
        self.resends = 0
        self.published = 0
        self.acked = 0
        self.rejected = 0
        self.first_delivery_delay_s: float | None = None
        self.max_delivery_delay_s = 0.0
        self._thread = threading.Thread(target=self._run, name="alerts-outbox", daemon=True)
        publisher.add_ack_hook(self._on_ack)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def on_connect(self) -> None:
        """(Re)connected: paho re-sends what was in flight; give it time before calling it lost."""
        self._progress_mono = time.monotonic()
        self._wake.set()

    def _on_ack(self, mid: int, failed: bool) -> None:  # paho's network thread: never block
        self._acks.put((mid, failed))
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._process_acks()
                self._send()
            except Exception:  # keep forwarding whatever one bad entry did
                log.exception("outbox forwarder failed; retrying")
                time.sleep(1.0)

    def _process_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                mid, failed = self._acks.get_nowait()
            except queue.Empty:
                break
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                continue  # a QoS 0 message of another sink, or a duplicate ack
            if failed:
                self.rejected += 1
                log.error("broker rejected outbox message %d; dropping it", row_id)
            else:
                self.acked += 1
            done.append(row_id)
        if done:
            self._progress_mono = time.monotonic()
        self.outbox.ack(done)

    def _send(self) -> None:
        pub = self.publisher
        if not pub.connected.is_set():
            return
        if self._inflight and time.monotonic() - self._progress_mono > self.stall_s:
            # connected, yet nothing acknowledged for a long time: paho lost track of them;
            # send everything undelivered again, from the oldest (duplicates are collapsed)
            log.warning(
                "outbox: %d message(s) unacknowledged for %.0f s; sending them again",
                len(self._inflight),
                self.stall_s,
            )
            self.resends += 1
            self._inflight.clear()
            self._last_id = 0
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        for entry in self.outbox.pending_after(self._last_id, room):
            info = pub.publish(entry.topic, entry.payload, qos=entry.qos, retain=entry.retain)
            if info is None:  # paho refused (its queue is full): try again later
                return
            self._last_id = entry.id
            self.published += 1
            self._progress_mono = time.monotonic()
            delay = time.time() - entry.created
            if self.first_delivery_delay_s is None:
                self.first_delivery_delay_s = delay
            self.max_delivery_delay_s = max(self.max_delivery_delay_s, delay)
            if entry.qos == 0:
                self.outbox.ack([entry.id])  # nothing to wait for
            else:
                self._inflight[info.mid] = entry.id
        # acks that arrived while publishing
        self._process_acks()

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (or ``timeout``); True when it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.pending_count() == 0:
                return True
            if not self.publisher.connected.is_set():
                return False
            self._wake.set()
            time.sleep(0.05)
        return self.outbox.pending_count() == 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._process_acks()

    def stats(self) -> dict[str, object]:
        return {
            "published": self.published,
            "acked": self.acked,
            "rejected": self.rejected,
            "inflight": len(self._inflight),
            "resends": self.resends,
            "first_delivery_delay_s": None
            if self.first_delivery_delay_s is None
            else round(self.first_delivery_delay_s, 3),
            "max_delivery_delay_s": round(self.max_delivery_delay_s, 3),
        }
