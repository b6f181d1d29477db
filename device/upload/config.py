"""The ``upload:`` section of the device config: where samples go and how they wait.

Off by default. The token comes from the environment (``EDGECAM_UPLOAD_TOKEN``) or a token
file, never from the config file itself, and is never logged. Samples wait in ``outbox.dir``
(beside the alert outbox in the state directory) whether upload is on or not, so sampling
without upload collects them on the device.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from device.errors import ConfigError
from device.files import decode_text, read_bytes

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGECAM_UPLOAD_TOKEN"
_TOKEN = re.compile(r"^[\x21-\x7e]{8,4096}$")  # printable ASCII, no spaces: one header value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SampleOutboxConfig(_Section):
    dir: str = Field(
        "state/samples",
        description="Folder of samples waiting for upload (<sample_id>.jpg + .json; created on "
        "first use); refused ones are moved to its rejected/ subfolder.",
    )
    max_samples: int = Field(
        2000, ge=1, description="Keep at most this many waiting samples (oldest dropped, counted)."
    )
    max_mb: float = Field(
        200.0, gt=0, description="Keep waiting samples under this size (oldest dropped, counted)."
    )
    max_rejected: int = Field(
        100,
        ge=0,
        description="Keep at most this many refused samples in rejected/ (oldest deleted).",
    )


class UploadConfig(_Section):
    enabled: bool = Field(
        False, description="Send samples to the ingest server (docs/field-loop.md)."
    )
    url: str | None = Field(
        None,
        description="The ingest server, e.g. https://workstation.lan:8443 (a path prefix is "
        "kept); POST <url>/api/v1/samples.",
    )
    token_file: str | None = Field(
        None,
        description=f"File holding this device's token; env {TOKEN_ENV} overrides. Never logged.",
    )
    ca_file: str | None = Field(
        None,
        description="CA certificate (PEM) of a private CA that signed the server's certificate.",
    )
    timeout_s: float = Field(
        20.0, gt=0, le=600, description="Connect and read timeout of one request (s)."
    )
    retry_min_s: float = Field(
        2.0, gt=0, description="First wait after a failed upload; doubles (with jitter) ..."
    )
    retry_max_s: float = Field(300.0, gt=0, description="... up to this (s).")
    outbox: SampleOutboxConfig = Field(
        default_factory=SampleOutboxConfig,
        description="The samples waiting on the device, and their bounds.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("give an http:// or https:// URL with a host name")
        if parts.username or parts.password:
            raise ValueError("no credentials in the URL: use token_file or EDGECAM_UPLOAD_TOKEN")
        if parts.query or parts.fragment:
            raise ValueError("no ?query or #fragment in the URL")
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return value.rstrip("/")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(cfg: UploadConfig) -> SecretStr:
    """The device's upload token: env EDGECAM_UPLOAD_TOKEN, else ``token_file``. ConfigError
    (which never shows the token) when there is none or it cannot be a header value."""
    value = os.environ.get(TOKEN_ENV)
    where = f"env {TOKEN_ENV}"
    if not value:
        if cfg.token_file is None:
            raise ConfigError(
                "upload is enabled but there is no token",
                f"set {TOKEN_ENV} or upload.token_file (the server's `edgecam-train token add "
                "DEVICE` prints one)",
            )
        where = f"upload.token_file {cfg.token_file}"
        data = read_bytes(cfg.token_file, "upload token file", ConfigError, max_bytes=8192)
        value = decode_text(data, where, ConfigError)
        _warn_if_readable_by_others(cfg.token_file)
    value = value.strip()
    if not _TOKEN.match(value):
        raise ConfigError(
            f"the upload token in {where} is not valid (8-4096 printable characters, no spaces)",
            "paste the token exactly as `edgecam-train token add DEVICE` printed it",
        )
    return SecretStr(value)


def _warn_if_readable_by_others(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("upload token file %s is readable by other users: chmod 600 it", path)


def check_upload(cfg: UploadConfig) -> SecretStr | None:
    """What ``validate`` and the start check: a URL, a token, a readable CA file. The token, or
    None when upload is off."""
    if not cfg.enabled:
        return None
    if cfg.url is None:
        raise ConfigError(
            "upload is enabled but upload.url is not set",
            "set upload.url to the ingest server, e.g. https://workstation.lan:8443",
        )
    token = read_token(cfg)
    if cfg.ca_file is not None:
        read_bytes(
            cfg.ca_file,
            "upload CA file (upload.ca_file)",
            ConfigError,
            max_bytes=1 << 20,
            missing_hint="give the PEM file of the CA that signed the server's certificate",
        )
    if cfg.retry_max_s < cfg.retry_min_s:
        raise ConfigError("upload.retry_max_s is less than upload.retry_min_s")
    if urlsplit(cfg.url).scheme == "http" and not is_loopback(cfg.url):
        log.warning(
            "upload.url %s is plain http: the token and the samples cross the network "
            "unencrypted; use https",
            cfg.url,
        )
    return token
