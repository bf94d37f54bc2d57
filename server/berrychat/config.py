"""Configuration: read once into one typed `Settings` object.

The file is the operators' `config.json` (see docs/server.md). Every section and key is optional
and has a safe default; unknown keys in known sections are errors (they are usually typos).
Environment variables `BERRYCHAT_<SECTION>__<KEY>` override file values, e.g.
`BERRYCHAT_SERVER__PORT=9000` or `BERRYCHAT_DATABASE__PASSWORD=secret`.
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "BERRYCHAT_"


class ConfigError(Exception):
    """One clear message naming the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key
        self.problem = problem


def _rng(lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    return {"lo": lo, "hi": hi, "choices": choices}


def opt(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple = ()) -> Any:
    return field(default=default, metadata=_rng(lo, hi, choices))


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = opt(8080, 0, 65535)
    backlog: int = opt(2048, 1, 65535)
    reuse_port: bool = False
    public_url: str = ""


@dataclass(frozen=True)
class DatabaseSettings:
    type: str = opt("sqlite", choices=("sqlite", "mysql"))
    host: str = "localhost"
    port: int = opt(3306, 1, 65535)
    user: str = "berrychat"
    password: str = ""
    # For sqlite: the database file path (relative to the working directory).
    database: str = ""
    unix_socket: str = ""
    # sqlite only: FULL = an acknowledged message survives a power cut; NORMAL = it survives a
    # process crash but the last commits may be lost on power loss (faster on SD cards).
    sqlite_synchronous: str = opt("FULL", choices=("FULL", "NORMAL"))
    pool_size: int = opt(8, 1, 200)
    connect_timeout: float = opt(5.0, 0.1, 300)
    # mysql with replicas: a user's reads go to the primary for this long after their own write
    # (at least the measured replica lag + 0.5 s), so that writers read their writes
    read_your_writes_seconds: float = opt(2.0, 0, 3600)
    # replicas further behind than this (heartbeat) are not used; reads go to the primary
    max_replica_lag_seconds: float = opt(5.0, 0.1, 3600)

    @property
    def name(self) -> str:
        if self.database:
            return self.database
        return "berrychat.db" if self.type == "sqlite" else "berrychat"


@dataclass(frozen=True)
class LimitsSettings:
    max_frame_bytes: int = opt(65536, 1024, 16 * 1024 * 1024)
    max_text_chars: int = opt(4000, 1, 1_000_000)
    max_members: int = opt(500, 2, 100_000)
    out_queue_bytes: int = opt(1 << 20, 4096, 1 << 30)
    max_connections: int = opt(20000, 1, 10_000_000)
    max_connections_per_user: int = opt(16, 1, 10_000)
    history_page: int = opt(50, 1, 500)
    recall_window_seconds: int = opt(120, 0, 10 * 365 * 86400)
    edit_window_seconds: int = opt(86400, 0, 10 * 365 * 86400)
    bad_frames_before_close: int = opt(10, 1, 10_000)
    hello_timeout_seconds: float = opt(10.0, 0.1, 3600)
    group_commit_ms: float = opt(2.0, 0, 1000)
    group_commit_max: int = opt(256, 1, 100_000)
    receipts_fanout_max_members: int = opt(100, 0, 100_000)
    http_max_body_bytes: int = opt(1 << 20, 1024, 1 << 30)
    # Rate limits (fixed windows; 0 = off). Counted across processes in Redis when enabled.
    messages_per_user: int = opt(300, 0, 10_000_000)  # stream operations per window
    messages_per_ip: int = opt(3000, 0, 10_000_000)
    message_window_seconds: float = opt(10.0, 1, 86400)
    logins_per_user: int = opt(10, 0, 10_000_000)  # login attempts per user name per window
    logins_per_ip: int = opt(60, 0, 10_000_000)
    login_window_seconds: float = opt(60.0, 1, 86400)
    registrations_per_ip: int = opt(10, 0, 10_000_000)
    registration_window_seconds: float = opt(3600.0, 1, 86400 * 7)
    # Take the client address from X-Forwarded-For (last hop) / X-Real-IP when the peer is a
    # loopback address (Nginx on the same Pi) or is listed in `trusted_proxies`.
    trust_forwarded_for: bool = True
    trusted_proxies: str = ""  # comma-separated addresses of other proxies (e.g. the LB Pi)


@dataclass(frozen=True)
class AuthSettings:
    open_registration: bool = True
    token_ttl_seconds: int = opt(30 * 86400, 60, 10 * 365 * 86400)
    min_password_length: int = opt(8, 1, 1024)
    # argon2id parameters, tuned for a Raspberry Pi 4B (see docs/server.md).
    argon2_time_cost: int = opt(2, 1, 100)
    argon2_memory_kib: int = opt(19456, 8, 4 * 1024 * 1024)
    argon2_parallelism: int = opt(1, 1, 64)
    hash_concurrency: int = opt(2, 1, 64)
    # How often live connections are checked against the session table (revocations made by
    # the CLI or another process, token expiry, disabled accounts).
    session_audit_seconds: float = opt(30.0, 0.05, 86400)


@dataclass(frozen=True)
class PresenceSettings:
    enabled: bool = True
    typing_enabled: bool = True
    throttle_seconds: float = opt(5.0, 0, 3600)


@dataclass(frozen=True)
class HeartbeatSettings:
    interval_seconds: float = opt(25.0, 0.05, 3600)
    timeout_seconds: float = opt(60.0, 0.1, 7200)


@dataclass(frozen=True)
class RedisSettings:
    """Cross-process routing and shared state (presence, rate limits, revoked tokens)."""

    enabled: bool = False
    host: str = "localhost"
    port: int = opt(6379, 1, 65535)
    db: int = opt(0, 0, 1000)
    # ACL user (the fleet's redis role turns the `default` user off); "" = the default user.
    username: str = ""
    password: str = ""
    # Channels are per user shard (user id % shards): a process subscribes to the shards of the
    # users connected to it. More shards: less foreign traffic per process, more PUBLISHes per
    # group message.
    shards: int = opt(16, 1, 4096)
    # Key and channel prefix (several BerryChat clusters, or tests, can share one Redis).
    prefix: str = "berrychat:"
    socket_timeout: float = opt(5.0, 0.1, 300)


@dataclass(frozen=True)
class ReplicaSettings:
    host: str = "localhost"
    port: int = opt(3306, 1, 65535)
    # empty: the same as the primary's (database.database / .user / .password)
    database: str = ""
    user: str = ""
    password: str = ""
    unix_socket: str = ""


@dataclass(frozen=True)
class CallsSettings:
    """1:1 voice/video call signalling and the ICE servers handed to clients (docs/server.md)."""

    enabled: bool = True
    # a call not accepted within this time ends with reason "timeout" (a missed call)
    ring_timeout_seconds: float = opt(45.0, 0.05, 3600)
    # comma-separated stun: URLs, e.g. "stun:turn.example.org:3478"
    stun_urls: str = ""
    # comma-separated turn:/turns: URLs; credentials come from turn_secret (coturn's
    # use-auth-secret / static-auth-secret, the TURN REST API scheme)
    turn_urls: str = ""
    turn_secret: str = ""
    turn_ttl_seconds: int = opt(86400, 60, 30 * 86400)


@dataclass(frozen=True)
class BotsSettings:
    """Bot accounts, their HTTP API and outgoing webhooks."""

    enabled: bool = True
    webhook_timeout_seconds: float = opt(5.0, 0.1, 300)
    webhook_max_attempts: int = opt(5, 1, 100)
    webhook_backoff_seconds: float = opt(1.0, 0.01, 3600)
    webhook_backoff_max_seconds: float = opt(60.0, 0.01, 86400)
    # events waiting per bot; when full, new events for that bot are dropped (and counted)
    webhook_queue_size: int = opt(1000, 1, 1_000_000)


@dataclass(frozen=True)
class AiSettings:
    """The built-in AI assistant: a client of an OpenAI-compatible chat-completions API."""

    enabled: bool = False
    # up to and including the API version, e.g. http://llm.lan:11434/v1 (Ollama),
    # http://llm.lan:8080/v1 (llama.cpp); "/chat/completions" is appended
    base_url: str = "http://127.0.0.1:11434/v1"
    model: str = "llama3.2"
    api_key: str = ""  # empty: no Authorization header (LAN servers)
    system_prompt: str = "You are BerryChat's helpful assistant. Answer briefly and clearly."
    username: str = "assistant"
    display_name: str = "Assistant"
    # context sent with each question: at most this many recent messages, trimmed further
    # (oldest first) to about this many tokens (estimated as characters / 4)
    context_messages: int = opt(20, 1, 500)
    context_tokens: int = opt(3000, 50, 1_000_000)
    max_tokens: int = opt(512, 1, 1_000_000)  # the answer's token budget
    temperature: float = opt(0.7, 0, 2)
    connect_timeout_seconds: float = opt(5.0, 0.1, 300)
    first_token_timeout_seconds: float = opt(60.0, 0.1, 3600)
    idle_timeout_seconds: float = opt(30.0, 0.1, 3600)  # between two streamed chunks
    total_timeout_seconds: float = opt(180.0, 0.1, 86400)
    # questions per user / per conversation per window (0 = unlimited)
    rate_per_user: int = opt(10, 0, 1_000_000)
    rate_per_conversation: int = opt(30, 0, 1_000_000)
    rate_window_seconds: float = opt(60.0, 1, 86400)
    # how often the growing answer is pushed to the conversation while it streams
    stream_interval_seconds: float = opt(0.25, 0.01, 10)
    max_concurrent: int = opt(4, 1, 1000)  # answers generated at once per process


@dataclass(frozen=True)
class UploadsSettings:
    """Attachments (see docs/server.md, "Uploads"). Sizes are bytes."""

    # empty: an `uploads` directory next to the SQLite database file (the data directory),
    # or `./uploads` with MariaDB. The fleet sets /var/lib/berrychat/uploads.
    dir: str = ""
    max_image_bytes: int = opt(20 << 20, 1, 1 << 40)
    max_voice_bytes: int = opt(20 << 20, 1, 1 << 40)
    max_video_bytes: int = opt(200 << 20, 1, 1 << 40)
    max_file_bytes: int = opt(100 << 20, 1, 1 << 40)
    # remove EXIF (GPS location, camera serial) from stored images; orientation is applied first
    strip_metadata: bool = True
    thumbnail_px: int = opt(320, 16, 4096)
    # Pillow refuses images with more pixels than this (decompression bombs)
    max_image_pixels: int = opt(50_000_000, 1, 1_000_000_000)
    # production: answer authorised downloads with X-Accel-Redirect: <prefix><path> and let
    # Nginx send the bytes from an `internal` location aliased to `dir` (empty: stream here)
    accel_prefix: str = ""
    # video poster frames with this ffmpeg binary (empty: look for `ffmpeg` on PATH)
    ffmpeg: str = ""
    video_posters: bool = True
    idle_timeout_seconds: float = opt(30.0, 0.1, 3600)


@dataclass(frozen=True)
class MediaSettings:
    """Signed download links, orphaned uploads, per-user quotas (docs/server.md, "Uploads")."""

    # HMAC-SHA256 key of signed download URLs (at least 32 characters); every process and Pi of
    # a fleet needs the same one. Empty: a key generated on first start and kept next to
    # uploads.dir, in the data directory (one host only; a warning is logged).
    url_signing_key: str = ""
    url_ttl_seconds: int = opt(3600, 60, 7 * 86400)  # a link lives this long to 1.5x as long
    orphan_ttl_hours: float = opt(24.0, 0.01, 24 * 3650)  # never-sent uploads older: deleted
    user_quota_mb: int = opt(1024, 0, 1 << 30)  # stored bytes per user in MiB (0 = unlimited)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    replicas: tuple[ReplicaSettings, ...] = ()
    calls: CallsSettings = field(default_factory=CallsSettings)
    bots: BotsSettings = field(default_factory=BotsSettings)
    ai: AiSettings = field(default_factory=AiSettings)
    # Reserved for later features; accepted as free-form objects today.
    uploads: UploadsSettings = field(default_factory=UploadsSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    tls: Mapping[str, Any] = field(default_factory=dict)
    source: str = "defaults"

    def replace(self, **sections: Any) -> "Settings":
        """A copy with some keys changed: `s.replace(server={"port": 0})`."""
        raw = to_dict(self)
        for sec, vals in sections.items():
            if isinstance(vals, dict) and isinstance(raw.get(sec), dict):
                raw[sec].update(vals)
            else:
                raw[sec] = vals
        return from_dict(raw, source=self.source)


_SECTIONS = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "limits": LimitsSettings,
    "auth": AuthSettings,
    "presence": PresenceSettings,
    "heartbeat": HeartbeatSettings,
    "redis": RedisSettings,
    "uploads": UploadsSettings,
    "media": MediaSettings,
    "calls": CallsSettings,
    "bots": BotsSettings,
    "ai": AiSettings,
}
_FREEFORM = ("metrics", "tls")


def _describe(v: Any) -> str:
    return (
        json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else type(v).__name__
    )


def _coerce(key: str, f: dataclasses.Field, v: Any, from_env: bool) -> Any:
    t = f.type
    meta = f.metadata or {}
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices", ())
    if t is bool:
        if (
            from_env
            and isinstance(v, str)
            and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off")
        ):
            return v.lower() in ("1", "true", "yes", "on")
        if not isinstance(v, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(v)}")
        return v
    if t in (int, float):
        if from_env and isinstance(v, str):
            try:
                v = int(v) if t is int else float(v)
            except ValueError:
                pass
        ok = isinstance(v, int) and not isinstance(v, bool)
        if t is float:
            # NaN passes every range check ("nan" in the environment, NaN in a JSON file)
            ok = ok or (isinstance(v, float) and math.isfinite(v))
        what = "integer" if t is int else "number"
        if lo is not None and hi is not None:
            what += f" {lo:g}-{hi:g}"
        if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(key, f"expected {what}, got {_describe(v)}")
        return float(v) if t is float else v
    if t is str:
        if not isinstance(v, str):
            raise ConfigError(key, f"expected string, got {_describe(v)}")
        if choices and v not in choices:
            raise ConfigError(key, f"expected one of {', '.join(choices)}, got {_describe(v)}")
        return v
    raise AssertionError(t)  # pragma: no cover


def _section(name: str, cls: type, raw: Any, env: dict[str, str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected an object, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            raise ConfigError(f"{name}.{k}", f"unknown key (known: {', '.join(fields)})")
    vals: dict[str, Any] = {}
    for fname, f in fields.items():
        if fname in raw:
            vals[fname] = _coerce(f"{name}.{fname}", f, raw[fname], False)
    for fname, f in fields.items():
        ekey = f"{ENV_PREFIX}{name.upper()}__{fname.upper()}"
        if ekey in env:
            vals[fname] = _coerce(ekey, f, env[ekey], True)
    return cls(**vals)


def from_dict(raw: Any, *, env: Mapping[str, str] | None = None, source: str = "dict") -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", f"expected a JSON object, got {_describe(raw)}")
    envd = {k: v for k, v in (env or {}).items() if k.startswith(ENV_PREFIX)}
    known = set(_SECTIONS) | set(_FREEFORM) | {"replicas"}
    for k in raw:
        if k not in known:
            raise ConfigError(k, f"unknown section (known: {', '.join(sorted(known))})")
    vals: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        vals[name] = _section(name, cls, raw.get(name), envd)
    reps = raw.get("replicas", [])
    if not isinstance(reps, list):
        raise ConfigError("replicas", f"expected a list, got {_describe(reps)}")
    vals["replicas"] = tuple(
        _section(f"replicas[{i}]", ReplicaSettings, r, {}) for i, r in enumerate(reps)
    )
    for name in _FREEFORM:
        v = raw.get(name, {})
        if not isinstance(v, dict):
            raise ConfigError(name, f"expected an object, got {_describe(v)}")
        vals[name] = v
    s = Settings(**vals, source=source)
    if s.heartbeat.timeout_seconds <= s.heartbeat.interval_seconds:
        raise ConfigError("heartbeat.timeout_seconds", "must be larger than interval_seconds")
    ap = s.uploads.accel_prefix
    if ap and not (ap.startswith("/") and ap.endswith("/") and ap.isprintable() and " " not in ap):
        raise ConfigError("uploads.accel_prefix", "expected a path like /_uploads/")
    if s.media.url_signing_key and len(s.media.url_signing_key) < 32:
        raise ConfigError("media.url_signing_key", "expected at least 32 characters")
    if s.ai.enabled and not s.ai.base_url.startswith(("http://", "https://")):
        raise ConfigError("ai.base_url", "expected an http:// or https:// URL")
    if s.calls.turn_urls and not s.calls.turn_secret:
        raise ConfigError("calls.turn_secret", "required when calls.turn_urls is set")
    return s


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (or defaults when path is None) and apply environment overrides."""
    env = os.environ if env is None else env
    if path is None:
        return from_dict({}, env=env, source="defaults")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read file: {e.strerror}")
    except UnicodeDecodeError as e:  # found by fuzzing: was a traceback, not one clear line
        raise ConfigError(str(path), f"not UTF-8 text (byte {e.start})")
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(str(path), f"not valid JSON: {e}")
    return from_dict(raw, env=env, source=str(path))


def to_dict(s: Settings) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d.pop("source", None)
    d["replicas"] = list(d["replicas"])
    return d


def redacted(s: Settings) -> dict[str, Any]:
    d = to_dict(s)
    for sec in ("database", "redis"):
        if d[sec].get("password"):
            d[sec]["password"] = "***"
    for r in d["replicas"]:
        if r.get("password"):
            r["password"] = "***"
    for sec, key in (("calls", "turn_secret"), ("ai", "api_key"), ("media", "url_signing_key")):
        if d[sec].get(key):
            d[sec][key] = "***"
    return d
