"""The device loop: one pipeline per camera (capture thread + inference thread), sinks, metrics.

FrameSource -> (capture thread: preprocess) -> latest-frame slot -> (inference thread:
InferenceBackend -> postprocess) -> sinks (MQTT, console). SIGTERM / SIGINT stop cleanly:
``offline`` is published, files are flushed.
"""

from __future__ import annotations

import logging
import platform
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device import __version__
from device.capture import CaptureThread
from device.classifier import Classifier, InferenceOptions
from device.config import CameraConfig, DeviceConfig, InferenceConfig, ModelConfig
from device.metrics import CameraStats, cpu_temperature, rss_mb
from device.mqtt import MqttPublisher, utc_iso
from device.preprocess import limit_opencv_threads
from device.sinks import ConsoleSink, MqttClassificationSink, Result, Sink
from device.sources import open_source

if TYPE_CHECKING:
    from device.alerts.service import AlertService

log = logging.getLogger(__name__)


def build_classifier(
    model: ModelConfig, inference: InferenceConfig, roi: list[float] | None
) -> Classifier:
    options = InferenceOptions(
        threads=inference.threads,
        xnnpack=inference.xnnpack,
        edgetpu=inference.edgetpu,
        edgetpu_device=inference.edgetpu_device,
        runtime=inference.runtime,
    )
    return Classifier.open(
        model.path,
        model.labels,
        options=options,
        fallback=model.fallback,
        fallback_labels=model.fallback_labels,
        roi=roi,
        mean=model.mean,
        std=model.std,
        resize=model.resize,
        crop=model.crop,
        allow_failed_gate=model.allow_failed_gate,
    )


class CameraPipeline:
    """Capture thread + inference thread for one camera."""

    def __init__(
        self,
        camera: CameraConfig,
        classifier: Classifier,
        inference: InferenceConfig,
        sinks: list[Sink],
        stop: threading.Event,
        max_results: int | None = None,
    ):
        self.camera = camera
        self.classifier = classifier
        self.top_k = inference.top_k
        self.min_score = inference.min_score
        self.sinks = sinks
        self.stop_event = stop
        self.max_results = max_results
        self.stats = CameraStats()
        self.source = open_source(
            camera.source, width=camera.width, height=camera.height, fps=camera.fps
        )
        self.source.open()  # fail early, in the main thread, with a clear SourceError
        log.info("camera %s: %s", camera.name, self.source.describe())
        self.capture = CaptureThread(
            camera.name,
            self.source,
            classifier.prepare,
            classifier.preprocessor.new_buffer,
            realtime=camera.realtime,
            loop=camera.loop,
            reconnect_max_s=camera.reconnect_max_s,
            stop=stop,
        )
        self.thread = threading.Thread(target=self._loop, name=f"infer-{camera.name}", daemon=True)
        self.done = threading.Event()

    def start(self) -> None:
        self.stats = CameraStats()
        self.capture.start()
        self.thread.start()

    def _loop(self) -> None:
        try:
            while not self.stop_event.is_set():
                item = self.capture.slot.get(timeout=0.5)
                if item is None:
                    if self.capture.finished.is_set():
                        break
                    continue
                try:
                    top, ms = self.classifier.classify_tensor(
                        item.tensor, self.top_k, self.min_score
                    )
                finally:
                    self.capture.release(item)
                now = time.monotonic()
                total_ms = (now - item.frame.ts_mono) * 1000.0
                self.stats.record(ms, total_ms, now)
                result = Result(
                    self.camera.name, item.frame, top, ms, total_ms, self.classifier.bundle.ref
                )
                for sink in self.sinks:
                    sink.handle(result)
                if self.max_results and self.stats.results >= self.max_results:
                    log.info(
                        "camera %s: %d results, stopping", self.camera.name, self.stats.results
                    )
                    break
        finally:
            self.done.set()

    def metrics(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap.update(
            frames=self.capture.frames,
            dropped=self.capture.dropped,
            reconnects=self.capture.reconnects,
            source=self.source.describe(),
        )
        return snap

    def join(self, timeout: float = 5.0) -> None:
        self.capture.stop()
        self.thread.join(timeout)
        self.capture.join(timeout)


class Runner:
    def __init__(
        self,
        config: DeviceConfig,
        max_results: int | None = None,
        config_path: str | Path | None = None,
    ):
        self.config = config
        limit_opencv_threads()
        self.stop_event = threading.Event()
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.sinks: list[Sink] = []
        self.publisher: MqttPublisher | None = None
        self.pipelines: list[CameraPipeline] = []
        classifiers = [
            build_classifier(config.model, config.inference, cam.roi) for cam in config.cameras
        ]
        first = classifiers[0]
        self.status = {
            "state": "online",
            "version": __version__,
            "model": {
                "name": first.bundle.name,
                "sha256": first.bundle.sha256,
                "variant": first.bundle.variant,
                "backend": first.backend_name,
            },
            "started_at": utc_iso(self.started_wall),
            "cameras": [c.name for c in config.cameras],
            "host": platform.node(),
        }
        if config.console.format != "off" or config.console.jsonl_path:
            self.sinks.append(ConsoleSink(config.console))
        if config.mqtt.enabled:
            self.publisher = MqttPublisher(config.mqtt, config.device_id, self.status)
            self.sinks.append(MqttClassificationSink(self.publisher, config.mqtt))
        self.alerts: AlertService | None = None
        if config.alerts.enabled:
            self.alerts = self._build_alerts(first, config_path)
            self.sinks.append(self.alerts)
        try:
            for cam, classifier in zip(config.cameras, classifiers, strict=True):
                self.pipelines.append(
                    CameraPipeline(
                        cam, classifier, config.inference, self.sinks, self.stop_event, max_results
                    )
                )
        except Exception:
            for p in self.pipelines:
                p.source.close()
            raise

    def _build_alerts(self, first: Classifier, config_path: str | Path | None) -> AlertService:
        from device.alerts.service import AlertService

        config = self.config
        cameras = {c.name: c for c in config.cameras}

        def roi_classifier(camera: str, roi: Sequence[float]) -> Classifier:
            # a rule's roi is a crop of the full frame, classified by its own interpreter
            return build_classifier(config.model, config.inference, list(roi))

        return AlertService(
            config.alerts,
            device_id=config.device_id,
            cameras=list(cameras),
            labels=first.bundle.labels,
            publisher=self.publisher,
            topic_prefix=config.mqtt.topic_prefix,
            classifier_factory=roi_classifier,
            top_k=config.inference.top_k,
            config_path=config_path,
            version=__version__,
            model_name=first.bundle.name,
            model_ref=first.bundle.ref,
        )

    def metrics(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "ts": utc_iso(time.time()),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "cameras": {p.camera.name: p.metrics() for p in self.pipelines},
            "rss_mb": round(rss_mb(), 1),
            "cpu_temp_c": cpu_temperature(),
        }
        if self.publisher is not None:
            payload["mqtt"] = {
                "connected": self.publisher.connected.is_set(),
                "outages": self.publisher.outages,
                "published": self.publisher.published,
            }
        if self.alerts is not None:
            payload["alerts"] = self.alerts.metrics()
        return payload

    def _publish_metrics(self) -> None:
        payload = self.metrics()
        for name, cam in payload["cameras"].items():
            log.info(
                "metrics %s: %.1f fps, inference p50 %.1f ms, latency p50/p95 %.1f/%.1f ms, dropped %d",
                name,
                cam["fps"],
                cam["inference_ms"]["p50"],
                cam["latency_ms"]["p50"],
                cam["latency_ms"]["p95"],
                cam["dropped"],
            )
        if self.publisher is not None:
            self.publisher.publish(self.publisher.topic("metrics"), payload)

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        if self.alerts is not None:
            self.alerts.start()
        if self.publisher is not None:
            self.publisher.start()
        for p in self.pipelines:
            p.start()
        interval = self.config.metrics.interval
        next_metrics = time.monotonic() + interval
        try:
            while not self.stop_event.is_set():
                if all(p.done.is_set() for p in self.pipelines):
                    break
                self.stop_event.wait(min(0.2, max(0.0, next_metrics - time.monotonic())))
                if time.monotonic() >= next_metrics:
                    self._publish_metrics()
                    next_metrics += interval
        finally:
            self.shutdown()
        failed = [p for p in self.pipelines if p.capture.error is not None]
        return 1 if failed else 0

    def shutdown(self) -> None:
        self.stop_event.set()
        for p in self.pipelines:
            p.join()
        if self.alerts is not None:
            self.alerts.stop()  # ends active events, flushes the outbox while still connected
        self._publish_metrics()
        if self.publisher is not None:
            self.publisher.stop()
        for sink in self.sinks:
            sink.close()
        log.info("stopped")


def run(
    config: DeviceConfig, max_results: int | None = None, config_path: str | Path | None = None
) -> int:
    return Runner(config, max_results, config_path).run()
