"""The device loop: one supervised pipeline per camera, sinks, metrics, preflight checks.

FrameSource -> (capture thread: preprocess) -> latest-frame slot -> (inference thread:
InferenceBackend -> postprocess) -> sinks (MQTT, console, alerts), per camera; each camera is
supervised (device.pipeline). ``preflight`` is what ``run`` checks before it starts and all
that ``validate`` checks, so that the two cannot drift. SIGTERM / SIGINT stop cleanly
(``offline`` published, files flushed, exit 0); a camera that cannot be recovered ends the
process with exit status 1.
"""

from __future__ import annotations

import logging
import platform
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device import __version__
from device.classifier import Classifier
from device.config import DeviceConfig, InferenceConfig, ModelConfig
from device.errors import ModelError
from device.fleet import live_fields, model_status
from device.memory import breakdown, tune_malloc
from device.metrics import cpu_temperature, rss_mb
from device.mqtt import MqttPublisher, utc_iso
from device.pipeline import CameraPipeline
from device.preprocess import limit_opencv_threads
from device.privacy.guard import PrivacyGuard
from device.rollout.startup import load_live_model
from device.sinks import ConsoleSink, MqttClassificationSink, SinkSet
from device.sources import check_source
from device.systemd import Notifier, ServiceWatch

if TYPE_CHECKING:
    from pydantic import SecretStr

    from device.alerts.service import AlertService
    from device.commands import CommandDispatcher
    from device.health import HealthSink
    from device.rollout.service import RolloutService
    from device.sampling.sink import SamplingSink
    from device.upload.outbox import SampleOutbox
    from device.upload.uploader import Uploader

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CAMERA_FAILED = 1


def build_classifier(
    model: ModelConfig, inference: InferenceConfig, roi: Sequence[float] | None
) -> Classifier:
    return Classifier.from_config(model, inference, roi)


@dataclass
class Preflight:
    """What the checks built: one classifier per camera (in ``config.cameras`` order) and
    each camera's source kind (auto, camera, stream, video, folder, picamera2)."""

    classifiers: list[Classifier]
    source_kinds: dict[str, str]
    model: ModelConfig | None = None  # the model they run (models/current after an update)
    upload_token: SecretStr | None = None  # when upload is enabled


def preflight(config: DeviceConfig) -> Preflight:
    """Check everything ``run`` needs before it starts, without opening a camera.

    The sources parse (a file or folder that does not exist is an error), the model loads in
    the real interpreter with each camera's options, its labels match its output count, and
    the alert rules name labels of the model and existing cameras. Raises an EdgecamError
    (ConfigError, ModelError, SourceError) naming what is wrong and how to fix it.
    """
    kinds = {cam.name: check_source(cam.source) for cam in config.cameras}
    model, classifiers = load_live_model(
        config, lambda m: [build_classifier(m, config.inference, c.roi) for c in config.cameras]
    )
    if config.alerts.enabled:
        from device.alerts import check_rules

        check_rules(config.alerts, [c.name for c in config.cameras], classifiers[0].bundle.labels)
    from device.upload.config import check_upload

    return Preflight(classifiers, kinds, model=model, upload_token=check_upload(config.upload))


class Runner:
    def __init__(
        self,
        config: DeviceConfig,
        max_results: int | None = None,
        config_path: str | Path | None = None,
        checked: Preflight | None = None,
    ):
        self.config = config
        limit_opencv_threads()
        tune_malloc()  # frame buffers back to the system when freed (device.memory)
        self.stop_event = threading.Event()
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.sinks = SinkSet()
        self.publisher: MqttPublisher | None = None
        self.pipelines: list[CameraPipeline] = []
        self._health_changed = threading.Event()
        self.service = ServiceWatch(Notifier.from_environ())  # systemd: ready, watchdog
        checked = checked or preflight(config)
        classifiers = checked.classifiers
        # every image that leaves (snapshots, samples): masks, faces; fails closed (privacy.md)
        self.privacy = PrivacyGuard(config.privacy)
        first = classifiers[0]
        self.model = checked.model or config.model  # what a camera restart loads
        self.status = {
            "state": "online",
            "version": __version__,
            "model": model_status(first),
            "started_at": utc_iso(self.started_wall),
            "cameras": [c.name for c in config.cameras],
            "host": platform.node(),
            "uptime_s": 0.0,
            "fps": 0.0,
            "last_alert": None,
        }
        if config.console.format != "off" or config.console.jsonl_path:
            self.sinks.add(ConsoleSink(config.console))
        if config.mqtt.enabled:
            self.publisher = MqttPublisher(config.mqtt, config.device_id, self.status)
            self.sinks.add(MqttClassificationSink(self.publisher, config.mqtt))
        self.alerts: AlertService | None = None
        self.commands: CommandDispatcher | None = None
        if self.publisher is not None:
            from device.commands import CommandDispatcher, effective_config

            commands = effective_config(config.commands, config.alerts.commands)
            self.commands = CommandDispatcher(self.publisher, self.publisher.topics, commands)
        if config.alerts.enabled:
            self.alerts = self._build_alerts(first, config_path)
            self.sinks.add(self.alerts)
        self.samples: SampleOutbox | None = None
        self.sampling: SamplingSink | None = None
        self.uploader: Uploader | None = None
        self._build_field_loop(first, checked.upload_token)
        supervision = config.supervision
        try:
            for cam, classifier in zip(config.cameras, classifiers, strict=True):
                self.pipelines.append(
                    CameraPipeline(
                        cam,
                        classifier,
                        self.sinks,
                        self.stop_event,
                        top_k=config.inference.top_k,
                        min_score=config.inference.min_score,
                        max_results=max_results,
                        supervision=supervision,
                        rebuild=self._rebuilder(cam.roi),
                        on_change=self._camera_changed,
                        frame_mask=self.privacy.inference_mask(cam.name),
                        event_active=self.alerts.event_active if self.alerts else None,
                        health_sink=self._health_sink(),
                        device_id=config.device_id,
                    )
                )
        except Exception:
            for p in self.pipelines:
                p.close()
            raise
        self.rollout: RolloutService | None = None
        if self.commands is not None:
            self.rollout = self._build_rollout()
            self.commands.start()

    def _build_rollout(self) -> RolloutService:
        """Model updates over MQTT (``model``, ``rollback``; refused without rollout.public_key)."""
        from device.rollout.service import RolloutService
        from device.rollout.startup import bundle_model

        config = self.config

        def changed(classifiers: list[Classifier]) -> None:
            bundle = classifiers[0].bundle
            self.model = bundle_model(config.model, bundle.path.parent)
            self.status["model"] = model_status(classifiers[0])
            if self.alerts is not None:
                self.alerts.worker.model_ref = bundle.ref
            if self.publisher is not None:
                self.publisher.update_status(model=model_status(classifiers[0]))

        def check_labels(labels: dict[int, str]) -> None:
            if self.alerts is None or not config.alerts.rules:
                return
            if labels != self.pipelines[0].classifier.bundle.labels:
                raise ModelError(
                    "its labels differ from the running model's and alert rules are set: "
                    "install it with a restart (make deploy), which checks the rules against "
                    "the new labels"
                )

        rollout = RolloutService(
            config.rollout, config.inference, config.cameras, self.pipelines, changed, check_labels
        )
        assert self.commands is not None
        rollout.register(self.commands)
        return rollout

    def _build_field_loop(self, first: Classifier, token: SecretStr | None) -> None:
        """Field samples (device.sampling) into the outbox, and its uploader (device.upload)."""
        config = self.config
        if not (config.sampling.enabled or config.upload.enabled):
            return
        from device.upload.outbox import SampleOutbox

        box = config.upload.outbox
        self.samples = SampleOutbox(box.dir, box.max_samples, box.max_mb, box.max_rejected)
        if config.sampling.enabled:
            from device.sampling.sink import SamplingSink

            rois = {c.name: c.roi for c in config.cameras}
            self.sampling = SamplingSink(
                config.sampling,
                config.device_id,
                self.samples,
                first.bundle,
                rois,
                privacy=self.privacy,  # masks and faces before a sample is stored
                bundles=lambda: [p.classifier.bundle for p in self.pipelines],  # model updates
            )
            self.sinks.add(self.sampling)
            if self.alerts is not None:
                self.alerts.stepper.observer = self.sampling  # near-threshold and event frames
        if token is not None:
            from device.upload.uploader import Uploader

            self.uploader = Uploader(config.upload, self.samples, token)

    def _health_sink(self) -> HealthSink | None:
        """Where camera health goes: the alert outbox, else straight to MQTT, else the log."""
        if self.alerts is not None:
            return self.alerts
        if self.publisher is not None:
            from device.health import DirectHealthSink

            return DirectHealthSink(self.publisher)
        return None

    def _rebuilder(self, roi: Sequence[float] | None):
        config = self.config
        return lambda: build_classifier(self.model, config.inference, roi)

    def _camera_changed(self, pipeline: CameraPipeline) -> None:
        state = pipeline.health.state
        if state in ("restarting", "failed"):
            self._health_changed.set()  # metrics go out now, not at the next interval

    def _build_alerts(self, first: Classifier, config_path: str | Path | None) -> AlertService:
        """The alerts, and the device's command dispatcher with their commands and ``reload``."""
        from device.alerts.service import AlertContext, AlertService
        from device.topics import Topics

        config = self.config
        topics = Topics(config.mqtt.topic_prefix, config.device_id)

        def roi_classifier(camera: str, roi: Sequence[float]) -> Classifier:
            # a rule's roi is a crop of the full frame, classified by its own interpreter
            return build_classifier(self.model, config.inference, list(roi))

        context = AlertContext(
            topics,
            [c.name for c in config.cameras],
            first.bundle.labels,
            top_k=config.inference.top_k,
            version=__version__,
            model_name=first.bundle.name,
            model_ref=first.bundle.ref,
            health_cameras=[c.name for c in config.cameras if c.health.enabled],
        )
        alerts = AlertService(config.alerts, context, self.publisher, roi_classifier, self.privacy)
        if self.commands is not None:
            alerts.register_commands(self.commands)
            self._register_reload(self.commands, alerts, config_path)
        return alerts

    @staticmethod
    def _register_reload(
        dispatcher: CommandDispatcher, alerts: AlertService, config_path: str | Path | None
    ) -> None:
        """``reload``: read the config file again and hand its ``alerts`` section over."""
        from device.commands import CommandError, ReloadCommand, Reply
        from device.config import load_config
        from device.errors import EdgecamError

        def reload(cmd: ReloadCommand, reply: Reply) -> None:
            if config_path is None:
                raise CommandError("reload needs the device started with --config FILE")
            try:
                reply.ok(alerts.reload(load_config(config_path).alerts))
            except EdgecamError as exc:
                raise CommandError(str(exc)) from None

        dispatcher.register("reload", ReloadCommand, reload)

    def metrics(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "ts": utc_iso(time.time()),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "cameras": {p.camera.name: p.metrics() for p in self.pipelines},
            "sinks": self.sinks.metrics(),
            "rss_mb": round(rss_mb(), 1),
            "memory_mb": breakdown(),  # where the resident memory goes
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
        if self.config.privacy.active:
            payload["privacy"] = self.privacy.metrics()
        if self.sampling is not None:
            payload["sampling"] = self.sampling.metrics()
        if self.samples is not None:
            upload = self.uploader.metrics() if self.uploader is not None else {"state": "off"}
            payload["upload"] = {**self.samples.stats(), **upload}
        return payload

    def _publish_metrics(self) -> None:
        payload = self.metrics()
        for name, cam in payload["cameras"].items():
            log.info(
                "metrics %s: %s, %.1f fps, inference p50 %.1f ms, latency p50/p95 %.1f/%.1f ms, "
                "dropped %d, restarts %d",
                name,
                cam["state"],
                cam["fps"],
                cam["inference_ms"]["p50"],
                cam["latency_ms"]["p50"],
                cam["latency_ms"]["p95"],
                cam["dropped"],
                cam["restarts"],
            )
        if self.publisher is not None:
            self.publisher.publish(self.publisher.topic("metrics"), payload)
            last_alert = self.alerts.last_alert if self.alerts is not None else None
            live = live_fields(payload["uptime_s"], payload["cameras"])
            self.publisher.update_status(**live, last_alert=last_alert)  # fresh retained status

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def run(self) -> int:
        """Run until stopped, every camera ended, or a camera failed; the exit status: 0, or
        1 when a camera could not be recovered."""
        previous = self._install_signal_handlers()
        try:
            if self.alerts is not None:
                self.alerts.start()
            if self.sampling is not None:
                self.sampling.start()
            if self.uploader is not None:
                self.uploader.start()
            if self.publisher is not None:
                self.publisher.start()
            for p in self.pipelines:
                p.start()
            self._supervise()
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failed = [p.camera.name for p in self.pipelines if p.failed]
        if failed:
            log.error(
                "camera(s) %s could not be recovered: exiting with status 1", ", ".join(failed)
            )
            return EXIT_CAMERA_FAILED
        return EXIT_OK

    def _supervise(self) -> None:
        interval = self.config.metrics.interval
        next_metrics = time.monotonic() + interval
        while not self.stop_event.is_set():
            if any(p.failed for p in self.pipelines) or all(
                p.done.is_set() for p in self.pipelines
            ):
                return
            self.stop_event.wait(min(0.2, max(0.0, next_metrics - time.monotonic())))
            if self._health_changed.is_set():
                self._health_changed.clear()
                self._publish_metrics()
            if time.monotonic() >= next_metrics:
                self._publish_metrics()
                next_metrics += interval
            self.service.tick(self.pipelines)
            for p in self.pipelines:
                p.check_health()  # frames still coming (device.health)

    def shutdown(self) -> None:
        self.service.stopping()
        self.stop_event.set()
        if self.rollout is not None:
            self.rollout.stop()  # ends a shadow run; the running model stays
        for p in self.pipelines:
            p.join()
        if self.commands is not None:
            self.commands.stop()
        if self.alerts is not None:
            self.alerts.stop()  # ends active events, flushes the outbox while still connected
        self._publish_metrics()
        if self.publisher is not None:
            self.publisher.stop()
        self.sinks.close()  # the sampling writer stores what it has queued
        if self.uploader is not None:
            self.uploader.stop()
        self.service.close()
        log.info("stopped")


def run(
    config: DeviceConfig, max_results: int | None = None, config_path: str | Path | None = None
) -> int:
    return Runner(config, max_results, config_path).run()
