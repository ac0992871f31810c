"""Runs the real daemon as a subprocess and reads its JSON log lines (for lifecycle tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a worker subprocess: PATH, the project on PYTHONPATH, and `env`.

    A suite run under `faketime` keeps its moved clock in the children too: libfaketime's
    LD_PRELOAD and FAKETIME* variables (FAKETIME_SHARED keeps one start time across processes)
    pass through, so the daemon and the tests read the same time.
    """
    clock = {k: v for k, v in os.environ.items() if k == "LD_PRELOAD" or k.startswith("FAKETIME")}
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **clock, **(env or {})}


class Daemon:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = child_env({"LISTEN_PORT": "0", "LOG_LEVEL": "debug", "CHECKPOINT_INTERVAL": "0.2", **env})
        self.process: subprocess.Popen[str] | None = None
        self.events: list[dict[str, Any]] = []
        self.stray_lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> Daemon:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=self.env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.stray_lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 20.0) -> Any:
        """Wait until predicate(events) is truthy (re-checked on every new log line)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate(self.events)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process and self.process.poll() is not None
                                      and not self._reader_alive()):
                    tail = "\n".join(json.dumps(e) for e in self.events[-15:])
                    raise TimeoutError(f"condition not met; last events:\n{tail}")
                self._changed.wait(min(remaining, 0.5))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def wait_event(self, name: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        def found(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            for event in events:
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None
        return self.wait_for(found, timeout)

    def processed_doc_ids(self) -> list[str]:
        with self._changed:
            return [e["doc_id"] for e in self.events if e.get("event") == "change_processed"]

    @property
    def port(self) -> int:
        return int(self.wait_event("http_listening")["port"])

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def terminate_and_wait(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._reader:
            self._reader.join(5)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
