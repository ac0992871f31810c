"""The operator's command line as the tests run it (a subprocess with the test environment), and
reading `check`'s lines; shared by the command tests, `rapidpro setup` and the install script's."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import child_env

KEY = "incoming-key"


PUBLIC_URL = "https://cht.example.org/rapidpro-worker"


CHT_URL = PUBLIC_URL + "/api/v2/sms/rapidpro/incoming-messages"


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args],
                          env=child_env(env),
                          capture_output=True, text=True, timeout=60, cwd=cwd)


async def acli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, env=env, cwd=cwd)


def rapidpro_settings(url: str, service: str = "rapidpro") -> dict[str, Any]:
    return {"sms": {"outgoing_service": service, "rapidpro": {"url": url}}, "default_country_code": 254,
            "forms": {"V": {"meta": {"code": "V"}, "fields": {"n": {"type": "string", "position": 0}}}}}


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """check's output: {check: (level, detail)}; every line must follow the format, the last one
    being the summary."""
    found = {}
    *lines, last = result.stdout.splitlines()
    assert last.startswith("summary: ") and " fatal, " in last, last
    for line in lines:
        level, rest = line.split(" ", 1)
        name, detail = rest.split(": ", 1)
        assert level in ("ok", "warning", "problem", "fatal"), line
        found[name] = (level, detail)
    return found


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
