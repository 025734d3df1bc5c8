"""One configuration root, read from ``BGWORKER_*`` environment variables.

Built once at the edge (CLI, app factory, tests) and passed down; nothing below this module
reads ``os.environ``. Nested groups use ``__``: ``BGWORKER_SMTP__HOST``.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bgworker.contract import callback_urls
from bgworker.contract import fairness as fair_share
from bgworker.contract.retention import RetentionSettings

ENV_PREFIX: Final = "BGWORKER_"
NAMESPACE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MIN_API_KEY_CHARS: Final = 16


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
    # Emails reuse connections: one idle this long is closed (QUIT); 0 makes a connection
    # per email. Keep it under the server's own idle timeout (often 60 s to 5 min).
    idle_seconds: float = Field(10.0, ge=0)
    # A connection is closed after this many messages: some servers limit it.
    max_messages_per_connection: int = Field(100, ge=1)


class WorkerSettings(BaseModel):
    # Jobs at once per worker process. 16: async handlers wait on I/O, and more of them at
    # once lets a worker claim, finish and publish them in batches (BENCHMARKS.md, issue 22).
    concurrency: int = Field(16, ge=1, le=1000)
    # Plain `def` handlers at once, each on a thread of its own (the GIL is shared). A worker
    # whose handlers are all plain def takes only this many jobs (the lower of the two).
    handler_threads: int = Field(4, ge=1, le=1000)
    # A claimed job holds a lease in PostgreSQL; the worker's lease keeper (a thread) renews
    # it every third of it.
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
    # the SMTP and webhook timeouts, or a slow send could be repeated by a second dispatcher
    # (an email on a connection gone stale may wait out one SMTP timeout before its retry).
    outbox_claim_seconds: float = Field(120.0, gt=0)
    drain_timeout_seconds: float = Field(60.0, ge=0)
    # A queued request unclaimed this long, or a retrying one this long past its next run,
    # has lost its message (delivery limit, broker failure, a removed dead letter): the
    # reaper republishes it, at most once per this period. Keep it above the longest wait
    # a healthy backlog causes; an early republish only costs a duplicate message.
    recovery_grace_seconds: float = Field(600.0, gt=0)
    # A retrying request this long past its next run while the work queue holds no ready
    # message has lost its way back (after a node loss a retry queue's dead-letter worker
    # can hold retries for minutes): the reaper republishes it without waiting out the
    # grace above. With messages waiting in the queue the retry may be among them, so the
    # grace applies. 0: never sooner than the grace.
    stranded_retry_seconds: float = Field(30.0, ge=0, allow_inf_nan=False)
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
    # How long a requester's "my files" link (emailed on request and in every email's
    # footer) lives; MAX_AGE_SECONDS, when set, can only shorten it.
    my_files_seconds: int = Field(7 * 86400, gt=0)

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
    # Reverse proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For is
    # believed: the console's login throttle counts per client address, the right-most one
    # in that header that is not a listed proxy. Empty: the connection's peer address.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)

    # Keys of POST /requests (`Authorization: Bearer <key>`), comma-separated: several at
    # once let a key be rotated without downtime. Unset: no POST /requests, and the server
    # never connects to RabbitMQ.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # The requester's "my files" page: the most emails of one kind it sends for one file (a
    # resend) or one address (its link, POST /my-files): one per this many seconds.
    my_files_mail_interval_seconds: int = Field(300, ge=0)
    # Failed and cancelled requests stay listed on the page this long after they ended.
    my_files_recent_seconds: int = Field(3 * 86400, ge=0)

    _split = field_validator("api_keys", "trusted_proxies", mode="before")(_split_list)

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        # A short key is guessable over HTTP; 16 characters of a random token are not.
        if any(len(key.get_secret_value()) < MIN_API_KEY_CHARS for key in value):
            raise ValueError(f"every API key needs at least {MIN_API_KEY_CHARS} characters")
        return value


MIB: Final = 1024 * 1024


class StorageSettings(BaseModel):
    # local: files under storage_dir (one host, or a volume every host shares); s3: any
    # S3-compatible object store, shared by any number of hosts (docs/links-and-pages.md,
    # "Storage").
    backend: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None  # required with backend=s3
    # None: AWS itself; else MinIO, SeaweedFS, Ceph RGW, Garage, R2... (http://host:port).
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # None: botocore's own chain (AWS_* variables, profile, instance or pod role).
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # Every key goes under this prefix ("bgworker/"): `clean` touches nothing outside it.
    s3_prefix: str = ""
    # Bytes per multipart part: a running upload holds one part-sized buffer. S3 wants 5 MiB
    # at least (but for the last part) and at most 10,000 parts, so files up to ~48 GiB at
    # 5 MiB; raise it for larger files, at the cost of memory per running upload.
    s3_part_size_bytes: int = Field(5 * MIB, ge=5 * MIB, le=5 * 1024 * MIB)
    # Lifetime of a presigned download URL (download_mode=redirect): the link's own check
    # is done by then, so a few minutes suffice to start the download.
    presign_seconds: int = Field(300, gt=0, le=7 * 24 * 3600)
    # Connect and per-read timeout of one S3 call (botocore's default is 60 s each, times
    # its 5 attempts). A store that hangs then fails a download with 503 and an upload's
    # attempt within about 5 x this, instead of holding them for minutes.
    s3_timeout_seconds: float = Field(10.0, gt=0, le=600, allow_inf_nan=False)

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        # botocore would raise a bare ValueError (a traceback at start) on anything else.
        if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http:// or https:// URL, like http://127.0.0.1:8333")
        return value

    @model_validator(mode="after")
    def _check_s3(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("BGWORKER_STORAGE__BACKEND=s3 needs BGWORKER_STORAGE__S3_BUCKET")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both BGWORKER_STORAGE__S3_ACCESS_KEY_ID and "
                "BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY, or neither (botocore's own chain)"
            )
        return self


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


class WebhookSettings(BaseModel):
    # Receives FileReady / FileFailed of every request as signed POSTs (Standard Webhooks);
    # a request's own callback_url replaces it for that request.
    url: str | None = None
    # Standard Webhooks secrets, "whsec_<base64>", comma-separated: each signs every webhook
    # (one `v1,` signature per secret), so a receiver can move to a new one (rotation).
    secret: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Attempts before a webhook is given up (its effect shows status given_up); the delays
    # between them are worker.outbox_retry_seconds.
    max_attempts: int = Field(6, ge=1)
    # One attempt's limit, connect to response; a hanging receiver costs no more.
    timeout_seconds: float = Field(10.0, gt=0, allow_inf_nan=False)
    # Send to loopback, private, link-local and other non-public addresses (tests, an
    # internal receiver); otherwise such a URL is refused when sent (SSRF).
    allow_private: bool = False

    _split = field_validator("secret", mode="before")(_split_list)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else callback_urls.check(value)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            webhook_key(secret)
        return value


def webhook_key(secret: SecretStr) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (Standard Webhooks)."""
    text = secret.get_secret_value()
    if not text.startswith("whsec_"):
        raise ValueError("a webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be whsec_ then base64") from None
    # The spec asks for 24 to 64 random bytes; shorter is refused, longer is harmless.
    if len(key) < 24:
        raise ValueError("a webhook secret must hold at least 24 bytes (Standard Webhooks)")
    return key


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/bgworker")
    # "transaction": DATABASE_URL is a pooler in transaction mode (PgBouncer); asyncpg's
    # statement cache is then off everywhere, as the next transaction may run on a server
    # connection that never saw the statement. "none": PostgreSQL or a session-mode pooler.
    database_pooler: Literal["none", "transaction"] = "none"
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
    # every line about a job (bgworker.observe.logs); "text" for people at a terminal.
    log_format: Literal["text", "json"] = "text"
    # `worker` and `serve` wait this long at start for RabbitMQ, PostgreSQL and storage while
    # they refuse, reset or time out, one line per retry, then exit 69. A name that does not
    # resolve or refused credentials exit at once. 0: no waiting.
    startup_retry_seconds: float = Field(60.0, ge=0, allow_inf_nan=False)

    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    fairness: fair_share.FairnessSettings = Field(default_factory=fair_share.FairnessSettings)

    _split = field_validator("handlers", mode="before")(_split_list)

    @model_validator(mode="after")
    def _check_download_mode(self) -> Settings:
        mode, backend = self.web.download_mode, self.storage.backend
        if mode == "redirect" and backend != "s3":
            raise ValueError(
                "BGWORKER_WEB__DOWNLOAD_MODE=redirect needs BGWORKER_STORAGE__BACKEND=s3 "
                "(a presigned URL points into object storage)"
            )
        if mode == "accel" and backend != "local":
            raise ValueError(
                "BGWORKER_WEB__DOWNLOAD_MODE=accel needs BGWORKER_STORAGE__BACKEND=local "
                "(nginx sends files from the storage directory)"
            )
        return self

    def download_mode(self) -> Literal["stream", "redirect", "accel"]:
        """The mode in force: auto is redirect for s3, stream for local."""
        if self.web.download_mode == "auto":
            return "redirect" if self.storage.backend == "s3" else "stream"
        return self.web.download_mode

    def summary(self) -> str:
        """What a process runs with, as one line of ``key=value`` for its start-up log:
        where things go and how, never a secret (services by host, port and name only)."""
        s = self.storage
        if s.backend == "s3":
            endpoint = f"@{_address(s.s3_endpoint_url)}" if s.s3_endpoint_url else ""
            where = f"s3:{s.s3_bucket}{endpoint}"
        else:
            where = f"local:{self.storage_dir}"
        parts = {
            "namespace": self.namespace,
            "queue": self.queue_type,
            "concurrency": self.worker.concurrency,
            "storage": where,
            "download_mode": self.download_mode(),
            "link_mode": self.tokens.link_mode,
            "broker": _address(self.amqp_url.get_secret_value(), path=True),
            "database": _address(self.database_url.get_secret_value(), path=True),
            "pooler": self.database_pooler,
            "smtp": f"{self.smtp.host}:{self.smtp.port}",
            "webhook_url": _address(self.webhooks.url) if self.webhooks.url else "unset",
            "metrics": f"{self.metrics.host}:{self.metrics.port}" if self.metrics.port else "off",
            "tracing": "on" if self.tracing.enabled else "off",
        }
        return " ".join(f"{key}={value}" for key, value in parts.items())

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not NAMESPACE_RE.fullmatch(value):
            raise ValueError("namespace must match " + NAMESPACE_RE.pattern)
        return value


def env_names() -> list[tuple[str, str]]:
    """(variable, default) pairs for every setting, for ``--help`` and docs/reference.md."""
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


def _address(url: str | None, *, path: bool = False) -> str:
    """``host:port`` of a URL (``/path`` too when asked: a vhost, a database name), never
    its user, password or query; a webhook's path may hold a token."""
    parts = urlsplit(url or "")
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{host}{port}{parts.path.rstrip('/') if path else ''}"
