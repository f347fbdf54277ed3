"""Settings, read once from the environment (and a .env file) at start-up, never at import."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.changes import ChangeType
from service.errors import ConfigError
from service.protocol import ConnectionLimits

_SPLIT = re.compile(r"[\s,]+")
SVIX_MAX_TOLERANCE = 300  # svix's verify() enforces its own fixed five-minute window


@dataclass(frozen=True, slots=True)
class Subscription:
    """An internal service that is pushed every change (of ``types``; all when empty)."""

    name: str
    url: str
    secret: str  # whsec_<base64>, the Standard Webhooks signing secret
    types: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Subscription(name={self.name!r}, url={self.url!r})"


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """One signing secret and a stable, non-secret id for it (logged, stored, in metrics)."""

    value: str
    id: str

    def __repr__(self) -> str:
        return f"WebhookSecret(id={self.id!r})"


def _split(raw: str) -> list[str]:
    return [part for part in _SPLIT.split(raw.strip()) if part]


def parse_webhook_secrets(raw: str) -> tuple[WebhookSecret, ...]:
    """``whsec_<base64>`` secrets separated by commas or spaces; raises ValueError if malformed."""
    parts = _split(raw)
    if not parts:
        raise ValueError("at least one whsec_... secret is required")
    secrets = []
    for position, part in enumerate(parts, start=1):
        if not part.startswith("whsec_"):
            raise ValueError(f"secret #{position} does not start with 'whsec_'")
        encoded = part.removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"secret #{position} is not valid base64 after 'whsec_'") from None
        if not key:
            raise ValueError(f"secret #{position} is empty after 'whsec_'")
        secrets.append(WebhookSecret(part, "whsec:" + hashlib.sha256(key).hexdigest()[:12]))
    return tuple(secrets)


class Settings(BaseSettings):
    """Every setting, with its default. ``deploy/env.example`` lists the same."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    codat_webhook_secrets: SecretStr = Field(default=SecretStr(""))
    # repr=False: a PostgreSQL URL may carry a password.
    database_url: str = Field(default="sqlite:///./codat-hooks.db", repr=False)
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=SVIX_MAX_TOLERANCE)
    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Full rights: the query API, the on-call page, and onboarding (create, unlink).
    service_api_tokens: SecretStr = Field(default=SecretStr(""))
    # Read only: the query API and the on-call page.
    service_read_tokens: SecretStr = Field(default=SecretStr(""))
    # Clients reach the service over https (a TLS-terminating ingress or proxy): the on-call
    # session cookie is then marked Secure.
    service_behind_tls: bool = False
    # Per connection (service/protocol.py): the request head must arrive within this long of its
    # first byte, the body within this long of the head; a connection with no request under way
    # is closed after the idle timeout.
    http_head_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    http_idle_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    # Beyond this many open connections a request is answered 503 (the probes still answer);
    # lowered at start-up to fit the process's file-descriptor limit.
    http_max_connections: int = Field(default=1000, ge=8, le=1_000_000)
    # SQLite durability: FULL survives power loss (WAL fsync on every group commit); NORMAL
    # survives a process kill but may lose the last commits on power loss.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # How long a SQLite write waits for a lock held by another process (the CLI) before 503.
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)
    db_pool_size: int = Field(default=8, ge=1, le=100)
    # PostgreSQL: how many batches of queued deliveries are written at once (group commit). One
    # measured as well as two and better than four: each batch is then as large as it can be,
    # and takes one round trip.
    db_write_partitions: int = Field(default=1, ge=1, le=32)
    db_retry_after_seconds: int = Field(default=5, ge=1)
    log_level: str = "INFO"

    # Codat
    codat_api_key: SecretStr = Field(default=SecretStr(""))
    codat_base_url: str = "https://api.codat.io"
    codat_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # After 3 Codat calls in a row fail for want of Codat (unreachable, timed out, 5xx), Codat
    # jobs wait this long before one tries again (doubling, up to 60 times this); 0: never wait.
    codat_breaker_seconds: float = Field(default=1.0, ge=0, le=60)
    bill_pay_mode: Literal["async", "sync"] = "async"

    # Follow-up work (the outbox worker)
    worker_enabled: bool = True  # run a worker inside `codat-hooks serve`
    worker_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    worker_stop_grace_seconds: float = Field(default=20.0, ge=0)
    # A standalone worker (`codat-hooks worker`) lowers its CPU priority by this much, so that
    # receivers sharing its machine come first under a storm (an embedded worker yields instead).
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Jobs a worker claims together and runs at once: their Codat calls overlap and their writes
    # share commits. Codat allows 10 concurrent requests per active company; 4 leaves room for
    # the onboarding API and for a second worker.
    worker_concurrency: int = Field(default=4, ge=1, le=10)
    outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    outbox_lease_seconds: float = Field(default=60.0, gt=0)
    outbox_backoff_base_seconds: float = Field(default=2.0, gt=0)
    outbox_backoff_max_seconds: float = Field(default=3600.0, gt=0)

    # Push: a JSON array of {"name", "url", "secret", "types"?}; each change goes to each.
    feed_subscriptions: SecretStr = Field(default=SecretStr(""))

    @field_validator("feed_subscriptions")
    @classmethod
    def _subscriptions_are_well_formed(cls, value: SecretStr) -> SecretStr:
        parse_subscriptions(value.get_secret_value())
        return value

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return parse_subscriptions(self.feed_subscriptions.get_secret_value())

    @field_validator("codat_webhook_secrets")
    @classmethod
    def _secrets_are_well_formed(cls, value: SecretStr) -> SecretStr:
        # Empty is allowed here (the CLI needs no secret); the receiver refuses to start without.
        if _split(value.get_secret_value()):
            parse_webhook_secrets(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+asyncpg://",
                                 "postgres://")):
            raise ValueError("must be a sqlite:///PATH or postgresql://... URL")
        return value

    @field_validator("codat_base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        check_codat_base_url(value)
        return value

    @property
    def webhook_secrets(self) -> tuple[WebhookSecret, ...]:
        """The signing secrets; raises ConfigError naming the variable when there are none."""
        try:
            return parse_webhook_secrets(self.codat_webhook_secrets.get_secret_value())
        except ValueError as exc:
            problem = str(exc)  # our own message: it never quotes a secret
        raise ConfigError(f"invalid configuration: CODAT_WEBHOOK_SECRETS: {problem}")

    @property
    def codat_api_key_value(self) -> str:
        """The Codat API key; raises ConfigError naming the variable when it is not set."""
        key = self.codat_api_key.get_secret_value().strip()
        if not key:
            raise ConfigError("invalid configuration: CODAT_API_KEY: required to call Codat")
        return key

    @property
    def api_tokens(self) -> frozenset[str]:
        """Tokens with full rights (SERVICE_API_TOKENS)."""
        return frozenset(_split(self.service_api_tokens.get_secret_value()))

    @property
    def read_tokens(self) -> frozenset[str]:
        """Read-only tokens (SERVICE_READ_TOKENS)."""
        return frozenset(_split(self.service_read_tokens.get_secret_value()))

    @property
    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(head_timeout=self.http_head_timeout_seconds,
                                body_timeout=self.http_body_timeout_seconds,
                                idle_timeout=self.http_idle_timeout_seconds,
                                max_connections=self.http_max_connections,
                                hard_cap=self.http_max_connections)

    @model_validator(mode="after")
    def _token_sets_are_disjoint(self) -> Self:
        if self.api_tokens & self.read_tokens:
            raise ValueError("SERVICE_READ_TOKENS: a token may not also be in "
                             "SERVICE_API_TOKENS (which gives it full rights)")
        return self


_CHANGE_TYPES = frozenset(ChangeType)
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def parse_subscriptions(raw: str) -> tuple[Subscription, ...]:
    """FEED_SUBSCRIPTIONS; raises ValueError naming what is wrong (never quoting a secret)."""
    if not raw.strip():
        return ()
    try:
        items = json.loads(raw)
    except ValueError:
        raise ValueError("must be a JSON array of {name, url, secret, types?}") from None
    if not isinstance(items, list):
        raise ValueError("must be a JSON array of {name, url, secret, types?}")
    found: dict[str, Subscription] = {}
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not {"name", "url", "secret"} <= set(item) \
                or not set(item) <= {"name", "url", "secret", "types"}:
            raise ValueError(f"subscription #{position}: needs name, url, secret (and may have "
                             "types), nothing else")
        name, url, secret, types = (item["name"], item["url"], item["secret"],
                                    item.get("types") or [])
        if not isinstance(name, str) or _NAME.fullmatch(name) is None or name in found:
            raise ValueError(f"subscription #{position}: name must be unique, lower-case "
                             "letters, digits and dashes")
        if not isinstance(url, str):
            raise ValueError(f"subscription {name}: url must be a string")
        try:
            check_endpoint_url(url, "the changes")
        except ValueError as exc:
            raise ValueError(f"subscription {name}: url {exc}") from None
        if not isinstance(secret, str):
            raise ValueError(f"subscription {name}: secret must be a whsec_... string")
        try:
            parse_webhook_secrets(secret)
        except ValueError:
            raise ValueError(f"subscription {name}: secret must be one whsec_<base64>") from None
        if not isinstance(types, list) or not set(types) <= _CHANGE_TYPES:
            raise ValueError(f"subscription {name}: types must be a list of "
                             f"{', '.join(sorted(_CHANGE_TYPES))}")
        found[name] = Subscription(name, url, secret, frozenset(types))
    return tuple(found.values())


def check_codat_base_url(url: str) -> None:
    """Codat's key travels with every call: only over https, or plain http to this machine
    (the sandbox). Raises ValueError otherwise."""
    check_endpoint_url(url, "the Codat API key")


def check_endpoint_url(url: str, what: str) -> None:
    """https, or plain http to a loopback host only; raises ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("must be an https:// URL (http:// only for a loopback host)")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"must be https:// ({what} would go in clear to {host}); "
                         "http:// is allowed only for a loopback host")


def load_settings(**overrides: object) -> Settings:
    """Build the settings once; a bad value stops start-up with a message naming the variable."""
    problems = []
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {message}")
    # Raised outside the except block: the validation error (which quotes the input, secrets
    # included) must not travel along as this error's __context__.
    raise ConfigError("invalid configuration: " + "; ".join(problems))
