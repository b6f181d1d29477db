"""The ``rollout:`` config section: model updates over MQTT (docs/fleet.md).

A device takes ``model`` and ``rollback`` commands only when ``public_key`` names the operator's
Ed25519 public key; the private key never leaves the operator's workstation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ShadowDefaults(_Section):
    """What a ``model`` command's ``shadow`` object falls back to, key by key."""

    frames: int | None = Field(
        100,
        ge=1,
        description="Live frames the new model classifies beside the current one before it may "
        "be promoted (when the command gives neither frames nor seconds).",
    )
    seconds: float | None = Field(
        None,
        gt=0,
        description="Or: shadow for this long (s) instead of a frame count; null: use frames.",
    )
    min_agreement: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Share of shadow frames whose top-1 label must equal the current model's.",
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        description="Median inference time (ms) the new model may take in shadow; null: at most "
        "max_latency_ratio times the current model's median on the same frames.",
    )
    max_latency_ratio: float = Field(
        2.0,
        gt=0,
        description="Used when max_latency_ms is null: the new model's median inference time may "
        "be at most this many times the current model's.",
    )

    @model_validator(mode="after")
    def _one_length(self) -> ShadowDefaults:
        if self.frames is None and self.seconds is None:
            raise ValueError("give shadow.frames or shadow.seconds")
        return self


class ShadowLimits(_Section):
    """Bounds on what a command may ask for."""

    max_frames: int = Field(5000, ge=1, description="The most shadow frames a command may ask for.")
    max_seconds: float = Field(
        1800.0,
        gt=0,
        description="The longest shadow a command may ask for (s); a frame-count shadow that has "
        "not collected its frames by then fails.",
    )
    min_frames: int = Field(
        10,
        ge=1,
        description="A shadow that compared fewer frames (a stalled camera) fails.",
    )
    allow_skip: bool = Field(
        True,
        description="Accept `shadow: null` (promote right after verifying and loading, no shadow).",
    )


class RolloutConfig(_Section):
    public_key: str | None = Field(
        None,
        description="The operator's Ed25519 public key (PEM, from `edgecam-convert keygen`); "
        "null: `model` and `rollback` commands are refused.",
    )
    state_dir: str = Field(
        "state",
        description="State folder: bundles go to <state_dir>/models/<sha12>/ with `current` and "
        "`previous` links (/var/lib/edgecam on an installed Pi).",
    )
    allowed_schemes: list[Literal["https", "http"]] = Field(
        default_factory=lambda: ["https"],
        min_length=1,
        description="URL schemes a bundle may be downloaded from. The signature protects the "
        "content either way; add http for a plain LAN file server.",
    )
    ca_file: str | None = Field(
        None, description="CA certificate (PEM) for https downloads; null: the system CA store."
    )
    max_mb: float = Field(
        200.0, gt=0, description="Largest bundle archive (and unpacked bundle) accepted, in MB."
    )
    download_timeout_s: float = Field(
        120.0, gt=0, description="A download that takes longer is abandoned."
    )
    shadow: ShadowDefaults = Field(
        default_factory=ShadowDefaults, description="Shadow defaults for `model` commands."
    )
    limits: ShadowLimits = Field(
        default_factory=ShadowLimits, description="Bounds on shadow runs a command may ask for."
    )
    watch_s: float = Field(
        30.0,
        ge=0,
        description="After a promotion, a camera whose inference fails within this many seconds "
        "rolls the device back to the previous model by itself.",
    )

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> RolloutConfig:
        shadow, limits = self.shadow, self.limits
        if shadow.seconds is None and (shadow.frames or 0) > limits.max_frames:
            raise ValueError(
                f"shadow.frames {shadow.frames} is over limits.max_frames {limits.max_frames}"
            )
        if shadow.seconds is not None and shadow.seconds > limits.max_seconds:
            raise ValueError(
                f"shadow.seconds {shadow.seconds:g} is over limits.max_seconds "
                f"{limits.max_seconds:g}"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.public_key is not None
