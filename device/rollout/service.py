"""The ``model`` and ``rollback`` commands: download, verify, load, shadow, promote, roll back.

One rollout at a time, in its own "rollout" thread (the command thread only checks the command
and answers "accepted"). Every step is reported on ``cmd/model/result`` with the command's id
(docs/fleet.md has the messages)::

    accepted -> downloaded -> verified -> loaded -> shadow ... -> promoted
                                                              \\-> rolled_back (ok: false,
                                                                   "stage" and "error" say why)

Until ``promoted`` the running model is untouched: a failure at any step only discards the new
one. Promotion puts the bundle under ``models/<sha12>/``, points ``current`` at it (``previous``
at the old one) and hands each camera its new classifier, which its inference thread takes
between two frames. During ``rollout.watch_s`` after a promotion, an inference failure on a
camera brings the previous model back by itself (``rolled_back``, stage "run").
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device.classifier import Classifier, InferenceOptions
from device.commands import Command, CommandDispatcher, CommandError, Reply
from device.errors import EdgecamError
from device.fleet import model_status
from device.rollout.archive import unpack
from device.rollout.config import RolloutConfig
from device.rollout.download import check_scheme, download
from device.rollout.errors import RolloutError
from device.rollout.shadow import ShadowPlan, ShadowRun
from device.rollout.signing import key_id, load_public_key, verify_bundle
from device.rollout.store import ModelStore

if TYPE_CHECKING:
    from device.config import CameraConfig, InferenceConfig
    from device.pipeline import CameraPipeline

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0  # shadow progress messages
SWAP_TIMEOUT_S = 10.0  # a camera takes its new classifier within one frame (or its next start)
NOT_CONFIGURED = (
    "model updates are not set up on this device: rollout.public_key is not set",
    "copy the operator's public key (edgecam-convert keygen) to the device, set "
    "rollout.public_key to its path and restart (docs/fleet.md)",
)


# -- the command payloads ----------------------------------------------------------------------------
class ShadowRequest(BaseModel):
    """The ``shadow`` object of a ``model`` command; left-out keys come from rollout.shadow."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    frames: int | None = Field(None, ge=1, description="Compare this many live frames.")
    seconds: float | None = Field(None, gt=0, description="Or: run the shadow this long.")
    min_agreement: float | None = Field(None, ge=0.0, le=1.0)
    max_latency_ms: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_length(self) -> ShadowRequest:
        if self.frames is not None and self.seconds is not None:
            raise ValueError("give frames or seconds, not both")
        return self


class ModelCommand(Command):
    """``cmd/model``: install the signed bundle at ``url`` (docs/fleet.md)."""

    url: str = Field(..., min_length=1, max_length=2048, description="The bundle archive URL.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="sha256 of model.tflite.")
    signature: str = Field(..., min_length=1, max_length=200, description="Ed25519, base64.")
    shadow: ShadowRequest | None = Field(
        default_factory=ShadowRequest, description="null: promote without a shadow run."
    )


class RollbackCommand(Command):
    """``cmd/rollback``: go back to the previous model (``models/previous``)."""


# -- what the runner gives the rollout -------------------------------------------------------------------
ModelChanged = Callable[[list[Classifier]], None]  # the cameras' new classifiers, in order
LabelCheck = Callable[[dict[int, str]], None]  # raises EdgecamError when labels cannot be used


class RolloutService:
    def __init__(
        self,
        cfg: RolloutConfig,
        inference: InferenceConfig,
        cameras: Sequence[CameraConfig],
        pipelines: Sequence[CameraPipeline],
        on_change: ModelChanged,
        check_labels: LabelCheck | None = None,
    ):
        self.cfg = cfg
        self.options = InferenceOptions.from_config(inference)
        self.cameras = list(cameras)
        self.pipelines = list(pipelines)
        self.on_change = on_change
        self.check_labels = check_labels or (lambda labels: None)
        self.store = ModelStore(cfg.state_dir)
        self.public_key = load_public_key(cfg.public_key) if cfg.public_key else None
        self._lock = threading.Lock()
        self._busy: tuple[str, object] | None = None  # what runs now, and its claim
        self._thread: threading.Thread | None = None
        self._shadow: ShadowRun | None = None
        self._stop = threading.Event()
        if self.public_key is not None:
            log.info(
                "rollout: model updates signed by operator key %s; models in %s",
                key_id(self.public_key),
                self.store.root,
            )

    def register(self, dispatcher: CommandDispatcher) -> None:
        dispatcher.register("model", ModelCommand, self.handle_model)
        dispatcher.register("rollback", RollbackCommand, self.handle_rollback)

    def stop(self) -> None:
        self._stop.set()
        shadow = self._shadow
        if shadow is not None:
            shadow.stop()
        if self._thread is not None:
            self._thread.join(5.0)

    # -- the command thread ------------------------------------------------------------------------
    def _claim(self, what: str) -> object:
        """Mark a rollout or rollback as running (one at a time); the token releases it."""
        if self.public_key is None:
            raise CommandError(f"{NOT_CONFIGURED[0]}; fix: {NOT_CONFIGURED[1]}")
        with self._lock:
            if self._busy is not None:
                raise CommandError(
                    f"busy: {self._busy[0]} is in progress; try again when it is done"
                )
            token = object()
            self._busy = (what, token)
            return token

    def _release(self, token: object) -> None:
        with self._lock:
            if self._busy is not None and self._busy[1] is token:
                self._busy = None

    def handle_model(self, cmd: ModelCommand, reply: Reply) -> None:
        plan = self.plan(cmd.shadow)
        try:
            check_scheme(cmd.url, self.cfg.allowed_schemes)
        except RolloutError as exc:
            raise CommandError(f"{exc.message}; fix: {exc.hint}") from None
        token = self._claim(f"the update to {cmd.sha256[:12]}")
        if self.pipelines and self.pipelines[0].classifier.bundle.sha256 == cmd.sha256:
            self._release(token)
            reply.step("unchanged", {"model": self._live_status()})
            return
        reply.step("accepted", {"sha256": cmd.sha256, "shadow": plan.to_json() if plan else None})
        self._thread = threading.Thread(
            target=self._rollout, args=(cmd, plan, reply, token), name="rollout", daemon=True
        )
        self._thread.start()

    def plan(self, request: ShadowRequest | None) -> ShadowPlan | None:
        """The shadow run a command asks for, within rollout.limits; CommandError otherwise."""
        defaults, limits = self.cfg.shadow, self.cfg.limits
        if request is None:
            if not limits.allow_skip:
                raise CommandError(
                    "shadow: null (no shadow run) is not allowed on this device "
                    "(rollout.limits.allow_skip: false)"
                )
            return None
        if request.frames is None and request.seconds is None:
            frames, seconds = defaults.frames, defaults.seconds
        else:
            frames, seconds = request.frames, request.seconds
        if seconds is not None:
            frames = None
        if frames is not None and frames > limits.max_frames:
            raise CommandError(
                f"shadow.frames {frames} is over the limit of {limits.max_frames} "
                "(rollout.limits.max_frames)"
            )
        if seconds is not None and seconds > limits.max_seconds:
            raise CommandError(
                f"shadow.seconds {seconds:g} is over the limit of {limits.max_seconds:g} "
                "(rollout.limits.max_seconds)"
            )
        return ShadowPlan(
            frames=frames,
            seconds=seconds,
            min_agreement=(
                request.min_agreement
                if request.min_agreement is not None
                else defaults.min_agreement
            ),
            max_latency_ms=(
                request.max_latency_ms
                if request.max_latency_ms is not None
                else defaults.max_latency_ms
            ),
            max_latency_ratio=defaults.max_latency_ratio,
            min_frames=min(limits.min_frames, frames or limits.min_frames),
            max_seconds=limits.max_seconds,
        )

    def handle_rollback(self, cmd: RollbackCommand, reply: Reply) -> None:
        token = self._claim("a rollback")
        try:
            target = self.store.previous()
            if target is None:
                raise CommandError(
                    f"no previous model to roll back to ({self.store.root / 'previous'} is not set)"
                )
            try:
                classifiers = self._load(target)
            except RolloutError as exc:
                raise CommandError(f"the previous model cannot be loaded: {exc.message}") from None
            old = self._live_status()
            self.store.swap()
            self._activate(classifiers)
            reply.step(
                "rolled_back",
                {"reason": "rollback command", "model": self._live_status(), "previous": old},
            )
        finally:
            self._release(token)

    # -- the rollout thread ------------------------------------------------------------------------
    def _rollout(
        self, cmd: ModelCommand, plan: ShadowPlan | None, reply: Reply, token: object
    ) -> None:
        staged: Path | None = None
        installed: Path | None = None
        try:
            staged = self.store.incoming()
            installed = self._fetch(cmd, staged, reply)
            classifiers = self._load(installed)
            reply.step("loaded", {"model": model_status(classifiers[0])})
            if plan is not None:
                self._shadow_run(classifiers, plan, reply)
            self._promote(installed, classifiers, plan, reply)
            installed = None  # kept: it is current now
            self._release(token)  # a rollback or the next update may come during the watch
            self._watch(reply)
        except RolloutError as exc:
            self._rolled_back(reply, exc.stage, exc.message)
        except EdgecamError as exc:  # a model or file problem outside the named steps
            self._rolled_back(reply, "load", exc.message)
        except OSError as exc:  # the state folder: disk full, permissions
            self._rolled_back(reply, "download", f"state folder {self.store.root}: {exc}")
        except Exception as exc:  # a bug must not leave the device half-updated or busy
            log.exception("rollout: failed")
            self._rolled_back(reply, "promote", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._shadow = None
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            if installed is not None and installed not in (
                self.store.current(),
                self.store.previous(),
            ):
                shutil.rmtree(installed, ignore_errors=True)
            self._release(token)

    def _fetch(self, cmd: ModelCommand, staged: Path, reply: Reply) -> Path:
        """Download, unpack and verify into the store (not linked yet); return the folder."""
        max_bytes = int(self.cfg.max_mb * 1024 * 1024)
        got = download(
            cmd.url,
            staged / "bundle.tar.gz",
            max_bytes=max_bytes,
            timeout=self.cfg.download_timeout_s,
            allowed=self.cfg.allowed_schemes,
            ca_file=self.cfg.ca_file,
        )
        reply.step("downloaded", {"bytes": got.bytes, "seconds": round(got.seconds, 2)})
        bundle = staged / "bundle"
        bundle.mkdir()
        files = unpack(got.path, bundle, max_bytes)
        verify_bundle(bundle, cmd.sha256, cmd.signature, self.public_key)
        reply.step(
            "verified", {"sha256": cmd.sha256, "files": files, "key": key_id(self.public_key)}
        )
        return self.store.install(bundle, cmd.sha256)

    def _load(self, folder: Path) -> list[Classifier]:
        """One classifier per camera (its region of interest), the interpreter options of the
        live ones; RolloutError (stage "load") when the model cannot run here."""
        try:
            classifiers = [
                Classifier.open(folder, options=self.options, roi=cam.roi) for cam in self.cameras
            ]
            self.check_labels(classifiers[0].bundle.labels)
        except EdgecamError as exc:
            raise RolloutError("load", f"the new model cannot be loaded: {exc.message}") from None
        return classifiers

    def _shadow_run(self, classifiers: list[Classifier], plan: ShadowPlan, reply: Reply) -> None:
        shadow = ShadowRun(
            {c.name: k for c, k in zip(self.cameras, classifiers, strict=True)}, plan
        )
        self._shadow = shadow
        for pipeline in self.pipelines:
            pipeline.shadow = shadow.offer
        shadow.start()
        try:
            next_report = time.monotonic() + PROGRESS_EVERY_S
            while not shadow.done.wait(0.2):
                if self._stop.is_set():
                    raise RolloutError("shadow", "the device is stopping")
                if time.monotonic() >= next_report:
                    reply.step("shadow", shadow.report())
                    next_report += PROGRESS_EVERY_S
        finally:
            for pipeline in self.pipelines:
                pipeline.shadow = None
            shadow.stop()
        report = shadow.report()
        reply.step("shadow", {**report, "done": True})
        why = shadow.verdict()
        if why is not None:
            raise RolloutError("shadow", why)

    def _promote(
        self,
        folder: Path,
        classifiers: list[Classifier],
        plan: ShadowPlan | None,
        reply: Reply,
    ) -> None:
        old = self._live_status()
        try:
            if self.store.current() is None:  # the first update: the config's model -> previous
                running = self.store.import_running(self.pipelines[0].classifier)
                self.store.set_link("current", running)
            self.store.promote(folder)
        except (EdgecamError, OSError) as exc:
            why = exc.message if isinstance(exc, EdgecamError) else str(exc)
            raise RolloutError("promote", f"cannot update the model store: {why}") from None
        self._activate(classifiers)
        removed = self.store.prune()
        if removed:
            log.info("rollout: removed old bundles %s", ", ".join(removed))
        reply.step(
            "promoted",
            {
                "model": self._live_status(),
                "previous": old,
                "shadow": "skipped" if plan is None else "passed",
            },
        )

    def _activate(self, classifiers: list[Classifier]) -> None:
        """Hand each camera its classifier (between two of its frames) and tell the runner."""
        events = [p.swap_classifier(c) for p, c in zip(self.pipelines, classifiers, strict=True)]
        deadline = time.monotonic() + SWAP_TIMEOUT_S
        for pipeline, applied in zip(self.pipelines, events, strict=True):
            if not applied.wait(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "rollout: camera %s takes the new model when it runs again",
                    pipeline.camera.name,
                )
        self.on_change(classifiers)
        log.info("rollout: now running %s", classifiers[0].bundle.ref)

    def _watch(self, reply: Reply) -> None:
        """Roll back by itself when a camera's inference fails soon after the promotion
        (unless a rollback or another update came first)."""
        since = time.time()
        model = self.pipelines[0].classifier if self.pipelines else None
        deadline = time.monotonic() + self.cfg.watch_s
        while time.monotonic() < deadline and not self._stop.wait(0.25):
            failed = next((p for p in self.pipelines if _inference_failed(p, since)), None)
            if failed is None:
                continue
            try:
                token = self._claim("an automatic rollback")
            except CommandError:
                return  # a rollback or another update is running: it decides
            try:
                previous = self.store.previous()
                if previous is None or self.pipelines[0].classifier is not model:
                    return
                error = failed.health.last_error
                self.store.swap()
                self._activate(self._load(previous))
            finally:
                self._release(token)
            raise RolloutError(
                "run", f"camera {failed.camera.name} failed with the new model: {error}"
            )

    def _rolled_back(self, reply: Reply, stage: str, message: str) -> None:
        log.warning("rollout: rolled back at %s: %s", stage, message)
        reply.step(
            "rolled_back",
            {"stage": stage, "model": self._live_status()},
            error=message,
        )

    def _live_status(self) -> dict[str, Any]:
        return model_status(self.pipelines[0].classifier) if self.pipelines else {}

    @property
    def busy(self) -> str | None:
        busy = self._busy
        return busy[0] if busy is not None else None


def _inference_failed(pipeline: CameraPipeline, since: float) -> bool:
    error, at = pipeline.health.last_error, pipeline.health.last_error_at
    return bool(error and at and at >= since and error.startswith(("inference:", "model:")))
