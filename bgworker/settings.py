"""One configuration root, read from ``BGWORKER_*`` environment variables.

Built once at the edge (CLI, app factory, tests) and passed down; nothing below this module
reads ``os.environ``. Nested groups use ``__``: ``BGWORKER_SMTP__HOST``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX: Final = "BGWORKER_"
NAMESPACE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def _split_list(value: object) -> object:
    # Comma-separated in the environment, a list in code.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1025
    username: str | None = None
    password: SecretStr | None = None
    use_tls: bool = False
    start_tls: bool | None = None  # None: aiosmtplib upgrades when the server offers it
    sender: str = "bgworker <bgworker@localhost>"
    timeout_seconds: float = 30.0


class WorkerSettings(BaseModel):
    concurrency: int = Field(4, ge=1, le=1000)
    # A claimed job holds a lease in PostgreSQL; the heartbeat renews it every third of it.
    lease_seconds: float = Field(60.0, gt=0)
    # How often expired leases (dead workers) are looked for and their requests re-queued.
    reap_interval_seconds: float = Field(10.0, gt=0)
    # A delivery whose claim keeps failing (the database away) is retried in place this long,
    # then goes back to the queue; keeps held deliveries well under the broker's consumer
    # timeout. No delivery waits for a slot: one is taken only into a free slot (intake).
    hold_timeout_seconds: float = Field(300.0, gt=0)
    # Delay tiers for retries; attempt n waits retry_delays[min(n-1, len-1)] seconds.
    retry_delays_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 300.0]
    )
    max_attempts: int = Field(4, ge=1)
    # Outbox (emails, FileReady/FileFailed events): sweep interval and retry backoff.
    outbox_interval_seconds: float = Field(5.0, gt=0)
    outbox_retry_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0]
    )
    # A dispatcher owns a claimed effect this long; then another may retry it. Keep it above
    # the SMTP timeout, or a slow send could be repeated by a second dispatcher.
    outbox_claim_seconds: float = Field(120.0, gt=0)
    drain_timeout_seconds: float = Field(60.0, ge=0)
    # A queued request unclaimed this long, or a retrying one this long past its next run,
    # has lost its message (delivery limit, broker failure, a removed dead letter): the
    # reaper republishes it, at most once per this period. Keep it above the longest wait
    # a healthy backlog causes; an early republish only costs a duplicate message.
    recovery_grace_seconds: float = Field(600.0, gt=0)
    # Default time limit of a handler call; a file type may set its own
    # (`@registry.handler("x", time_limit=30)`). 0: no limit.
    time_limit_seconds: float = Field(3600.0, ge=0, allow_inf_nan=False)
    # Log a warning naming the running handler when the event loop is blocked this long
    # (an `async def` handler calling blocking code). 0: no watchdog.
    loop_block_warning_seconds: float = Field(1.0, ge=0, allow_inf_nan=False)

    _split = field_validator("retry_delays_seconds", "outbox_retry_seconds", mode="before")(
        _split_list
    )


class TokenSettings(BaseModel):
    # Newest key last: it signs; every key verifies (rotation).
    secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    salt: str = "bgworker.download"
    # A link lives as long as its file (the file's expires_at); set this only to shorten it.
    max_age_seconds: int | None = Field(None, gt=0)
    # Clocks of workers (which sign) and servers (which check) may disagree by this much: a
    # token "issued" up to this far in the future is accepted, and max_age is extended by it.
    clock_skew_seconds: float = Field(60.0, ge=0, allow_inf_nan=False)
    # auto: links bound to the requester's id only when the server can check who is calling
    # (web.identity_header set); bound: always (a server with an identity callable in code);
    # general: never. Worker and server read the same setting, so they agree.
    link_mode: Literal["auto", "general", "bound"] = "auto"

    _split = field_validator("secret_keys", mode="before")(_split_list)


class WebSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    # Base of the links put in emails and events.
    public_url: str = "http://127.0.0.1:8080"
    # Header set by a trusted auth proxy with the caller's user id (requester-bound links).
    identity_header: str | None = None
    chunk_size: int = Field(256 * 1024, ge=4096)
    # How /download hands out the bytes once the link is checked: "stream" them from this
    # process, "redirect" to a presigned URL (object storage), or "accel": an empty answer
    # with X-Accel-Redirect so nginx in front sends the file (local storage; see
    # deploy/nginx/bgworker.conf). "auto": redirect for object storage, stream for local.
    download_mode: Literal["auto", "stream", "redirect", "accel"] = "auto"
    # The nginx `internal` location that maps to BGWORKER_STORAGE_DIR (download_mode=accel).
    accel_prefix: str = Field("/_bgworker_files/", pattern=r"^/[A-Za-z0-9._~/-]*/$")
    # Processes of `bgworker serve` sharing the port (SO_REUSEPORT); the parent supervises.
    workers: int = Field(1, ge=1, le=256)
    # The admin console (/admin/) is mounted only when a password is set.
    admin_user: str = "admin"
    admin_password: SecretStr | None = None
    admin_session_seconds: int = Field(8 * 3600, gt=0)
    # Signs the console's login-form CSRF token; unset: a random key made by the first
    # server and stored in PostgreSQL. Never the password (OWASP session guidance).
    admin_secret_key: SecretStr | None = None
    # Mark the console's cookies Secure even over plain HTTP: a TLS proxy is in front.
    admin_secure_cookies: bool = False


class MetricsSettings(BaseModel):
    # A worker serves its Prometheus metrics on http://host:port/metrics when a port is set
    # (`bgworker worker --metrics-port` overrides it); the server has its own /metrics.
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)
    # How often a worker samples queue depth, outbox backlog and requests by status.
    interval_seconds: float = Field(15.0, gt=0, allow_inf_nan=False)


class TracingSettings(BaseModel):
    # OpenTelemetry spans from publish to download (the `tracing` extra); exported over
    # OTLP/HTTP as the standard OTEL_EXPORTER_OTLP_* variables say.
    enabled: bool = False
    service_name: str = "bgworker"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/bgworker")
    # Prefix of every exchange and queue: two deployments (or test runs) never collide.
    namespace: str = "bgworker"
    # Quorum queues (replicated, RabbitMQ 3.8+) unless the broker cannot have them.
    queue_type: Literal["quorum", "classic"] = "quorum"
    storage_dir: Path = Path("var/files")
    # Import paths of handler registries, "module:attribute".
    handlers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["bgworker.examples:registry"]
    )
    log_level: str = "INFO"
    # Templates here override the shipped ones at the same relative path
    # (email/ready.subject.j2, pages/page.html.j2): bgworker/languages.py.
    template_dir: Path | None = None
    # "json": one JSON object per line, with request_id, file_type, attempt and worker_id on
    # every line about a job (bgworker.logs); "text" for people at a terminal.
    log_format: Literal["text", "json"] = "text"

    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    _split = field_validator("handlers", mode="before")(_split_list)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not NAMESPACE_RE.fullmatch(value):
            raise ValueError("namespace must match " + NAMESPACE_RE.pattern)
        return value


def env_names() -> list[tuple[str, str]]:
    """(variable, default) pairs for every setting, for ``--help`` and the README."""
    rows: list[tuple[str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}__")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):
                default = "(secret)" if default.get_secret_value() else ""
            rows.append((f"{prefix}{name.upper()}", str(default)))

    walk(Settings, ENV_PREFIX)
    return rows
