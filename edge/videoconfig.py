"""The `video:` section of the configuration (camera, analysis, violence model, clips, fusion).

`video: {source: none}` (the default) turns the camera half off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.smoothing import SmoothingConfig

_FORBID = ConfigDict(extra="forbid", frozen=True)
# `on` is the shipped head's cross-validated operating point (<= 10% of calm clips flagged);
# k of n windows span one second at the default 8 analysed frames per second.
VIOLENCE_SMOOTHING = SmoothingConfig(
    on=0.54, off=0.42, k=4, n=8, fast=None, hold_s=1.5, refractory_s=5.0, update_s=10.0
)


class ClipsConfig(BaseModel):
    model_config = _FORBID
    enabled: bool = Field(True, description="Write audio/video evidence clips for each event.")
    pre_s: float = Field(5.0, ge=0, le=60, description="Seconds before the event start.")
    post_s: float = Field(5.0, ge=0, le=60, description="Seconds after the event end.")
    quota_mb: float = Field(1024.0, ge=10, le=1e6, description="Disk quota of the clip folder.")
    retention_days: float = Field(14.0, gt=0, le=3650, description="Clips older go.")
    queue: int = Field(16, ge=1, le=256, description="Pending clip jobs; beyond: dropped, counted.")


class PreviewConfig(BaseModel):
    model_config = _FORBID
    enabled: bool = Field(
        False,
        description="Serve an MJPEG preview of the camera (password: the secret "
        "preview_password, i.e. SAFEGUARD_PREVIEW_PASSWORD or $CREDENTIALS_DIRECTORY).",
    )
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on; 0.0.0.0 for the LAN (basic auth is clear text: "
        "a trusted network or a TLS proxy).",
    )
    port: int = Field(8081, ge=0, le=65535, description="HTTP port (0: any free port).")
    user: str = Field("safeguard", min_length=1, max_length=64, description="Basic-auth user.")
    fps: float = Field(2.0, ge=0.2, le=15, description="Preview frames per second.")
    quality: int = Field(70, ge=10, le=95, description="JPEG quality.")
    max_clients: int = Field(2, ge=1, le=16, description="Viewers at once; more are refused.")


class FusionConfig(BaseModel):
    model_config = _FORBID
    window_s: float = Field(
        5.0, ge=0, le=120, description="Audio and video events this close in time fuse."
    )
    severity: Literal["info", "warning", "critical"] = Field(
        "critical", description="Severity of a fused (audio + video) alert."
    )


class VideoConfig(BaseModel):
    """Camera and violence detection."""

    model_config = _FORBID
    source: str = Field(
        "none",
        description='"none" | "/dev/videoN" | "file:/path.mp4" (real-time speed) | "rtsp://..." '
        '| "gst:PIPELINE".',
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    width: int = Field(320, ge=64, le=1920, description="Frames are downscaled to this width.")
    ring_s: float = Field(20.0, ge=2, le=300, description="Seconds of frames kept (pre-roll).")
    max_fps: float = Field(15.0, ge=1, le=60, description="Frames kept per second at most.")
    fps: float = Field(
        8.0,
        ge=0.5,
        le=30,
        description="Frames analysed per second (the violence head is trained for 8).",
    )
    motion_threshold: float = Field(
        0.01, ge=0, le=1, description="Fraction of changed pixels that opens the motion gate."
    )
    head: Path | None = Field(
        None,
        description="The violence head file, relative to models_tflite/heads/ unless absolute "
        "(null: the shipped violence.npz).",
    )
    severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="Severity of a violence alert seen by the camera alone."
    )
    smoothing: SmoothingConfig = Field(
        VIOLENCE_SMOOTHING, description="How violence scores become events."
    )
    threads: int = Field(1, ge=1, le=8, description="Backbone inference threads.")
    retry_max_s: float = Field(30.0, ge=1, le=600, description="Longest wait between reopens.")
    clips: ClipsConfig = Field(
        default_factory=ClipsConfig,
        description="Evidence clips of every event: WAV from the audio ring, MP4 from the camera "
        "(audio-only devices too, with video.source none).",
    )
    preview: PreviewConfig = Field(
        default_factory=PreviewConfig, description="MJPEG preview (off by default)."
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Audio + video.")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value == "none" or re.match(r"^(/dev/video\d+|file:.+|rtsps?://.+|gst:.+)$", value):
            return value
        raise ValueError('must be "none", "/dev/videoN", "file:/path", "rtsp://..." or "gst:..."')

    @model_validator(mode="after")
    def _rates(self) -> VideoConfig:
        if self.fps > self.max_fps:
            raise ValueError(
                f"fps ({self.fps:g}) must not be above max_fps ({self.max_fps:g}): the analysis "
                "would see repeated frames"
            )
        return self
