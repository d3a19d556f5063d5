"""Server settings from the environment (prefix RECSYS_) or an env file, with secure defaults.

Read through the cached `get_settings()`; tests build their own `Settings` and pass it to
`create_app`. Nothing here is a module-level settings object.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recsys.errors import RecsysError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class InsecureSettingsError(RecsysError, ValueError):
    """Settings that would expose the service without protection (the CLI prints it, exit 2)."""


class SettingsError(RecsysError, ValueError):
    """A RECSYS_* value that does not parse or is out of range (one line naming it, exit 2)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Auth. Keys are secrets: never logged, compared in constant time. Data keys use the data
    # routes; the admin key only the admin routes. With no data keys the data routes are open,
    # which `check_secure` allows only on a loopback address.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    admin_key: SecretStr | None = None
    allow_open_access_on_network: bool = False

    rate_limit_per_s: float = Field(50.0, gt=0)     # sustained requests per second per key
    rate_limit_burst: int = Field(100, ge=1)        # bucket size

    # Bodies larger than this get 413 before they are read (per-field limits: serving.schemas).
    max_body_bytes: int = Field(1_000_000, ge=1024)

    # Work scheduling: the model runs on a small pool (one thread per core beats fighting
    # over them); requests beyond `max_pending` wait no longer than it takes to say 503.
    model_threads: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    max_pending: int = Field(64, ge=1)
    # POST /events requests admitted (being read, validated, or waiting for the store's next
    # group write: serving.event_writer); beyond it: 503 at once.
    max_pending_events: int = Field(64, ge=1)
    # A 503 for a full queue closes its connection (a client retrying at once must reconnect
    # first); false: the connection stays open for the client's next request.
    refusal_close: bool = True
    ranker_timeout_ms: float = Field(200.0, gt=0)   # past it: retrieval order, marked degraded
    # Predict through the ranker's trees compiled to machine code (lleaves; checked against
    # LightGBM's scores at load, which stays in use if they disagree): cheaper per request.
    compiled_ranker: bool = True
    # Recommendation requests that wait for a model thread are answered together, at most this
    # many per engine call (1: every request alone). See serving/batching.py.
    batch_max: int = Field(32, ge=1, le=1000)
    # Load the text encoder (~490 MB RSS, PUT /items needs it) while a bundle is verified, so
    # the first PUT /items pays nothing. Off: its files are checked then; it loads on first use.
    load_encoder: bool = False

    # Live state. RECSYS_STORE: sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB (the
    # one several replicas share); RECSYS_EVENT_STORE: a SQLite path (the older setting).
    # Default: MODELS/events.sqlite.
    store: SecretStr | None = None                  # secret: a PostgreSQL URL holds a password
    event_store: Path | None = None
    # How often a replica looks for item changes other replicas stored (and /health's lag).
    follow_store_s: float = Field(0.2, gt=0, le=5)
    future_skew_s: float = Field(300.0, ge=0)       # reject events stamped further ahead
    live_history_items: int = Field(50, ge=1)       # latest stored events of a user used

    # Model lifecycle: how often to look at CURRENT (0 = only on POST /admin/reload).
    poll_current_s: float = Field(2.0, ge=0)
    # Start without a model and serve the first one CURRENT names (/ready 503 until then),
    # instead of refusing to start on a models folder that holds none yet.
    wait_for_model: bool = False

    log_level: str = "INFO"
    # auto: text lines on a terminal, JSON lines otherwise (a log collector).
    log_format: Literal["auto", "text", "json"] = "auto"

    # Server processes. Model work holds the GIL, so one process uses about one core; each
    # worker loads its own copy of the model and they share the event store (see
    # docs/operations.md for what is per process).
    workers: int = Field(1, ge=1, le=64)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):  # RECSYS_API_KEYS="k1,k2"
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    def event_store_path(self) -> Path | None:
        """RECSYS_EVENT_STORE, else MODELS/events.sqlite; None while the models folder does not
        exist (a mistyped path must not turn into a new folder with a store in it)."""
        if self.event_store is not None:
            return self.event_store
        if self.models_dir is None or not self.models_dir.is_dir():
            return None
        return self.models_dir / "events.sqlite"

    def store_location(self) -> str | None:
        """RECSYS_STORE, else the SQLite path of `event_store_path` (None: no store yet)."""
        if self.store is not None:
            if self.event_store is not None:
                raise SettingsError("set RECSYS_STORE or RECSYS_EVENT_STORE, not both")
            return self.store.get_secret_value()
        path = self.event_store_path()
        return None if path is None else str(path)

    def check_secure(self) -> Settings:
        """Refuse settings that would serve data to a network without keys, or weak keys."""
        for key in [*self.api_keys, *([self.admin_key] if self.admin_key else [])]:
            if len(key.get_secret_value()) < 16:
                raise InsecureSettingsError("API keys must be at least 16 characters long")
        if self.admin_key is not None and any(
                k.get_secret_value() == self.admin_key.get_secret_value() for k in self.api_keys):
            raise InsecureSettingsError("the admin key must differ from every data key")
        if not self.api_keys and not _is_loopback(self.host) \
                and not self.allow_open_access_on_network:
            raise InsecureSettingsError(
                f"refusing to serve on {self.host} without API keys: set RECSYS_API_KEYS "
                "(and RECSYS_ADMIN_KEY), or bind to 127.0.0.1")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_errors(exc: ValidationError) -> str:
    """One line naming each bad setting as it is spelled in the environment, with its value."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error.get("loc") else "?"
        name = f"RECSYS_{field.upper()}"
        parts.append(f"{name}={error.get('input')!r}: {error.get('msg', 'invalid')}")
    return "bad setting " + "; ".join(parts)


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, and from the file named by RECSYS_ENV_FILE if set
    (SettingsError naming the setting for a value that does not parse)."""
    env_file = os.environ.get("RECSYS_ENV_FILE")
    try:
        return Settings(_env_file=env_file) if env_file else Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


__all__ = ["InsecureSettingsError", "Settings", "SettingsError", "describe_errors",
           "get_settings"]
