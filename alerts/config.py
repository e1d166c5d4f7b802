"""Settings, read from the environment with the ``ALERTS_`` prefix.

Defaults are the embedded ones (SQLite file, Celery's filesystem broker, emails as files) so that
``make demo`` needs no server. Production refuses to start with a placeholder secret.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "dev-insecure-change-me"  # noqa: S105 - a known placeholder, refused outside dev
VAR_DIR = Path("var")


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALERTS_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    database_url: str = f"sqlite:///{VAR_DIR / 'alerts.db'}"
    # "filesystem://" is Celery's embedded broker: messages are files under broker_dir.
    broker_url: str = "filesystem://"
    broker_dir: Path = VAR_DIR / "broker"
    # Redis redelivers a message not acknowledged within this time (a worker that vanished). Longer than any
    # task (a send batch is bounded by half the lease); our tasks are idempotent, so early is safe.
    broker_visibility_timeout_s: int = Field(default=600, gt=0)
    # Celery task events (task-sent/received/started/succeeded) for every task from the start. Off: each
    # costs a Redis publish per task (a fifth of a sign-up's web time, measured); Flower turns them on in
    # the workers it watches by itself, and alerts status / /ops read the database and the broker instead.
    task_events: bool = False
    # Prefix for every broker key in Redis, so several deployments (or test runs) can share one Redis.
    broker_prefix: str | None = None
    result_backend: str | None = None
    # Redis for rate limits; None means in-process memory (fine for a single dev process).
    redis_url: str | None = None
    # Sign-up rate limits ("limits" strings: "20/hour", "3/day", "5 per 10 minutes"): per client IP, and per
    # address for every attempt (known or not, so a 429 reveals nothing). Keys live under the prefix.
    signup_per_ip: str = "20/hour"
    confirm_per_address: str = "3/day"
    ratelimit_prefix: str = "alerts-ratelimit"

    email_backend: Literal["file", "memory", "sendgrid", "smtp"] = "file"
    outbox_dir: Path = VAR_DIR / "outbox"
    base_url: str = "http://localhost:8000"
    secret_key: str = PLACEHOLDER_SECRET
    from_email: str = "alerts@example.org"
    from_name: str = "Trial alerts"
    site_name: str = "Trial alerts"
    ingest_token: str | None = None
    ops_token: str | None = None

    batch_size: int = Field(default=1000, ge=1, le=1000)
    # A fan-out creates its delivery rows in chunks of subscribers, each committed and queued for sending
    # as soon as it exists: the first small (first emails leave quickly), the rest larger (fewer commits).
    fanout_first_chunk: int = Field(default=2000, ge=1)
    fanout_chunk_size: int = Field(default=10_000, ge=1)
    confirm_max_age_s: int = Field(default=7 * 24 * 3600, gt=0)
    # A claimed batch not finished within this time is considered lost (worker died) and re-queued.
    send_lease_s: int = Field(default=120, gt=0)
    # Maintenance (Celery beat): queued work untouched this long is re-queued (lost broker message).
    stale_queued_s: int = Field(default=900, gt=0)
    pending_expiry_days: int = Field(default=14, gt=0)
    retention_days: int = Field(default=180, gt=0)
    maintenance_interval_s: float = Field(default=60.0, gt=0)
    # How often beat runs the digest schedule tick (alerts.digests.schedule): a digest leaves at most this
    # long after its window closes. Windows close on the hour, or the half or quarter hour in zones such as
    # America/St_Johns or Asia/Kathmandu, so a minute is plenty.
    digest_tick_s: float = Field(default=60.0, gt=0)
    # A digest whose entries and links fit in this many bytes of SendGrid substitutions (10,000 per
    # recipient, compact JSON) travels packed with up to 999 others in one request; a larger one is a
    # message of its own. 0 sends every digest not identical to another alone (alerts.digests.send).
    digest_pack_limit_bytes: int = Field(default=10_000, ge=0, le=10_000)
    # First retry of a failed send waits about this long; each further retry doubles it (capped at 300 s).
    send_retry_base_s: float = Field(default=2.0, gt=0)

    sendgrid_api_key: str | None = None
    sendgrid_host: str = "https://api.sendgrid.com"
    sendgrid_timeout_s: float = Field(default=10.0, gt=0)
    sendgrid_webhook_public_key: str | None = None
    sendgrid_webhook_max_age_s: int = Field(default=600, ge=0)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = Field(default=30.0, gt=0)

    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("signup_per_ip", "confirm_per_address")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        parse(value)  # ValueError names the problem
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        if value.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; plain postgresql:// would pick psycopg2.
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        if self.env != "dev" and self.secret_key == PLACEHOLDER_SECRET:
            raise ValueError("ALERTS_SECRET_KEY is still the placeholder; set a long random value")
        if len(self.secret_key) < 16:
            raise ValueError("ALERTS_SECRET_KEY must be at least 16 characters")
        if self.email_backend == "sendgrid" and not self.sendgrid_api_key:
            raise ValueError("ALERTS_EMAIL_BACKEND=sendgrid needs ALERTS_SENDGRID_API_KEY")
        return self


def environment(settings: Settings) -> dict[str, str]:
    """These settings as ALERTS_* variables, for a child process (a worker) that must see the same ones."""
    values: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        values[f"ALERTS_{name.upper()}"] = text
    return values


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning pydantic's error into one readable line per bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"ALERTS_{where.upper()}" if err["loc"] else where
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
