"""The ``privacy:`` section of the device config: face redaction and per-camera masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from device.geometry import Polygon
from device.names import CameraName
from device.samples import REDACTION_METHODS as METHODS

DEFAULT_DETECTOR = "models/face_detection_full_range_sparse.tflite"
DEFAULT_MIN_SCORE = 0.5  # MediaPipe's default min_detection_confidence


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class FacesConfig(_Section):
    """Face redaction: a BlazeFace detector finds faces in every image that leaves the device."""

    enabled: bool = Field(
        False,
        description="Redact faces in snapshots and field samples. When the detector cannot run, "
        "those images are withheld (alerts still go out).",
    )
    model: str = Field(
        DEFAULT_DETECTOR,
        description="BlazeFace detector (.tflite): face_detection_full_range_sparse (faces "
        "within ~5 m) or face_detection_short_range (within ~2 m); `make models` fetches both.",
    )
    min_score: float = Field(
        DEFAULT_MIN_SCORE,
        gt=0.0,
        le=1.0,
        description="Detection score from which a face is redacted (lower: more faces, more "
        "false alarms); tune it with `edgecam-device redact`.",
    )
    margin: float = Field(
        0.25,
        ge=0.0,
        le=2.0,
        description="Grow each face box by this fraction of its size on every side (hair, ears).",
    )
    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        "blur", description="blur (coarse blur), pixelate (large blocks) or box (solid black)."
    )
    tile_px: int | None = Field(
        None,
        ge=64,
        le=4096,
        description="Also scan overlapping squares of this many pixels, for faces too small to "
        "find in the whole image (cameras that see people from afar; e.g. 192: several "
        "detector runs per image); null: the whole image only.",
    )
    threads: int = Field(
        1, ge=1, le=8, description="Detector CPU threads (it runs beside the camera loop)."
    )


class CameraPrivacy(_Section):
    """One camera's privacy masks."""

    masks: list[Polygon] = Field(
        default_factory=list,
        max_length=50,
        description="Polygons blacked out in every image of this camera that leaves the device: "
        "each a list of at least 3 [x, y] points, fractions of the frame (0..1).",
    )
    mask_inference: bool = Field(
        False,
        description="Also black out the masks in the frame before it is classified (and in "
        "everything after: alerts' regions, snapshots, samples).",
    )


class PrivacyConfig(_Section):
    """The ``privacy:`` section (docs/privacy.md)."""

    faces: FacesConfig = Field(default_factory=FacesConfig, description="Face redaction.")
    cameras: dict[CameraName, CameraPrivacy] = Field(
        default_factory=dict, description="Privacy masks per camera name."
    )

    @property
    def active(self) -> bool:
        """True when anything is redacted at all."""
        return self.faces.enabled or any(c.masks for c in self.cameras.values())


def check_cameras(privacy: PrivacyConfig, cameras: Sequence[str]) -> None:
    """ValueError when ``privacy.cameras`` names a camera that is not configured."""
    unknown = sorted(set(privacy.cameras) - set(cameras))
    if unknown:
        raise ValueError(
            f"privacy.cameras: {', '.join(map(repr, unknown))} is not a camera of this device "
            f"(cameras: {', '.join(cameras)})"
        )
