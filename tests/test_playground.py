"""`./scripts/run` as the README says, in a temporary copy of the project.

Without COUCH_URL it starts the playground (local CouchDB-protocol server, RapidPro stand-in, the
worker) and shows the job; with COUCH_URL (environment or .env) it runs the daemon alone. Ctrl-C
(SIGINT to the process group) must leave no process behind.

The project's `.venv` and the test server's `node_modules` are linked into the copy, so nothing is
installed: only what `./scripts/run` does after setting up is exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from playground.fake_rapidpro import FakeRapidPro
from tests.support.couch_fixtures import MedicDb, couch_request
from tests.support.couchserver import LOCK_FILE, NODE_MODULES, ensure_node_modules

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = (".git", ".venv", "node_modules", ".devdata", ".env", "__pycache__", ".pytest_cache",
              ".ruff_cache", "*.egg-info", "build", "dist")
DELIVERY_BOUND = 30.0  # the promise, counted from the daemon's first /healthz answer
START_BOUND = 120.0  # ./scripts/run's set-up checks, the local server, the daemon's start


# ---------------------------------------------------------------------------- helpers


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def _post_form(url: str, fields: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, json.loads(response.read())


def _until(check: Callable[[], Any], deadline: float, step: float = 0.2) -> Any:
    """`check()`'s first truthy value before `deadline` (monotonic), else None."""
    while True:
        with suppress(OSError, ValueError):
            value = check()
            if value:
                return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, start time in clock ticks), from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below `root`, whatever session it moved to."""
    table = _process_table()
    found: set[tuple[int, int]] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in table.items():
            if ppid == parent and (pid, started) not in found:
                found.add((pid, started))
                frontier.append(pid)
    return found


def _alive(processes: set[tuple[int, int]]) -> set[tuple[int, int]]:
    table = _process_table()
    return {(pid, started) for pid, started in processes if table.get(pid, (0, -1))[1] == started}


class Run:
    """`./scripts/run` in its own process group, its stdout (log lines) and stderr collected."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["./scripts/run"], cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.seen: set[tuple[int, int]] = set()  # every descendant ever observed
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.stdout),
                                               (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout)]

    def watch(self) -> None:
        self.seen |= _descendants(self.process.pid)

    def interrupt(self, timeout: float = 40.0) -> int:
        """SIGINT to the whole process group, as Ctrl-C in a terminal does; the exit status."""
        self.watch()
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def kill_everything(self) -> None:
        """Whatever happened in the test, leave nothing running on the machine."""
        self.watch()
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid, _ in _alive(self.seen):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def output(self) -> str:
        return "".join(self.stderr[-40:]) + "".join(self.stdout[-40:])


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The project as a fresh clone has it, plus the already installed .venv and node_modules."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = ROOT / ".venv" / f".installed-{digest}"  # what scripts/setup.sh writes after installing
    if not stamp.exists():
        # Otherwise setup.sh would install into the linked .venv, i.e. into the checkout's own.
        pytest.skip("the checkout's .venv was not set up by scripts/setup.sh: run ./scripts/test")
    ensure_node_modules()  # what the test server needs anyway; then node_modules matches the lock
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
    (copy / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    server_dir = copy / "playground" / "couchdb_server"
    (server_dir / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    # node_modules matches the lock (its hash stamp says so); keep setup.sh's mtime check of the
    # copied lock file from thinking otherwise.
    installed = (NODE_MODULES / ".package-lock.json").stat().st_mtime
    lock = server_dir / LOCK_FILE.name
    os.utime(lock, (installed - 1, installed - 1))
    return copy


def _base_env(**extra: str) -> dict[str, str]:
    # libfaketime's variables too, so a suite run under `faketime` moves the playground's clocks.
    env = {name: value for name, value in os.environ.items()
           if name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LD_PRELOAD")
           or name.startswith("FAKETIME")}
    env.update(extra)
    return env


@pytest.fixture
def run_factory() -> Iterator[Callable[[Path, dict[str, str]], Run]]:
    runs: list[Run] = []

    def start(project: Path, env: dict[str, str]) -> Run:
        run = Run(project, env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_everything()


def _wait_healthy(run: Run, port: int) -> float:
    """Monotonic time of the daemon's first /healthz answer."""
    def answered() -> bool:
        if run.process.poll() is not None:
            return True  # exited: no point waiting
        return _get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200

    healthy = _until(answered, time.monotonic() + START_BOUND, step=0.1)
    assert healthy and run.process.poll() is None, f"/healthz never answered:\n{run.output()}"
    return time.monotonic()


# ---------------------------------------------------------------------------- the playground


def test_playground_shows_a_message_delivered_and_an_sms_stored_then_ctrl_c_leaves_nothing(
        project_copy: Path, run_factory: Callable[[Path, dict[str, str]], Run]) -> None:
    couch_port, rapidpro_port, worker_port = _free_ports(3)
    run = run_factory(project_copy, _base_env(DEV_COUCH_PORT=str(couch_port),
                                              DEV_RAPIDPRO_PORT=str(rapidpro_port),
                                              LISTEN_PORT=str(worker_port)))
    healthy_at = _wait_healthy(run, worker_port)
    deadline = healthy_at + DELIVERY_BOUND
    run.watch()
    medic = f"http://admin:pass@127.0.0.1:{couch_port}/medic"

    # An incoming form SMS stored as a CHT report, through the stand-in's flow and the webhook.
    def report() -> dict[str, Any] | None:
        status, body = couch_request("GET", f"{medic}/_all_docs?include_docs=true", timeout=5)
        assert status == 200, body
        for row in body["rows"]:
            doc = row.get("doc") or {}
            if doc.get("type") == "data_record" and "sms_message" in doc:
                return doc
        return None

    stored = _until(report, deadline)
    assert stored is not None, f"no incoming SMS stored as a report:\n{run.output()}"
    assert stored["form"] == "P"
    assert stored["fields"] == {"last_menstrual_period": 12, "patient_name": "Mary Atieno"}
    assert stored["errors"] == []
    assert stored["from"] == "+254722000111"

    # The seeded pending message, sent through the stand-in and followed to delivered.
    def seeded() -> dict[str, Any]:
        status, doc = couch_request("GET", f"{medic}/playground-reminder", timeout=5)
        assert status == 200, doc
        return doc["tasks"][0]

    delivered = _until(lambda: seeded()["state"] == "delivered", deadline)
    task = seeded()

    status, health = _get_json(f"http://127.0.0.1:{worker_port}/healthz")
    assert status == 200
    assert health["outgoing"]["sending"] is True, health["outgoing"]
    assert health["outgoing"]["sent"] == 1
    assert health["settings"]["rapidpro_url"] == f"http://127.0.0.1:{rapidpro_port}"
    assert health["incoming"]["requests"]["saved"] == 1

    # Logs for a machine when stdout is not a terminal: every line JSON, the job visible in them.
    events = run.events()
    names = [event["event"] for event in events]
    for name in ("message_sent", "incoming_sms", "playground_report_stored",
                 "rapidpro_standin_webhook_called"):
        assert name in names, f"{name} not logged"
    assert "+254712345678" not in "".join(run.stdout)  # numbers masked, ours as the worker's
    # The guide: the commands to try next.
    _until(lambda: "Ctrl-C" in "".join(run.stderr), time.monotonic() + 20)
    guide = "".join(run.stderr)
    for expected in (f"http://127.0.0.1:{worker_port}/healthz",
                     f"-X POST http://127.0.0.1:{couch_port}/medic",
                     f"http://127.0.0.1:{rapidpro_port}/c/ex/"):
        assert expected in guide, guide

    # RapidPro's side, as the guide says: setup (a dry run, then for real), the import, `check`.
    commands = [line.strip() for line in guide.splitlines()
                if line.strip().startswith((".venv/bin/cht-rapidpro-worker rapidpro setup",
                                            "curl -s -H 'Authorization: Token",
                                            ".venv/bin/cht-rapidpro-worker check"))]
    assert [c.split()[1] for c in commands] == ["rapidpro", "rapidpro", "-s", "check"], guide
    results = [subprocess.run(command, shell=True, cwd=project_copy, env=_base_env(), capture_output=True,
                              text=True, timeout=60) for command in commands]
    assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
    assert "dry run: nothing was changed" in results[0].stdout
    assert f"cht_url: created (http://127.0.0.1:{worker_port}/api/v2/sms/rapidpro" in results[1].stdout
    assert json.loads(results[2].stdout)["status"] == "complete"
    # `limits` judges this machine's cgroups (a warning on cgroup v1), not the configuration.
    *lines, summary = results[3].stdout.splitlines()
    levels = {line.split(" ", 1)[0] for line in lines if " limits: " not in line}
    assert levels == {"ok"} and summary.startswith("summary: 0 fatal, 0 problems"), results[3].stdout
    assert "ok rapidpro_flow: flow 'CHT Incoming SMS'" in results[3].stdout
    assert "ok rapidpro_channels: 1 active" in results[3].stdout
    # From now on the stand-in runs the imported flow: its webhook reaches the worker.
    status, answer = _post_form(f"http://127.0.0.1:{rapidpro_port}/c/ex/{FakeRapidPro.CHANNEL_UUID}/receive",
                                {"from": "+254722000113", "text": "hello"})
    assert status == 200 and answer["data"][0]["webhook"]["status"] == 200, answer
    status, found = couch_request("POST", f"{medic}/_find", {"selector": {
        "sms_message.gateway_ref": answer["data"][0]["msg_uuid"]}}, timeout=5)  # the id: the SMS's uuid
    assert status == 200 and [d["from"] for d in found["docs"]] == ["+254722000113"], found

    # Ctrl-C: daemon, stand-in and local server all stop, nothing left behind.
    children = set(run.seen)
    assert len(children) >= 2, f"expected the local server and the daemon below scripts/run: {children}"
    assert run.interrupt() == 0, run.output()
    assert _alive(children) == set()
    for port in (couch_port, rapidpro_port, worker_port):
        assert not _listening(port), f"port {port} still open"
    stopped = [event["event"] for event in run.events()]
    assert "worker_stopped" in stopped and "playground_stopped" in stopped
    # A first run raises no alarm, shutdown included.
    alarms = [event for event in run.events() if event.get("level") not in ("debug", "info")]
    assert alarms == []

    assert delivered, (f"the seeded message was still {task['state']!r} {DELIVERY_BOUND} s after the first "
                       "/healthz answer")


# ---------------------------------------------------------------------------- with a real COUCH_URL


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_with_couch_url_run_starts_the_daemon_alone(
        where: str, project_copy: Path, medic_db: MedicDb,
        run_factory: Callable[[Path, dict[str, str]], Run]) -> None:
    couch_port, rapidpro_port, worker_port = _free_ports(3)
    env = _base_env(DEV_COUCH_PORT=str(couch_port), DEV_RAPIDPRO_PORT=str(rapidpro_port),
                    LISTEN_PORT=str(worker_port))
    if where == ".env":
        (project_copy / ".env").write_text(f"# configured\nCOUCH_URL={medic_db.url}\n")
    else:
        env["COUCH_URL"] = medic_db.url
    run = run_factory(project_copy, env)
    _wait_healthy(run, worker_port)
    run.watch()
    assert run.seen == set(), f"scripts/run started other processes: {run.seen}"  # it became the daemon
    assert not _listening(couch_port) and not _listening(rapidpro_port)
    status, body = couch_request("GET", f"{medic_db.url}/playground-reminder")
    assert status == 404, body
    assert run.interrupt() == 0, run.output()
    names = [event["event"] for event in run.events()]
    assert "worker_stopped" in names
    assert not [name for name in names if name.startswith(("playground", "rapidpro_standin"))]
