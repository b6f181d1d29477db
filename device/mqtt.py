"""MQTT, isolated behind a small interface (the only module that imports paho-mqtt).

paho-mqtt 2.x with ``CallbackAPIVersion.VERSION2``: ``connect_async`` + ``loop_start`` so a
missing broker never blocks or stops the camera loop; a retained ``status`` with a last will
of ``offline``; subscriptions made in ``on_connect`` so they survive reconnects; status
re-published on every reconnect; one log line per outage, not one per retry.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from device.errors import ConfigError, EdgecamError
from device.topics import Topics

if TYPE_CHECKING:
    from device.config import MQTTConfig, TLSConfig

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
AckHook = Callable[[int, bool], None]  # (message id, rejected by the broker)
ConnectHook = Callable[[], None]


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgecamError(
            "paho-mqtt is not installed",
            "pip install 'paho-mqtt>=2' (or: pip install -e '.[device]')",
        ) from None
    return mqtt


def utc_iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-11-29T08:26:11.123Z."""
    ms = round(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class NullPublisher:
    """The publisher's interface for a device without MQTT: nothing is sent, publishes are
    counted (``dropped``), ``connected`` is never set, subscriptions and hooks never fire."""

    def __init__(self, topics: Topics | None = None):
        self.topics = topics or Topics("edgecam", "device")
        self.connected = threading.Event()
        self.published = 0
        self.publish_failures = 0
        self.dropped = 0
        self.outages = 0

    def topic(self, *parts: str) -> str:
        return self.topics.topic(*parts)

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 3.0) -> None:
        pass

    def add_ack_hook(self, hook: AckHook) -> None:
        pass

    def add_connect_hook(self, hook: ConnectHook) -> None:
        pass

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        pass

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> Any:
        self.dropped += 1
        return None


class MqttPublisher:
    """One broker connection for the whole device (all cameras)."""

    def __init__(
        self,
        cfg: MQTTConfig,
        device_id: str,
        status: dict[str, Any],
        topics: Topics | None = None,
    ):
        self.cfg = cfg
        self.device_id = device_id
        self.topics = topics or Topics(cfg.topic_prefix, device_id)
        self.prefix = self.topics.base
        self.status_topic = self.topics.status
        self._status = dict(status)
        self._handlers: dict[str, MessageHandler] = {}
        self._ack_hooks: list[AckHook] = []
        self._connect_hooks: list[ConnectHook] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.outages = 0
        self.published = 0
        self.publish_failures = 0
        self._outage_since: float | None = None
        self._last_error: str | None = None
        self._outage_logged = False
        self._stopping = False
        mqtt = _paho()
        self._mqtt = mqtt
        client_id = cfg.client_id or f"edgecam-{device_id}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if cfg.username or cfg.password:
            password = cfg.password.get_secret_value() if cfg.password else None
            self.client.username_pw_set(cfg.username or "", password)
        if cfg.tls is not None:
            self._setup_tls()
        self.client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        self.client.reconnect_delay_set(
            int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s))
        )
        self.client.max_queued_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def topic(self, *parts: str) -> str:
        return self.topics.topic(*parts)

    def _setup_tls(self) -> None:
        tls = self.cfg.tls
        assert tls is not None
        for field in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, field)
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise ConfigError(
                        f"mqtt.tls.{field}: cannot read {path}: {exc.strerror}"
                    ) from None
        try:
            self.client.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"mqtt.tls: the certificate files cannot be used: {exc}") from None
        self.client.tls_insecure_set(tls.insecure)

    def _status_payload(self, state: str) -> str:
        return json.dumps({**self._status, "state": state, "ts": utc_iso(time.time())})

    def update_status(self, **fields: Any) -> None:
        """Change fields of the retained status (model, uptime_s, fps, ...) and publish it now
        when connected (else on the next connect); the last will follows for the next connect."""
        with self._lock:
            self._status = {**self._status, **fields}
        self.client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        if self.connected.is_set() and not self._stopping:
            self.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        log.info("MQTT: connecting to %s:%d as %s", self.cfg.host, self.cfg.port, self.device_id)
        self._outage_since = time.monotonic()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish ``offline`` (retained), wait briefly for it to leave, disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self.client.publish(
                self.status_topic, self._status_payload("offline"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: offline status not confirmed: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()

    def add_ack_hook(self, hook: AckHook) -> None:
        """Call ``hook(mid, rejected)`` when a published message has left (QoS 0) or the broker
        acknowledged it (QoS 1 PUBACK). Runs in paho's network thread with paho's lock held: the
        hook must only hand the id on (e.g. to a queue), never block or publish."""
        self._ack_hooks.append(hook)

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Call ``hook()`` after every (re)connect, once status and subscriptions are sent.
        Runs in paho's network thread: it may publish, it must not block."""
        self._connect_hooks.append(hook)

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Subscribe now and after every reconnect."""
        with self._lock:
            self._handlers[topic] = handler
            connected = self.connected.is_set()
        if connected:
            self.client.subscribe(topic, qos=1)

    # -- publishing --------------------------------------------------------------------------
    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> Any:
        """Queue a message; never blocks, never raises. Returns paho's MQTTMessageInfo or None."""
        if not isinstance(payload, bytes | bytearray | str):
            payload = json.dumps(payload, separators=(",", ":"))
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError) as exc:
            self.publish_failures += 1
            log.debug("MQTT publish to %s failed: %s", topic, exc)
            return None
        if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
        else:
            self.publish_failures += 1
        return info

    # -- callbacks (paho's network thread) ---------------------------------------------------
    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._log_error(
                f"MQTT broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason_code}"
                + (
                    " — check mqtt.username and the password (EDGECAM_MQTT_PASSWORD)"
                    if "authori" in str(reason_code).lower()
                    or "password" in str(reason_code).lower()
                    else ""
                )
            )
            return
        self.connects += 1
        since = self._outage_since
        self._outage_since = None
        self._last_error = None
        self._outage_logged = False
        if self.connects == 1:
            log.info("MQTT: connected to %s:%d", self.cfg.host, self.cfg.port)
        else:
            down = f" after {time.monotonic() - since:.1f} s" if since else ""
            log.info("MQTT: reconnected to %s:%d%s", self.cfg.host, self.cfg.port, down)
        client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        with self._lock:  # with subscribe(): a topic added meanwhile is subscribed by one of us
            topics = list(self._handlers)
            self.connected.set()
        for topic in topics:
            client.subscribe(topic, qos=1)
        for hook in self._connect_hooks:
            try:
                hook()
            except Exception:  # a hook bug must not kill paho's network thread
                log.exception("MQTT: connect hook failed")

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        rejected = bool(getattr(reason_code, "is_failure", False))
        for hook in self._ack_hooks:
            try:
                hook(mid, rejected)
            except Exception:
                log.exception("MQTT: publish hook failed")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block: the exception is still current
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):
            self._log_error(tls_failure_message(exc, self.cfg.host, self.cfg.port, self.cfg.tls))
            return
        if self._outage_logged:
            return
        self._outage_logged = True
        reason = f" ({exc.strerror or exc})" if isinstance(exc, OSError) else ""
        self._log_error(
            f"MQTT broker {self.cfg.host}:{self.cfg.port} not reachable{reason}; classifying goes "
            f"on, retrying every {self.cfg.reconnect_min_s:g}-{self.cfg.reconnect_max_s:g} s"
        )

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self._stopping:
            return
        if was_connected:
            self._outage_logged = True
            self.outages += 1
            self._outage_since = time.monotonic()
            log.warning(
                "MQTT: lost connection to %s:%d (%s); classifying goes on, reconnecting",
                self.cfg.host,
                self.cfg.port,
                reason_code,
            )

    def _log_error(self, message: str) -> None:
        """Log an error once per outage (not once per retry)."""
        if message != self._last_error:
            self._last_error = message
            log.error("%s", message)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            handler = self._handlers.get(msg.topic)
            if handler is None:
                handler = next(
                    (
                        h
                        for t, h in self._handlers.items()
                        if self._mqtt.topic_matches_sub(t, msg.topic)
                    ),
                    None,
                )
        if handler is None:
            return
        try:
            handler(msg.topic, msg.payload)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("MQTT: handler for %s failed", msg.topic)


def tls_failure_message(exc: ssl.SSLError, host: str, port: int, tls: TLSConfig | None) -> str:
    """What a failed TLS handshake means, and the fix (never "not reachable")."""
    where = f"MQTT broker {host}:{port}"
    ca = f"mqtt.tls.ca_file ({tls.ca_file})" if tls and tls.ca_file else "the system CA store"
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = str(getattr(exc, "verify_message", None) or exc.reason or exc).rstrip(".")
        # 62: X509_V_ERR_HOSTNAME_MISMATCH, 64: X509_V_ERR_IP_ADDRESS_MISMATCH
        if getattr(exc, "verify_code", None) in (62, 64) or "mismatch" in why.lower():
            return (
                f"{where}: TLS certificate verification failed: the broker's certificate is not "
                f"valid for the host name {host!r} ({why}); fix: set mqtt.host to a name or "
                "address listed in the certificate (subjectAltName), or reissue the certificate"
                " (mqtt.tls.insecure: true skips this check, for testing only)"
            )
        if "expired" in why.lower() or "not yet valid" in why.lower():
            return (
                f"{where}: TLS certificate verification failed: {why}; fix: renew the broker's "
                "certificate, and check the device clock (timedatectl)"
            )
        return (
            f"{where}: TLS certificate verification failed: {why}; the broker's certificate is "
            f"not signed by a CA in {ca}; fix: set mqtt.tls.ca_file to the CA certificate (PEM) "
            "that signed the broker's certificate"
        )
    reason = exc.reason or str(exc)
    return (
        f"{where}: TLS handshake failed: {reason}; fix: check that the port is the broker's TLS "
        "listener and, if it requires client certificates, set mqtt.tls.cert_file and "
        "mqtt.tls.key_file to a certificate its CA signed"
    )
