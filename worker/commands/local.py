"""Talking to the running daemon over its HTTP listener (for `status`, `rescan`, `parked retry`)."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from config.env import Config
from worker.http.admin import admin_token


class DaemonProblem(Exception):
    """The daemon did not answer, or not as asked: the text says which (printed after `problem: `)."""


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help="the daemon's listener (default: http://127.0.0.1:LISTEN_PORT, or "
                             "LISTEN_HOST when it is a specific address)")


def daemon_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host = config.listen_host
    if host in ("", "0.0.0.0", "::", "*"):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.listen_port}"


def call(config: Config, override: str | None, method: str, path: str, body: Any = None, *,
         expect: int, label: str = "the daemon", want_object: bool = False, timeout: float = 10.0) -> Any:
    """One request to the daemon (at `daemon_url(config, override)`): its JSON body when the
    status is `expect` (and the body an object, with `want_object`); else DaemonProblem."""
    base = daemon_url(config, override)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json", "Authorization": f"Bearer {admin_token(config)}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DaemonProblem(f"the daemon does not answer at {base} ({reason}); is it running? "
                            "(systemctl status cht-rapidpro-worker)") from None
    try:
        answer = json.loads(raw) if raw.strip() else None
    except ValueError:
        answer = raw.decode(errors="replace")
    if status != expect or (want_object and not isinstance(answer, dict)):
        raise DaemonProblem(f"{label} answered {status}: {answer}")
    return answer
