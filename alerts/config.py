"""Settings, read from the environment with the ``ALERTS_`` prefix.

Defaults are the embedded ones (SQLite file, Celery's filesystem broker, emails as files) so that
``make demo`` needs no server. Production refuses to start with a placeholder secret.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRET = "dev-insecure-change-me"  # noqa: S105 - a known placeholder, refused outside dev
# Values that were never meant to be used: the built-in placeholder and .env.example's "change-me...".
PLACEHOLDER_MARK = "change-me"
# Secrets in production: at least this many characters (a random 32-character token is beyond guessing).
MIN_SECRET_CHARS = 32
VAR_DIR = Path("var")
# An origin as CSP's frame-ancestors takes it: scheme, host, optional port; nothing that could end the
# directive (";", spaces, quotes).
_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")


def _words(value: Any) -> Any:
    """ "a b,c" -> ("a", "b", "c"): list settings are written space- or comma-separated."""
    if isinstance(value, str):
        return tuple(w for w in re.split(r"[\s,]+", value) if w)
    return value


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALERTS_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    database_url: str = f"sqlite:///{VAR_DIR / 'alerts.db'}"
    # "filesystem://" is Celery's embedded broker: messages are files under broker_dir.
    broker_url: str = "filesystem://"
    broker_dir: Path = VAR_DIR / "broker"
    # Filesystem broker: a message file still unreadable (empty, not JSON) after this long is moved to
    # <broker_dir>/quarantine instead of stopping the worker (alerts.tasks.filesystem_broker).
    broker_unreadable_grace_s: float = Field(default=30.0, gt=0)
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
    # New trials announced up to this many days ago are sent to followers of a phrase whose meaning grows
    # to cover them (alerts.catchup); 0: never.
    catch_up_days: int = Field(default=30, ge=0)
    retention_days: int = Field(default=180, gt=0)
    maintenance_interval_s: float = Field(default=60.0, gt=0)
    # Celery beat touches this file after every tick (at least every 30 s): its health check reads the age.
    beat_heartbeat_file: Path | None = None
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

    # The registry watcher (alerts.watch, docs/operations.md): beat runs a pass every watch_interval_s when on.
    watch_enabled: bool = False
    watch_interval_s: float = Field(default=3600.0, gt=0)
    ctgov_url: str = "https://clinicaltrials.gov/api/v2"
    # Who to contact about our traffic, sent in the User-Agent as polite API clients do (an address or URL).
    ctgov_contact: str | None = None
    # At most this many requests per second to the registry (it asks clients to stay gentle).
    ctgov_rate_per_s: float = Field(default=1.0, gt=0)
    ctgov_timeout_s: float = Field(default=30.0, gt=0)
    # A failed request (429, 5xx, timeout, reset, broken page) is tried again this many times, waiting about
    # ctgov_retry_base_s, then twice that... (never less than the registry's Retry-After).
    ctgov_retries: int = Field(default=5, ge=0)
    ctgov_retry_base_s: float = Field(default=2.0, ge=0)
    watch_page_size: int = Field(default=1000, ge=1, le=1000)
    # Records of a page applied per transaction: bounds how long a pass holds row locks (SQLite: the
    # database's write lock, which the workers sending emails wait on).
    watch_commit_every: int = Field(default=200, ge=1)
    # The bootstrap pass stores at most this many records (the most recently updated first); 0: all of them.
    watch_bootstrap_records: int = Field(default=0, ge=0)
    # A pass holds the watcher's lock this long past its last sign of life (each page, each retry).
    watch_lock_s: int = Field(default=900, gt=0)
    # Processes applying a pass's chunks side by side (PostgreSQL; alerts.watch.lanes): about 2 ms of CPU per
    # record each. 1 applies them in the pass's own process. Each lane holds one database connection.
    watch_lanes: int = Field(default=2, ge=1, le=32)

    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    # Sites that may show the sign-up form (and every page it leads to) in a frame: CSP frame-ancestors.
    # Space- or comma-separated origins ("https://trials.example.org"); none: no site may frame any page.
    embed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Proxies whose X-Forwarded-For names the client (IPs or CIDRs, space- or comma-separated). None by
    # default: the connecting address is the client, and nobody can choose which per-IP bucket they use.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Request bodies larger than this are refused (413) before they are read: forms and the sign-up API,
    # and the producers' endpoints (POST /api/events, /webhooks/sendgrid), which carry whole trial records.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_ingest_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # PostgreSQL connections of each web process's link-page pool (alerts.web.linkstore), besides the ORM's
    # pool: a page holds one for a single statement, so a few serve hundreds of pages a second.
    web_link_pool_size: int = Field(default=4, ge=1, le=100)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("embed_origins", mode="before")
    @classmethod
    def _embed_origins(cls, value: Any) -> Any:
        origins = _words(value)
        for origin in origins:
            if not isinstance(origin, str) or not _ORIGIN.match(origin):
                raise ValueError("each origin is scheme://host[:port], e.g. https://trials.example.org")
        return tuple(o.rstrip("/") for o in origins)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: Any) -> Any:
        proxies = _words(value)
        for proxy in proxies:
            try:
                ipaddress.ip_network(str(proxy), strict=False)
            except ValueError:
                raise ValueError("each entry is an IP address or a CIDR range, e.g. 172.18.0.0/16") from None
        return tuple(str(p) for p in proxies)

    @field_validator("ctgov_url")
    @classmethod
    def _ctgov_url(cls, value: str) -> str:
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
        if self.env == "prod":
            self._production_secrets()
        if self.env != "dev" and self.secret_key == PLACEHOLDER_SECRET:
            raise ValueError("ALERTS_SECRET_KEY is still the placeholder; set a long random value")
        if len(self.secret_key) < 16:
            raise ValueError("ALERTS_SECRET_KEY must be at least 16 characters")
        if self.email_backend == "sendgrid" and not self.sendgrid_api_key:
            raise ValueError("ALERTS_EMAIL_BACKEND=sendgrid needs ALERTS_SENDGRID_API_KEY")
        return self

    def _production_secrets(self) -> None:
        """Production refuses copied placeholders and short secrets, naming every bad one at once."""
        secrets = {
            "ALERTS_SECRET_KEY": self.secret_key,
            "ALERTS_OPS_TOKEN": self.ops_token,
            "ALERTS_INGEST_TOKEN": self.ingest_token,
        }
        bad = []
        for name, value in secrets.items():
            if value is None:
                continue  # an unset token closes its endpoint
            if PLACEHOLDER_MARK in value.lower():
                bad.append(f"{name} is still a placeholder")
            elif len(value) < MIN_SECRET_CHARS:
                bad.append(f"{name} is {len(value)} characters; use at least {MIN_SECRET_CHARS} random ones")
        if self.sendgrid_api_key and PLACEHOLDER_MARK in self.sendgrid_api_key.lower():
            bad.append("ALERTS_SENDGRID_API_KEY is still a placeholder")
        if bad:
            hint = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
            raise ValueError("; ".join(bad) + f" ({hint})")


def startup_warnings(settings: Settings) -> list[str]:
    """Settings that work but leave something important off; logged at start and shown by ``alerts status``."""
    warnings = []
    if settings.email_backend == "sendgrid" and not settings.sendgrid_webhook_public_key:
        warnings.append(
            "bounces and spam reports will not be applied: ALERTS_SENDGRID_WEBHOOK_PUBLIC_KEY is unset, "
            "so the SendGrid event webhook refuses every event"
        )
    return warnings


def environment(settings: Settings) -> dict[str, str]:
    """These settings as ALERTS_* variables, for a child process (a worker) that must see the same ones."""
    values: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple | list):
            text = " ".join(str(v) for v in value)
        else:
            text = str(value)
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
