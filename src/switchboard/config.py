"""One frozen settings object, built once at the edge from file, environment and flags.

Everything configurable is a field of :class:`Settings` with a documented
default, so the whole surface is in one place (``docs/reference/config.md``).
Sources, later ones winning: defaults, a TOML file, ``SWITCHBOARD_*``
environment variables, command-line flags. Every value is validated before
anything listens, with an error that names the key and the source; unknown
keys are errors, not silently ignored typos. ``repr()`` masks passwords in URLs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .core.limits import KindLimit, Limits
from .errors import ConfigError

__all__ = ["ENV_PREFIX", "PROCESS_ENV", "Settings", "mask_url"]

ENV_PREFIX = "SWITCHBOARD_"
PROCESS_ENV = frozenset({"SWITCHBOARD_PURE_PYTHON"})
"""Variables read by the process itself, not settings: ``SWITCHBOARD_PURE_PYTHON=1`` makes the
relay run its pure-Python core (read when switchboard.relay.connection is imported)."""


_USERINFO_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|pass|pwd)=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide the password of a URL (user-info or ``password=`` query), for logs and repr.

    Works on text, not a parse, so even a malformed URL is masked and this never raises.
    """
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a switchboard process. Defaults serve one small company."""

    data_dir: Path = Path("var")
    """Where the embedded database, generated certificates and spool live."""
    bind: str = "127.0.0.1"
    """Address both listeners bind to. Use 0.0.0.0 to serve other machines."""
    public_host: str = "localhost"
    """Host name clients use; printed in URLs and put in the generated certificate."""
    relay_port: int = 8443
    """wss listener for meeting clients (0 picks a free port)."""
    api_port: int = 8444
    """https listener for the control and records API (0 picks a free port)."""
    database_url: str = ""
    """Store backend by scheme; empty means ``sqlite:///<data_dir>/switchboard.db``."""
    broker_url: str = "local:"
    """Broker backend by scheme; ``local:`` keeps fan-out inside this process."""
    tls_cert: Path | None = None
    """PEM certificate chain; unset means generate a local CA and certificate."""
    tls_key: Path | None = None
    """PEM private key for ``tls_cert``."""
    session_idle_timeout: float = 1800.0
    """Seconds a host session may stay unused before the host must sign in again."""
    session_max_lifetime: float = 43200.0
    """Seconds a host session lasts at most, however busy."""
    invitation_ttl: float = 86400.0
    """Default seconds an invitation stays valid."""
    invitation_max_ttl: float = 30 * 86400.0
    """Longest expiry a host may give an invitation."""
    invitation_max_uses: int = 1000
    """Most uses a host may give one invitation."""
    max_frame_bytes: int = 1 << 20
    """Largest websocket message a client may send (header and payload)."""
    max_participants: int = 500
    """Most participants in one meeting at once: admitted, reconnecting or in the lobby."""
    max_connections: int = 10_000
    """Most websocket connections this process holds; more get HTTP 503 at the upgrade."""
    join_timeout: float = 10.0
    """Seconds a new connection has to complete TLS, the upgrade and its join."""
    ping_interval: float = 20.0
    """Seconds between keepalive pings; a client silent for two intervals is closed."""
    write_buffer_limit: int = 4 << 20
    """Bytes queued to one receiver before it is closed as too slow (close 4508)."""
    socket_send_buffer: int = 128 * 1024
    """Kernel send buffer per participant socket (0: the kernel's autotuning). Small keeps
    a slow receiver's backlog where the drop policy sees it."""
    tls_transport: str = "aiofastnet"
    """The relay listener's TLS transport: ``aiofastnet`` (OpenSSL driven from Cython,
    measured cheaper per delivery) or ``asyncio`` (the event loop's own). Same TLS
    context, versions and ciphers either way."""
    reconnect_grace: float = 30.0
    """Seconds a dropped participant keeps its seat and role; 0 ends it at once."""
    drop_video_bytes: int = 256 * 1024
    """Bytes queued to a receiver above which its video frames are dropped."""
    drop_screen_bytes: int = 512 * 1024
    """Bytes queued to a receiver above which its screen frames are dropped."""
    drop_audio_bytes: int = 1024 * 1024
    """Bytes queued to a receiver above which its audio frames are dropped (last)."""
    max_document_bytes: int = 64 << 20
    """Largest document one share may carry, all chunks together."""
    max_chat_bytes: int = 16 * 1024
    """Largest chat payload."""
    max_poll_bytes: int = 64 * 1024
    """Largest poll payload."""
    max_media_bytes: int = 256 * 1024
    """Largest media frame payload."""
    rate_chat: float = 10.0
    """Chat frames per second per participant (bursts of twice that are allowed)."""
    rate_poll: float = 20.0
    """Poll frames per second per participant."""
    rate_document: float = 1000.0
    """Document frames (chunks, page turns, annotations) per second per participant."""
    rate_media: float = 400.0
    """Media frames per second per participant, all tracks together."""
    rate_control: float = 20.0
    """Control requests per second per participant."""
    node_id: str = ""
    """This relay node's name in records; empty means one made up and kept in
    ``<data_dir>/node-id``. It must stay the same across restarts: a node closes
    the meetings *it* left open when it crashed."""
    checkpoint_interval: float = 30.0
    """Seconds between checkpoints of each live meeting's record (what a crash can lose)."""
    meeting_idle_timeout: float = 4 * 3600.0
    """Seconds without a join or a switched frame after which a meeting ends (idle_timeout)."""
    webhook_url: str = ""
    """Billing webhook (https only): each final record is POSTed there, signed; empty: off."""
    webhook_secret: str = ""
    """Shared secret of the webhook's HMAC-SHA256 signature. Never printed."""
    webhook_ca_file: Path | None = None
    """CA bundle that signs the webhook receiver's certificate (default: the system's)."""
    webhook_retry_base: float = 1.0
    """First retry delay of a failed delivery; it doubles per attempt."""
    webhook_retry_max: float = 300.0
    """Longest delay between delivery attempts."""
    self_signup: bool = False
    """Let people create host accounts with POST /v1/accounts (email verified by the hook)."""
    verification_hook: str = ""
    """Command run for each self-signup; gets JSON (email, link) on stdin and sends the mail.
    Needed when self_signup is on; no mail server is bundled."""
    account_retention_days: float = 90.0
    """Days a deleted account can still be restored before its personal data is purged."""
    support_max_ttl: float = 4 * 3600.0
    """Longest a support invitation may stay valid (seconds)."""
    signin_throttle_base: float = 1.0
    """Seconds of wait after the first failed sign-in of an account or address; doubles."""
    signin_throttle_max: float = 900.0
    """Longest sign-in wait."""
    log_format: str = "text"
    """text (key=value) or json (one object per line). No format ever holds content."""
    client_ip_logging: str = "truncated"
    """full, truncated (IPv4 /24, IPv6 /48) or none: how client addresses appear in logs."""
    password_hash_concurrency: int = 2
    """Argon2 hashes computed at once, so a burst of sign-ins cannot starve switching."""
    log_level: str = "info"
    """debug, info, warning or error. No level ever logs frame content."""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def effective_database_url(self) -> str:
        """The store URL after applying the embedded default."""
        return self.database_url or f"sqlite:///{self.data_dir / 'switchboard.db'}"

    @property
    def tls_dir(self) -> Path:
        """Where generated TLS material lives."""
        return self.data_dir / "tls"

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name.endswith("_url") and isinstance(value, str):
                value = mask_url(value)
            elif f.name.endswith("_secret") and value:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def load(
        cls,
        *,
        config_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build and validate settings from all sources. Raise :class:`ConfigError`."""
        raw: dict[str, tuple[Any, str]] = {}
        if config_file is not None:
            try:
                with config_file.open("rb") as fh:
                    data = tomllib.load(fh)
            except FileNotFoundError:
                raise ConfigError(f"config file {config_file} does not exist") from None
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"config file {config_file}: {exc}") from None
            for key, value in data.items():
                raw[key] = (value, f"{config_file}")
        env = os.environ if environ is None else environ
        for name, value in env.items():
            if name.startswith(ENV_PREFIX) and name not in PROCESS_ENV:
                raw[name[len(ENV_PREFIX) :].lower()] = (value, f"${name}")
        for key, value in (overrides or {}).items():
            if value is not None:
                raw[key] = (value, f"--{key.replace('_', '-')}")
        return cls._build(raw)

    @classmethod
    def _build(cls, raw: Mapping[str, tuple[Any, str]]) -> Settings:
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        for key, (value, source) in raw.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r} (from {source})")
            values[key] = _coerce(key, value, known[key].type, source)
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        for name in ("relay_port", "api_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be between 0 and 65535, got {port}")
        if self.relay_port == self.api_port and self.relay_port != 0:
            raise ConfigError("relay_port and api_port must differ")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: no such file {path}")
        positive = (
            "session_idle_timeout",
            "session_max_lifetime",
            "invitation_ttl",
            "invitation_max_ttl",
            "invitation_max_uses",
            "max_participants",
            "max_connections",
            "join_timeout",
            "ping_interval",
            "password_hash_concurrency",
            "drop_video_bytes",
            "max_document_bytes",
            "max_chat_bytes",
            "max_poll_bytes",
            "max_media_bytes",
            "rate_chat",
            "rate_poll",
            "rate_document",
            "rate_media",
            "rate_control",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.invitation_ttl > self.invitation_max_ttl:
            raise ConfigError("invitation_ttl must not exceed invitation_max_ttl")
        if self.max_frame_bytes < 1024:
            raise ConfigError("max_frame_bytes must be at least 1024")
        if self.write_buffer_limit < self.max_frame_bytes:
            raise ConfigError("write_buffer_limit must be at least max_frame_bytes")
        for name in ("max_chat_bytes", "max_poll_bytes", "max_media_bytes"):
            if getattr(self, name) > self.max_frame_bytes:
                raise ConfigError(f"{name} must not exceed max_frame_bytes")
        for name in ("checkpoint_interval", "meeting_idle_timeout", "webhook_retry_base"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.webhook_retry_max < self.webhook_retry_base:
            raise ConfigError("webhook_retry_max must be at least webhook_retry_base")
        if self.webhook_url:
            if not self.webhook_url.startswith("https://"):
                raise ConfigError("webhook_url must be an https:// URL (TLS on every link)")
            if len(self.webhook_secret) < 16:
                raise ConfigError("webhook_secret must have at least 16 characters")
        if self.webhook_ca_file is not None and not self.webhook_ca_file.is_file():
            raise ConfigError(f"webhook_ca_file: no such file {self.webhook_ca_file}")
        if self.socket_send_buffer < 0:
            raise ConfigError("socket_send_buffer must not be negative")
        if self.reconnect_grace < 0:
            raise ConfigError("reconnect_grace must not be negative")
        if not (
            self.drop_video_bytes
            <= self.drop_screen_bytes
            <= self.drop_audio_bytes
            <= self.write_buffer_limit
        ):
            raise ConfigError(
                "need drop_video_bytes <= drop_screen_bytes <= drop_audio_bytes"
                " <= write_buffer_limit (video is dropped first, audio last)"
            )
        if self.self_signup and not self.verification_hook:
            raise ConfigError("self_signup needs a verification_hook command to send the mail")
        if self.tls_transport not in ("aiofastnet", "asyncio"):
            raise ConfigError("tls_transport must be aiofastnet or asyncio")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be text or json")
        if self.client_ip_logging not in ("full", "truncated", "none"):
            raise ConfigError("client_ip_logging must be full, truncated or none")
        for name in ("account_retention_days", "support_max_ttl", "signin_throttle_base"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.signin_throttle_max < self.signin_throttle_base:
            raise ConfigError("signin_throttle_max must be at least signin_throttle_base")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")
        scheme = self.effective_database_url.split(":", 1)[0]
        if scheme not in ("sqlite",):
            raise ConfigError(f"database_url: unsupported scheme {scheme!r} (supported: sqlite)")
        if self.broker_url.split(":", 1)[0] not in ("local",):
            raise ConfigError("broker_url: unsupported scheme (supported: local:)")

    def limits(self) -> Limits:
        """The per-participant limits these settings describe."""

        def kind(rate: float, max_bytes: int) -> KindLimit:
            return KindLimit(rate=rate, burst=max(2 * rate, 10.0), max_bytes=max_bytes)

        return Limits(
            chat=kind(self.rate_chat, self.max_chat_bytes),
            poll=kind(self.rate_poll, self.max_poll_bytes),
            document=kind(self.rate_document, self.max_frame_bytes),
            media=kind(self.rate_media, self.max_media_bytes),
            control=kind(self.rate_control, 0),
            max_document_bytes=self.max_document_bytes,
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated again."""
        settings = dataclasses.replace(self, **changes)
        settings._validate()
        return settings


_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS.update({"false": False, "0": False, "no": False, "off": False})


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Turn a file, environment or flag value into the field's type, or say why not.

    Only exact forms are accepted: an integer setting takes an integer or a
    string of digits (never ``8443.5`` cut down to 8443), a number setting an
    integer, float or numeric string; booleans, arrays, tables and dates are
    refused for both.
    """
    kind = str(annotation)
    if kind == "bool":
        if type(value) is bool:
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
    elif kind in ("Path", "Path | None"):
        if isinstance(value, str | Path) and str(value):
            return Path(value).expanduser()
        if value == "" and "None" in kind:
            return None
    elif kind == "int":
        if type(value) is int:
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
    elif kind == "float":
        if type(value) in (int, float) and math.isfinite(value):
            return float(value)
        if isinstance(value, str) and re.fullmatch(
            r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value
        ):
            return float(value)  # the pattern admits finite numbers only
    elif kind == "str":
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this function does not know
        raise ConfigError(f"setting {key!r} has an unsupported type {kind}")
    raise ConfigError(f"setting {key!r} (from {source}): {value!r:.80} is not a valid {kind}")
