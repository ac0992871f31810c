"""Start and stop the project's CouchDB-protocol test server (playground/couchdb_server/server.js).

Usage:
- `ensure_node_modules()` runs `npm ci` once, when node_modules does not match package-lock.json;
- `server = CouchTestServer().start()` in memory, `CouchTestServer(data_dir=path)` on LevelDB;
- `server.url` is "http://admin:pass@127.0.0.1:PORT", `server.port` the port;
- `server.kill(); server.start()` restarts it on the same port (and data dir);
- `server.stop()`, or use it as a context manager.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Self

SERVER_DIR = Path(__file__).resolve().parents[2] / "playground" / "couchdb_server"
NODE_MODULES = SERVER_DIR / "node_modules"
LOCK_FILE = SERVER_DIR / "package-lock.json"
# Written after a successful `npm ci`: the hash of the package-lock.json it installed. Comparing
# hashes rather than mtimes keeps working when git checkouts reset file times.
STAMP_FILE = NODE_MODULES / ".cht-test-server-installed"
READY_EVENT = "couchdb_test_server_ready"


def _lock_hash() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


def _installed() -> bool:
    try:
        return STAMP_FILE.read_text().strip() == _lock_hash()
    except FileNotFoundError:
        return False


def ensure_node_modules(timeout: float = 300.0) -> None:
    """Run `npm ci` in playground/couchdb_server unless node_modules matches package-lock.json.

    Idempotent, and safe when several processes (e.g. pytest-xdist workers) call it at once:
    an exclusive file lock serialises them and the later ones find the stamp already written.
    """
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the CouchDB test server (apt-get install npm)")
    key = hashlib.sha256(str(SERVER_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"cht-couch-test-server-{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=SERVER_DIR,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"npm ci failed in {SERVER_DIR} ({result.returncode}):\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
                )
            STAMP_FILE.write_text(_lock_hash() + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CouchTestServer:
    """One server process; start() again after stop()/kill() restarts it on the same port."""

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int = 0,
        admin: tuple[str, str] = ("admin", "pass"),
        host: str = "127.0.0.1",
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.port = port
        self.admin = admin
        self.host = host
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="couch-test-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        # The child's stderr goes here (appended across restarts), so no pipe can fill up.
        self.log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    # ------------------------------------------------------------------ urls
    @property
    def base_url(self) -> str:
        """URL without credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Admin URL, credentials included (what the worker takes as the server part of COUCH_URL)."""
        user, password = self.admin
        return f"http://{user}:{password}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> Self:
        if self.running:
            raise RuntimeError("server already running")
        ensure_node_modules()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed to run the CouchDB test server")
        storage = ["--data", str(self.data_dir)] if self.data_dir is not None else ["--memory"]
        cmd = [
            node,
            str(SERVER_DIR / "server.js"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--admin",
            ":".join(self.admin),
            *storage,
            "--stop-on-stdin-close",  # so it never outlives this process, even after a crash
        ]
        deadline = time.monotonic() + timeout
        while True:
            url = self._spawn(cmd, deadline)
            if url is not None:
                break
            # Restarting on a fixed port right after a kill can race the old socket: retry.
            if "EADDRINUSE" in self._log_tail() and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise RuntimeError(f"CouchDB test server did not start:\n{self._log_tail()}")
        self.port = int(url.rsplit(":", 1)[1])
        return self

    def _spawn(self, cmd: list[str], deadline: float) -> str | None:
        """Start the child; return its URL once it says it is ready, None if it exits first."""
        self._close_log()
        self._log = open(self.log_path, "a")  # closed in stop()/kill()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,  # held open: closing it (or our death) stops the server
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=SERVER_DIR,
        )
        found: list[str] = []
        ready = threading.Event()
        stdout = self._proc.stdout
        assert stdout is not None

        def read_stdout() -> None:
            # Reads the ready line, then keeps draining stdout for the life of the process.
            for line in stdout:
                if not ready.is_set():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict) and event.get("event") == READY_EVENT:
                            found.append(event["url"])
                            ready.set()
            ready.set()

        threading.Thread(target=read_stdout, name="couch-test-server-stdout", daemon=True).start()
        ready.wait(max(0.0, deadline - time.monotonic()))
        if found:
            return found[0]
        if self._proc.poll() is None:  # neither ready nor dead: give up on it
            self.kill()
            raise RuntimeError(f"CouchDB test server not ready in time:\n{self._log_tail()}")
        self._proc.wait()
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (SIGKILL if it does not exit in `timeout`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed by the server."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._proc is not None and self._proc.stdin is not None and self._proc.poll() is not None:
            self._proc.stdin.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
