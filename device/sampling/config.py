"""The ``sampling:`` section of the device config: which frames are kept for retraining.

Off by default. Each policy has its own rate limit (per camera: at most ``max_per_hour`` in any
rolling hour, at least ``min_interval_s`` apart); on top of those, every camera takes at most
``max_per_hour`` samples in all and ``max_per_label_per_hour`` per top-1 label, and the device
writes at most ``daily_mb`` of JPEG per UTC day. The defaults keep a camera under about 20
samples an hour and a device under 25 MB a day (docs/field-loop.md explains why).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class _Policy(_Section):
    enabled: bool = Field(True, description="Use this policy (when sampling is enabled).")
    max_per_hour: int = Field(
        6,
        ge=0,
        le=3600,
        description="At most this many samples of this policy per camera per hour.",
    )
    min_interval_s: float = Field(
        30.0,
        ge=0,
        description="At least this long between two samples of this policy on a camera (s): "
        "consecutive frames are nearly the same picture.",
    )


class LowConfidenceConfig(_Policy):
    below: float = Field(
        0.4, gt=0, le=1, description="Sample frames whose top-1 score is under this."
    )


class SmallMarginConfig(_Policy):
    below: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Sample frames whose top-1 and top-2 scores differ by less than this "
        "(needs inference.top_k >= 2).",
    )


class FlipConfig(_Policy):
    """Top-1 label differs from the previous frame's."""


class AlertFramesConfig(_Policy):
    start: bool = Field(True, description="Sample the frame that started an alert event.")
    best: bool = Field(True, description="Sample the event's highest-scoring frame (when it ends).")
    max_per_hour: int = Field(
        12, ge=0, le=3600, description="At most this many alert frames per camera per hour."
    )
    min_interval_s: float = Field(
        0.0, ge=0, description="At least this long between two alert frames on a camera (s)."
    )


class NearThresholdConfig(_Policy):
    band: float = Field(
        0.15,
        gt=0,
        le=1,
        description="Sample frames where an idle alert rule scores within this band under its "
        "start_score (the alert almost fired).",
    )


class RandomConfig(_Policy):
    per_label_interval_s: float = Field(
        3600.0,
        gt=0,
        description="Class balance: at most one random sample per top-1 label per camera in "
        "this long, so rare labels get as many as common ones.",
    )
    probability: float = Field(
        0.02,
        gt=0,
        le=1,
        description="Chance that an eligible frame is taken (spreads samples over time).",
    )
    max_per_hour: int = Field(
        4, ge=0, le=3600, description="At most this many random samples per camera per hour."
    )


class SamplingConfig(_Section):
    enabled: bool = Field(
        False, description="Keep frames worth learning from as field samples (docs/field-loop.md)."
    )
    max_per_hour: int = Field(
        20,
        ge=0,
        le=36000,
        description="At most this many samples per camera per hour, all policies.",
    )
    max_per_label_per_hour: int = Field(
        4,
        ge=0,
        le=36000,
        description="At most this many samples per camera per top-1 label per hour.",
    )
    daily_mb: float = Field(
        25.0, gt=0, description="At most this many MB of samples per device per UTC day."
    )
    quality: int = Field(90, ge=10, le=100, description="JPEG quality of samples.")
    max_width: int | None = Field(
        1280, ge=32, description="Downscale wider frames to this width; null: full size."
    )
    crop_roi: bool = Field(
        False,
        description="Also keep the region of interest (the camera's, or an alert rule's) as a "
        "sample of its own, whose sidecar carries the roi.",
    )
    queue: int = Field(
        8,
        ge=1,
        le=256,
        description="Frames waiting for the JPEG encoder; more are dropped (counted), the "
        "camera loop never waits.",
    )
    low_confidence: LowConfidenceConfig = Field(
        default_factory=LowConfidenceConfig, description="Frames the model is unsure about."
    )
    small_margin: SmallMarginConfig = Field(
        default_factory=SmallMarginConfig, description="Frames where two classes nearly tie."
    )
    flip: FlipConfig = Field(
        default_factory=FlipConfig, description="Frames where the top-1 label changes."
    )
    alerts: AlertFramesConfig = Field(
        default_factory=AlertFramesConfig,
        description="The start and best frames of alert events.",
    )
    near_threshold: NearThresholdConfig = Field(
        default_factory=NearThresholdConfig,
        description="Frames where an alert rule almost started an event.",
    )
    random: RandomConfig = Field(
        default_factory=RandomConfig, description="A small class-balanced random sample."
    )
