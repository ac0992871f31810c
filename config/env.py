"""The worker's own configuration: environment variables plus an optional `.env` file.

`load_config` turns a mapping of strings into a frozen, validated `Config`. It does no other I/O
than reading the `.env` file, so it is unit-tested with plain dicts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from dotenv import dotenv_values

T = TypeVar("T")

DB_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_$()+-/")


class ConfigError(Exception):
    """A setting is missing or invalid. `str()` is one line naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class CouchConnection:
    """Where CHT's CouchDB is, split out of COUCH_URL so credentials never travel in a URL."""

    server_url: str  # scheme://host:port[/prefix], no credentials
    db_name: str  # the medic database
    username: str | None
    password: str | None

    @property
    def vault_db_name(self) -> str:
        return f"{self.db_name}-vault"

    @property
    def redacted_url(self) -> str:
        """COUCH_URL safe for logs: the password replaced by ***."""
        parts = urlsplit(self.server_url)
        netloc = parts.netloc
        if self.username:
            netloc = f"{quote(self.username, safe='')}:***@{netloc}"
        path = f"{parts.path.rstrip('/')}/{self.db_name}"
        return urlunsplit((parts.scheme, netloc, path, "", ""))


@dataclass(frozen=True)
class Config:
    couch: CouchConnection
    worker_db: str
    listen_host: str
    listen_port: int
    webhook_listen_host: str | None  # the public door (webhook + minimal /readyz); None: off
    webhook_listen_port: int
    webhook_read_timeout: float
    webhook_client_concurrency: int
    status_poll_interval: float
    log_level: str
    log_format: str
    couch_secret: str | None
    couch_timeout: float
    couch_threads: int
    changes_batch_size: int
    changes_catchup_batch_size: int
    concurrency: int
    max_pending_changes: int
    checkpoint_every: int
    checkpoint_interval: float
    change_max_attempts: int
    shutdown_timeout: float
    outgoing_service_name: str
    rapidpro_api_token: str | None
    rapidpro_api_token_file: Path | None
    rapidpro_incoming_key: str | None
    rapidpro_incoming_key_file: Path | None
    rapidpro_calls_per_hour: int | None  # deprecated: every scope's rate (see rapidpro_scope_rates)
    rapidpro_timeout: float
    credentials_ttl: float
    sweep_interval: float
    webhook_max_body: int
    incoming_reconcile: bool
    incoming_reconcile_interval: float
    status_tracking_horizon: float
    in_doubt_check_after: float = 120.0
    in_doubt_clock_margin: float = 60.0
    instance_id: str = ""  # "" = the ledger's owner name (host:pid), see worker/app.py
    lease_ttl: float = 15.0
    lease_renew_interval: float = 5.0
    # The public URL RapidPro calls (`rapidpro setup`, `check`); the worker appends the v2 path.
    webhook_public_url: str | None = None
    channel_check_interval: float = 300.0
    # Calls an hour per RapidPro throttle scope set by the operator (None: the server version's).
    rapidpro_scope_rates: dict[str, int | None] = field(default_factory=dict)

    @property
    def claim_timeout(self) -> float:
        """A claim older than this has no sender any more: longer than any send can take
        (budget wait + request + recording the outcome)."""
        return 2 * self.rapidpro_timeout + self.couch_timeout + 10

    def __repr__(self) -> str:  # keep secrets out of any accidental repr in a log line
        return f"Config(couch={self.couch.redacted_url!r}, worker_db={self.worker_db!r})"


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


def read_environment(env_file: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective variables: `.env` values overridden by the real environment.

    Without `--env-file`, a `.env` in the working directory is read when present.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError("--env-file", f"{env_file} does not exist or is not a file")
        path: Path | None = env_file
    else:
        candidate = Path(".env")
        path = candidate if candidate.is_file() else None
    if path is not None:
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    values.update(environ)
    values.update(systemd_credentials(values.get("CREDENTIALS_DIRECTORY", "")))
    return values


# systemd credentials (LoadCredential=, systemd.exec(5)): file name in $CREDENTIALS_DIRECTORY →
# (variable, whether the variable takes the file's path rather than its content). They win over
# the environment, so a secret never has to sit in the unit or the environment file.
CREDENTIAL_FILES = {
    "couch-url": ("COUCH_URL", False),
    "couch-secret": ("COUCH_SECRET", False),
    "rapidpro-token": ("RAPIDPRO_API_TOKEN_FILE", True),
    "rapidpro-incoming-key": ("RAPIDPRO_INCOMING_KEY_FILE", True),
}


def systemd_credentials(directory: str) -> dict[str, str]:
    """Variables from the credential files present in `directory` (empty: none)."""
    if not directory.strip():
        return {}
    found: dict[str, str] = {}
    for name, (variable, as_path) in CREDENTIAL_FILES.items():
        path = Path(directory) / name
        # An empty file stands for "not given" (the install script creates every file the unit
        # loads, since systemd refuses to start when one is missing): the vault may then supply it.
        if not path.is_file() or path.stat().st_size == 0:
            continue
        if as_path:
            found[variable] = str(path)
            found[variable.removesuffix("_FILE")] = ""  # the file wins over a value set elsewhere
        else:
            try:
                found[variable] = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(variable, f"cannot read the credential {name}: "
                                            f"{type(exc).__name__}") from None
    return found


def parse_couch_url(raw: str) -> CouchConnection:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("COUCH_URL", "must be an http(s) URL such as http://admin:pass@127.0.0.1:5984/medic")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError("COUCH_URL", "has an invalid port") from exc
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ConfigError("COUCH_URL", "must end with the database name, e.g. .../medic")
    db_name = unquote(segments[-1])
    _check_db_name("COUCH_URL", db_name)
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    prefix = "/".join(segments[:-1])
    server_url = urlunsplit((parts.scheme, netloc, f"/{prefix}" if prefix else "", "", ""))
    return CouchConnection(
        server_url=server_url,
        db_name=db_name,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _check_db_name(variable: str, name: str) -> None:
    if not name or not name[0].islower() or not set(name) <= DB_NAME_CHARS:
        raise ConfigError(variable, f"{name!r} is not a valid CouchDB database name")


def _get(values: Mapping[str, str], name: str, default: T, convert: Callable[[str], T],
         check: Callable[[T], bool], expectation: str) -> T:
    raw = values.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = convert(raw.strip())
    except ValueError:
        raise ConfigError(name, f"{expectation}, got {raw.strip()!r}") from None
    if not check(value):
        raise ConfigError(name, f"{expectation}, got {raw.strip()!r}")
    return value


def _positive_int(values: Mapping[str, str], name: str, default: int) -> int:
    return _get(values, name, default, int, lambda v: v > 0, "must be a positive whole number")


def _optional_positive_int(values: Mapping[str, str], name: str) -> int | None:
    return _get(values, name, None, int, lambda v: v > 0, "must be a positive whole number")


# The per-scope rates (transitions/rapidpro/rate_scopes.py), by RapidPro throttle scope.
SCOPE_RATE_SETTINGS = {
    "v2.broadcasts": "RAPIDPRO_BROADCASTS_CALLS_PER_HOUR",
    "v2.messages": "RAPIDPRO_MESSAGES_CALLS_PER_HOUR",
    "v2": "RAPIDPRO_V2_CALLS_PER_HOUR",
}


def _positive_seconds(values: Mapping[str, str], name: str, default: float) -> float:
    return _get(values, name, default, float, lambda v: 0 < v < 1e9, "must be a positive number of seconds")


def _choice(values: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    expectation = f"must be one of {', '.join(choices)}"
    return _get(values, name, default, str.lower, lambda v: v in choices, expectation)


def default_renew_interval(ttl: float) -> float:
    return ttl / 3


def max_renew_interval(ttl: float) -> float:
    """At most a third of the TTL: two renewals can fail before the holder has to stop."""
    return ttl / 3


def load_config(values: Mapping[str, str], *, stdout_is_terminal: bool = False) -> Config:
    """`stdout_is_terminal`: where the logs go; a person at a terminal reads `console` lines by
    default, anything else (journald, docker, a pipe) gets JSON."""
    raw_url = values.get("COUCH_URL", "").strip()
    if not raw_url:
        raise ConfigError("COUCH_URL", "is required (e.g. http://admin:pass@127.0.0.1:5984/medic)")
    couch = parse_couch_url(raw_url)

    worker_db = values.get("WORKER_DB", "").strip() or f"{couch.db_name}-rapidpro"
    _check_db_name("WORKER_DB", worker_db)
    if worker_db in (couch.db_name, couch.vault_db_name, f"{couch.db_name}-sentinel"):
        raise ConfigError("WORKER_DB", f"must be a database of the worker's own, not {worker_db!r}")

    rapidpro_timeout = _get(values, "RAPIDPRO_TIMEOUT", 30.0, float, lambda v: 0 < v <= 30,
                            "must be a number of seconds above 0 and at most 30")
    # A send's POST can be under way until 2 × RAPIDPRO_TIMEOUT after its claim (budget wait, then
    # the request): looking it up in RapidPro earlier could miss the broadcast it is creating.
    in_doubt_check_after = _get(values, "IN_DOUBT_CHECK_AFTER", 120.0, float,
                                lambda v: 2 * rapidpro_timeout <= v < 1e9,
                                f"must be a number of seconds, at least twice RAPIDPRO_TIMEOUT "
                                f"({2 * rapidpro_timeout:g})")
    in_doubt_clock_margin = _get(values, "IN_DOUBT_CLOCK_MARGIN", 60.0, float, lambda v: 60 <= v <= 3600,
                                 "must be a number of seconds from 60 to 3600")

    # Several workers on one CHT: the lease (worker/lease/keeper.py). A holder stops acting a quarter of
    # the TTL before a standby may take over, so it must get at least two renewals in before that.
    lease_ttl = _get(values, "LEASE_TTL", 15.0, float, lambda v: 1 <= v <= 3600,
                     "must be a number of seconds from 1 to 3600")
    lease_renew_interval = _get(values, "LEASE_RENEW_INTERVAL", default_renew_interval(lease_ttl), float,
                                lambda v: 0 < v <= max_renew_interval(lease_ttl),
                                f"must be a positive number of seconds, at most a third of LEASE_TTL "
                                f"({max_renew_interval(lease_ttl):g})")
    instance_id = values.get("INSTANCE_ID", "").strip()
    if instance_id and (len(instance_id) > 100 or not instance_id.isprintable() or "(" in instance_id
                        or ")" in instance_id):
        raise ConfigError("INSTANCE_ID", "must be at most 100 printable characters without parentheses")

    return Config(
        couch=couch,
        worker_db=worker_db,
        listen_host=values.get("LISTEN_HOST", "").strip() or "127.0.0.1",
        listen_port=_get(values, "LISTEN_PORT", 5989, int, lambda v: 0 <= v <= 65535,
                         "must be a port number from 0 to 65535"),
        **_public_door(values),
        status_poll_interval=_positive_seconds(values, "STATUS_POLL_INTERVAL", 60.0),
        log_level=_choice(values, "LOG_LEVEL", "info", LOG_LEVELS),
        log_format=_choice(values, "LOG_FORMAT", "console" if stdout_is_terminal else "json", LOG_FORMATS),
        couch_secret=values.get("COUCH_SECRET") or None,
        couch_timeout=_positive_seconds(values, "COUCH_TIMEOUT", 10.0),
        couch_threads=_positive_int(values, "COUCH_THREADS", 8),
        changes_batch_size=_positive_int(values, "CHANGES_BATCH_SIZE", 200),
        changes_catchup_batch_size=_positive_int(values, "CHANGES_CATCHUP_BATCH_SIZE", 2000),
        concurrency=_positive_int(values, "CONCURRENCY", 8),
        max_pending_changes=_positive_int(values, "MAX_PENDING_CHANGES", 2000),
        checkpoint_every=_positive_int(values, "CHECKPOINT_EVERY", 500),
        checkpoint_interval=_positive_seconds(values, "CHECKPOINT_INTERVAL", 5.0),
        change_max_attempts=_positive_int(values, "CHANGE_MAX_ATTEMPTS", 5),
        shutdown_timeout=_positive_seconds(values, "SHUTDOWN_TIMEOUT", 7.0),
        outgoing_service_name=values.get("OUTGOING_SERVICE_NAME", "").strip() or "rapidpro",
        rapidpro_api_token=values.get("RAPIDPRO_API_TOKEN", "").strip() or None,
        rapidpro_api_token_file=_optional_file(values, "RAPIDPRO_API_TOKEN_FILE"),
        rapidpro_incoming_key=values.get("RAPIDPRO_INCOMING_KEY", "").strip() or None,
        rapidpro_incoming_key_file=_optional_file(values, "RAPIDPRO_INCOMING_KEY_FILE"),
        rapidpro_calls_per_hour=_optional_positive_int(values, "RAPIDPRO_CALLS_PER_HOUR"),
        rapidpro_scope_rates={scope: _optional_positive_int(values, name)
                              for scope, name in SCOPE_RATE_SETTINGS.items()},
        rapidpro_timeout=rapidpro_timeout,
        credentials_ttl=_get(values, "CREDENTIALS_TTL", 60.0, float, lambda v: 0 <= v <= 60,
                             "must be a number of seconds from 0 to 60"),
        sweep_interval=_positive_seconds(values, "SWEEP_INTERVAL", 600.0),
        webhook_max_body=_positive_int(values, "WEBHOOK_MAX_BODY", 64 * 1024),
        incoming_reconcile=_get(values, "INCOMING_RECONCILE", False, _parse_bool, lambda v: True,
                                "must be true or false"),
        incoming_reconcile_interval=_positive_seconds(values, "INCOMING_RECONCILE_INTERVAL", 300.0),
        status_tracking_horizon=_positive_seconds(values, "STATUS_TRACKING_HORIZON", 7 * 24 * 3600.0),
        in_doubt_check_after=in_doubt_check_after,
        in_doubt_clock_margin=in_doubt_clock_margin,
        instance_id=instance_id,
        lease_ttl=lease_ttl,
        lease_renew_interval=lease_renew_interval,
        webhook_public_url=_public_url(values, "WEBHOOK_PUBLIC_URL"),
        channel_check_interval=_get(values, "CHANNEL_CHECK_INTERVAL", 300.0, float, lambda v: 5 <= v < 1e9,
                                    "must be a number of seconds, at least 5"),
    )


def _public_door(values: Mapping[str, str]) -> dict[str, object]:
    """The public door is on when WEBHOOK_LISTEN_HOST or WEBHOOK_LISTEN_PORT is set."""
    host = values.get("WEBHOOK_LISTEN_HOST", "").strip()
    port_given = bool(values.get("WEBHOOK_LISTEN_PORT", "").strip())
    return {
        "webhook_listen_host": host or ("0.0.0.0" if port_given else None),
        "webhook_listen_port": _get(values, "WEBHOOK_LISTEN_PORT", 5990, int, lambda v: 0 <= v <= 65535,
                                    "must be a port number from 0 to 65535"),
        "webhook_read_timeout": _get(values, "WEBHOOK_READ_TIMEOUT", 10.0, float, lambda v: 0 < v <= 60,
                                     "must be a number of seconds above 0 and at most 60"),
        "webhook_client_concurrency": _positive_int(values, "WEBHOOK_CLIENT_CONCURRENCY", 32),
    }


def _public_url(values: Mapping[str, str], name: str) -> str | None:
    raw = values.get(name, "").strip()
    return public_url(raw, name) if raw else None


def public_url(raw: str, name: str) -> str:
    """An http(s) URL without credentials, query or fragment, without its trailing slash; else
    ConfigError naming `name` (a variable, or a command-line option)."""
    raw = raw.strip()
    parts = urlsplit(raw)
    expectation = "must be an http(s) URL such as https://cht.example.org/rapidpro-worker"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, expectation)
    try:
        _ = parts.port  # an invalid port raises
    except ValueError:
        raise ConfigError(name, f"{expectation} (the port is invalid)") from None
    if parts.username or parts.password:
        # It is written into a RapidPro global that workspace admins see: never credentials.
        raise ConfigError(name, "must not contain credentials (RapidPro's users can read it)")
    if parts.query or parts.fragment:
        raise ConfigError(name, f"{expectation}, without a query or fragment")
    return raw.rstrip("/")


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _optional_file(values: Mapping[str, str], name: str) -> Path | None:
    raw = values.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(name, f"{raw} does not exist or is not a file")
    return path
