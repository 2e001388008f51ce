"""Gateway settings, read from ``IDEMGATE_*`` environment variables (see docs/operations.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_STORAGE", "Settings"]

DEFAULT_STORAGE = "sqlite:///data/idemgate.db"
# DynamoDB caps an item at 400 KB; the rest of the record needs room too.
DYNAMODB_ITEM_LIMIT_BYTES = 400 * 1024


class Settings(BaseSettings):
    """Everything an operator can set. Each field is ``IDEMGATE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="IDEMGATE_", frozen=True)

    storage: str = DEFAULT_STORAGE
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    # Longer than a load balancer's idle timeout (an ALB's is 60 s), so the balancer, never the
    # gateway, closes an idle connection: a close racing a new request would be a 502.
    keep_alive_s: int = Field(default=75, ge=1)
    # Bounds on what one client may hold: a slow or endless request cannot keep a worker busy.
    max_url_bytes: int = Field(default=8192, ge=256)
    max_header_count: int = Field(default=100, ge=8)
    max_header_bytes: int = Field(default=16384, ge=1024)
    head_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_result_bytes: int = Field(default=262144, ge=1, le=DYNAMODB_ITEM_LIMIT_BYTES - 8192)
    storage_connections: int = Field(default=64, ge=1)
    storage_timeout_ms: int = Field(default=2000, ge=1)
    storage_max_attempts: int = Field(default=3, ge=1)  # the AWS SDKs' standard mode
    sweep_interval_s: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    # How long an access line may wait to be written with others (0: at the end of its turn
    # of the event loop); a worker killed outright loses the lines of the last interval.
    access_log_flush_ms: int = Field(default=1000, ge=0, le=60_000)
    # Who may call (docs/security.md): no policy file means open, on a loopback host only.
    auth_file: Path | None = None
    allow_anonymous: bool = False
    dev_token: bool = False
    auth_server_id: str | None = Field(default=None, min_length=1, max_length=256)
    sts_url: str | None = None
    sts_timeout_ms: int = Field(default=2000, ge=1)
    iam_max_age_s: int = Field(default=300, ge=30, le=900)
    # Each namespace label costs six series per worker; the rest are counted under "other".
    metrics_max_namespaces: int = Field(default=300, ge=0)
