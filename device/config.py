"""The device configuration: one YAML file validated into typed models.

Every section has ``extra="forbid"``: a misspelt key is an error naming the key, its path and
its line in the file. The file is read by ``device.yamlfile`` (YAML 1.2 booleans, so ``off``
is text; duplicate keys, non-finite numbers and alias bombs refused; secrets masked in syntax
errors). Secrets can come from the environment (``EDGECAM_MQTT_USERNAME``,
``EDGECAM_MQTT_PASSWORD``), which overrides the file. Each component is handed only its own
section. Relative paths are relative to the working directory of the process.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from device.alerts.config import AlertsConfig
from device.commands import CommandsConfig
from device.errors import ConfigError
from device.files import read_text
from device.geometry import Roi
from device.health import HealthConfig
from device.manifest import CROP_MODES, RESIZE_FILTERS
from device.motion import MotionConfig
from device.names import CameraName, DeviceId, check_unique
from device.privacy.config import PrivacyConfig, check_cameras
from device.rollout.config import RolloutConfig
from device.sampling.config import SamplingConfig
from device.supervision import SupervisionConfig
from device.upload.config import UploadConfig
from device.yamlfile import load_yaml

MAX_CONFIG_BYTES = 1 << 20  # a device config is a few KB


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    path: str = Field(
        "models/mobilenet_v2_1.0_224_quant.tflite",
        description="The model: a bundle folder (model.tflite + labels.txt + model.json) or a .tflite file.",
    )
    labels: str | None = Field(
        "models/imagenet_labels.txt",
        description="Labels file (one per line, or '<id> <label>'); null: the bundle's labels.txt.",
    )
    fallback: str | None = Field(
        None,
        description="CPU model used when `path` needs an Edge TPU that is not available.",
    )
    fallback_labels: str | None = Field(
        None, description="Labels for the fallback model (default: `labels`)."
    )
    mean: list[float] | None = Field(
        None,
        description="Per-channel mean of the float normalisation (pixel - mean) / std; null: the model's own.",
    )
    std: list[float] | None = Field(
        None, description="Per-channel std of the normalisation; null: the model's own."
    )
    resize: Literal[RESIZE_FILTERS] | None = Field(  # type: ignore[valid-type]
        None, description="Resize filter; null: the model manifest's (default bilinear)."
    )
    allow_failed_gate: bool = Field(
        False,
        description="Run a bundle whose verification gate failed in `make convert` (refused by default).",
    )
    crop: Literal[CROP_MODES] | None = Field(  # type: ignore[valid-type]
        None,
        description="Centre-crop to the model's aspect ratio before resizing; null: the manifest's.",
    )

    @field_validator("mean", "std")
    @classmethod
    def _three(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) not in (1, 3):
            raise ValueError("give 1 or 3 numbers (R, G, B)")
        return value


class InferenceConfig(Section):
    threads: int | None = Field(
        None, ge=1, description="Interpreter CPU threads; null: the runtime's default."
    )
    xnnpack: bool = Field(
        True, description="Use the XNNPACK CPU delegate (faster float and int8 kernels)."
    )
    edgetpu: bool = Field(False, description="Run on a Coral Edge TPU through libedgetpu.")
    edgetpu_device: str = Field("usb", description="Edge TPU device: usb, usb:0, pci, pci:0.")
    runtime: Literal["ai_edge_litert", "tflite_runtime", "tensorflow"] | None = Field(
        None, description="Force a TFLite runtime; null: the first found in that order."
    )
    top_k: int = Field(3, ge=1, le=100, description="How many classes each result lists.")
    min_score: float = Field(
        0.0, ge=0.0, le=1.0, description="Classes scoring lower are left out of results."
    )


class CameraConfig(Section):
    name: CameraName = Field(
        "cam0",
        description="Camera name, used in MQTT topics and file names "
        "(letters, digits, _ . -; not . or ..).",
    )
    source: str = Field(
        "auto",
        description=(
            "auto (Pi camera, else first USB camera, else models/vtest.avi), picamera2 or "
            "picamera2:N, a USB camera index (0), a video file, an rtsp:// or http:// URL, "
            "or a folder of images."
        ),
    )
    width: int | None = Field(
        None, ge=16, description="Capture width for cameras; null: the camera's default."
    )
    height: int | None = Field(
        None, ge=16, description="Capture height for cameras; null: the camera's default."
    )
    fps: float | None = Field(
        None, gt=0, description="Capture rate for cameras, pace for files and folders."
    )
    loop: bool = Field(False, description="Start a video file or image folder again at its end.")
    realtime: bool | None = Field(
        None,
        description="Pace files at their frame rate and drop frames like a live camera; "
        "null: live sources real time, files as fast as inference allows (no drops).",
    )
    roi: Roi = Field(
        None,
        description="Region of interest [x, y, w, h] as fractions of the frame; null: whole frame.",
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, description="Longest wait between reconnects to a lost camera."
    )
    motion: MotionConfig = Field(
        default_factory=MotionConfig,
        description="Motion-gated inference: classify only frames where something moved "
        "(docs/operations.md#motion-gating).",
    )
    health: HealthConfig = Field(
        default_factory=HealthConfig,
        description="Camera health: dark, bright, covered, blurred, frozen, no frames "
        "(docs/operations.md#camera-health).",
    )


class TLSConfig(Section):
    ca_file: str | None = Field(
        None, description="CA certificate (PEM) that signed the broker's certificate."
    )
    cert_file: str | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: str | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    insecure: bool = Field(False, description="Skip the broker hostname check (testing only).")


class MQTTConfig(Section):
    enabled: bool = Field(True, description="Publish results over MQTT.")
    host: str = Field("localhost", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    client_id: str | None = Field(None, description="MQTT client id; null: edgecam-<device_id>.")
    username: str | None = Field(None, description="Username; env EDGECAM_MQTT_USERNAME overrides.")
    password: SecretStr | None = Field(
        None, description="Password; better set env EDGECAM_MQTT_PASSWORD. Never logged."
    )
    tls: TLSConfig | None = Field(None, description="TLS settings; null: plain TCP.")
    keepalive: int = Field(60, ge=5, le=65535, description="Keepalive interval in seconds.")
    qos: int = Field(0, ge=0, le=2, description="QoS of classification messages.")
    topic_prefix: str = Field(
        "edgecam", pattern=r"^[A-Za-z0-9_./-]+$", description="First level of every topic."
    )
    classification_interval: float = Field(
        10.0,
        gt=0,
        description="Publish a classification at least this often (s), and on every top-1 change.",
    )
    reconnect_min_s: float = Field(
        1.0, gt=0, description="First wait before reconnecting to the broker."
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, description="Longest wait between reconnect attempts."
    )


class ConsoleConfig(Section):
    format: Literal["off", "text", "json"] = Field(
        "text", description="Results on stdout: text lines, JSON lines, or off."
    )
    jsonl_path: str | None = Field(
        None, description="Also append results as JSON lines to this file."
    )
    changes_only: bool = Field(
        True, description="Print a result only when the top-1 label changes (plus every interval)."
    )
    interval: float = Field(
        5.0, gt=0, description="With changes_only, print at least this often (s)."
    )


class MetricsConfig(Section):
    interval: float = Field(
        60.0, gt=0, description="Publish and log metrics every this many seconds."
    )


def _default_device_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name if name.strip(".") else "edgecam"


class DeviceConfig(Section):
    device_id: DeviceId = Field(
        default_factory=_default_device_id,
        description="Device name in MQTT topics (letters, digits, _ . -); default: the host name.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to run.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Interpreter options."
    )
    cameras: list[CameraConfig] = Field(
        default_factory=lambda: [CameraConfig()],
        min_length=1,
        description="Cameras; each has its own capture thread and topics.",
    )
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig, description="MQTT broker and topics.")
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, description="Console / JSON-lines output."
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Runtime metrics.")
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig,
        description="Alert rules, events, snapshots, outbox, Home Assistant discovery, commands "
        "(docs/alerts.md).",
    )
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig,
        description="Commands on <prefix>/<device>/cmd/<command>: which are enabled, the "
        "longest pause (docs/alerts.md).",
    )
    supervision: SupervisionConfig = Field(
        default_factory=SupervisionConfig,
        description="Camera restarts after unexpected errors; a camera that keeps failing ends "
        "the device with exit status 1 (docs/operations.md).",
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="Field samples: frames worth learning from, kept for retraining, with "
        "rate limits and a daily byte budget (docs/field-loop.md).",
    )
    upload: UploadConfig = Field(
        default_factory=UploadConfig,
        description="The ingest server the samples go to, and the outbox they wait in "
        "(docs/field-loop.md).",
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="Model updates over MQTT: the operator's public key, the model store, "
        "download and shadow limits (docs/fleet.md).",
    )
    privacy: PrivacyConfig = Field(
        default_factory=PrivacyConfig,
        description="Privacy masks and face redaction in every image that leaves the device "
        "(docs/privacy.md).",
    )

    @model_validator(mode="after")
    def _unique_cameras(self) -> DeviceConfig:
        check_unique([c.name for c in self.cameras], "camera")
        check_cameras(self.privacy, [c.name for c in self.cameras])
        return self


# -- loading -----------------------------------------------------------------------------------
def _key_lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple[Any, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            lines[sub] = key.start_mark.line + 1
            for k, v in _key_lines(value, sub).items():
                lines.setdefault(k, v)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_key_lines(item, (*path, i)))
    return lines


def _format_errors(exc: ValidationError, source: str, lines: dict[tuple[Any, ...], int]) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        where = f"{source}, line {line}" if line else source
        if err["type"] == "extra_forbidden":
            parent = _model_at(DeviceConfig, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else ""
            msg = f"unknown key {loc[-1]!r}" + (f" (allowed here: {allowed})" if allowed else "")
        else:
            msg = err["msg"].removeprefix("Value error, ")
        messages.append(f"{where}: {dotted}: {msg}")
    return "invalid config:\n  " + "\n  ".join(messages)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = None
        for cand in candidates:
            for inner in [cand, *getattr(cand, "__args__", ())]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        if nxt is None:
            return None
        current = nxt
    return current if isinstance(current, type) else None


def parse_config(text: str, source: str = "<config>") -> DeviceConfig:
    """Validate YAML text into a DeviceConfig; ConfigError names field, file and line."""
    data, node = load_yaml(text, source, ConfigError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (model:, cameras:, ...)",
            "start from config/device.example.yaml",
        )
    env_user = os.environ.get("EDGECAM_MQTT_USERNAME")
    env_pass = os.environ.get("EDGECAM_MQTT_PASSWORD")
    if env_user or env_pass:
        mqtt = data.setdefault("mqtt", {}) or {}
        if isinstance(mqtt, dict):
            data["mqtt"] = mqtt
            if env_user:
                mqtt["username"] = env_user
            if env_pass:
                mqtt["password"] = env_pass
    try:
        return DeviceConfig.model_validate(data)
    except ValidationError as exc:
        lines = _key_lines(node) if node is not None else {}
        raise ConfigError(_format_errors(exc, source, lines)) from None


def load_config(path: str | Path | None) -> DeviceConfig:
    """Load and validate a config file; None gives the defaults (plus environment secrets)."""
    if path is None:
        return parse_config("", "<defaults>")
    text = read_text(
        path,
        "config file",
        ConfigError,
        max_bytes=MAX_CONFIG_BYTES,
        missing_hint="copy config/device.example.yaml and edit it",
    )
    return parse_config(text, str(path))
