"""The local playground `./scripts/run` starts when no COUCH_URL is configured: the whole job on one
machine, with nothing to sign up for.

1. the project's CouchDB-protocol server (in memory: every run starts afresh) on DEV_COUCH_PORT,
   seeded with CHT's design docs, a settings doc whose outgoing service is the worker's and whose
   `sms.rapidpro.url` is the stand-in, two SMS forms, and one pending outgoing message;
2. a RapidPro stand-in (playground/rapidpro_standin.py) on DEV_RAPIDPRO_PORT, which moves
   messages queued → wired → sent → delivered over a few seconds and calls the worker's webhook
   as a RapidPro flow does;
3. the worker itself, with credentials for both directions, status tracking every 2 s;
4. then it shows the job: the seeded message sent and followed to `delivered`, an incoming form
   SMS stored as a report, and a short guide of commands to try next.

The worker's log lines go to stdout (console lines at a terminal, JSON otherwise); the playground's
own lines (`playground_*`, `rapidpro_standin_*`) are rendered the same way, the guide goes to
stderr. SIGINT/SIGTERM/SIGHUP (Ctrl-C) stops the worker first (an orderly shutdown), then the
stand-in and the CouchDB-protocol server; the children live in sessions of their own so that a
Ctrl-C reaches them only in that order, and they die with this process if it is killed.
Usage (what ./scripts/run does): .venv/bin/python -m playground [args for `run`]
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the playground is not part of the installed package

import aiohttp  # noqa: E402

from config.env import ConfigError, read_environment  # noqa: E402
from playground.rapidpro_standin import RapidProStandIn  # noqa: E402
from transitions.cht.phone import mask_phone  # noqa: E402
from transitions.cht.timestamps import cht_time  # noqa: E402
from worker.logs import configure_logging, get_logger  # noqa: E402

log = get_logger("playground")

DEFAULT_COUCH_PORT = 15984
DEFAULT_RAPIDPRO_PORT = 15985
ADMIN_USER, ADMIN_PASS = "admin", "pass"
DB = "medic"
API_TOKEN = "playground-api-token"  # what the worker presents to the stand-in
INCOMING_KEY = "playground-incoming-key"  # what the stand-in's flow presents to the worker
HERE = Path(__file__).resolve().parent
SERVER_DIR = HERE / "couchdb_server"
DESIGN_DOCS = HERE / "cht" / "design_docs.json"
# CHT's API writes its translation docs (`messages-<locale>`) into medic at start; the playground
# stands in for it with the texts SMS parsing uses.
TRANSLATION_DOCS = HERE / "cht" / "translations.json"
SETTINGS = HERE / "settings.json"
DATA_DIR = ROOT / ".devdata"
ENV_FILE = DATA_DIR / "playground.env"  # the worker's settings, for the guide's commands
FLOW_FILE = DATA_DIR / "cht-rapidpro-flow.json"  # where the guide's `rapidpro setup` writes

SEEDED_DOC_ID = "playground-reminder"
SEEDED_TO = "+254712345678"
SEEDED_TEXT = "Hello from the CHT RapidPro playground: Mary's antenatal visit is due tomorrow."
INCOMING_FROM = "+254722000111"
INCOMING_TEXT = "P 12 Mary Atieno"  # a pregnancy registration: 12 weeks since LMP, the name

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
GUIDE_AFTER = 20.0  # seconds: print the guide by then even if the demo has not got that far


class PlaygroundError(Exception):
    """Something the person running it must fix (a port in use…); one line explains it."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Linux: the child gets SIGTERM if the playground dies without stopping it (kill -9).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port(values: dict[str, str], name: str, default: int) -> int:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise PlaygroundError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise PlaygroundError(f"{name} must be a port number from 1 to 65535, got {raw!r}")
    return port


class Playground:
    def __init__(self, values: dict[str, str], worker_args: list[str]) -> None:
        self.values = values
        self.worker_args = worker_args
        self.couch_port = _port(values, "DEV_COUCH_PORT", DEFAULT_COUCH_PORT)
        self.rapidpro_port = _port(values, "DEV_RAPIDPRO_PORT", DEFAULT_RAPIDPRO_PORT)
        self.worker_port = _port(values, "LISTEN_PORT", 5989)
        if values.get("LISTEN_PORT", "").strip() == "0":  # the stand-in must know where to call
            self.worker_port = self._free_port()
        host = values.get("LISTEN_HOST", "").strip() or "127.0.0.1"
        self.worker_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.service = values.get("OUTGOING_SERVICE_NAME", "").strip() or "rapidpro"
        self.couch_base = f"http://127.0.0.1:{self.couch_port}"
        self.couch_url = f"http://{ADMIN_USER}:{ADMIN_PASS}@127.0.0.1:{self.couch_port}/{DB}"
        self.worker_url = f"http://{self.worker_host}:{self.worker_port}"
        basic = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASS}".encode()).decode()
        self.auth = {"Authorization": f"Basic {basic}"}
        self.couch: asyncio.subprocess.Process | None = None
        self.worker: asyncio.subprocess.Process | None = None
        self.standin: RapidProStandIn | None = None
        self.session: aiohttp.ClientSession | None = None
        self.seeded_uuid = str(uuid.uuid4())
        self.incoming_id: str | None = None
        self.sent = asyncio.Event()
        self.reported = asyncio.Event()
        self.delivered = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    # ------------------------------------------------------------------ the whole run

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("playground_stopping", signal=sig.name)
                stop.set()
            elif self.worker is not None and self.worker.returncode is None:
                log.warning("playground_killing_worker", signal=sig.name)  # asked twice: no more waiting
                self.worker.kill()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, on_signal, sig)
        work = asyncio.create_task(self._main())
        stopper = asyncio.create_task(stop.wait())
        code = 1
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                code = work.result()
            else:
                code = 0  # stopped as asked, before or after the daemon started
        except PlaygroundError as exc:
            log.error("playground_cannot_start", error=str(exc))
            code = 2  # like the daemon's configuration problems: the person must change something
        except Exception as exc:  # a bug of ours or an unforeseen answer: stop everything, say why
            log.error("playground_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            code = 1
        finally:
            stopper.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, PlaygroundError):
                    await work
            worker_code = await self._shutdown()
        return worker_code if worker_code is not None else code

    async def _main(self) -> int:
        self._check_worker_port()
        self.session = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        await self._start_couch()
        self.standin = RapidProStandIn(
            token=API_TOKEN, host="127.0.0.1", port=self.rapidpro_port,
            webhook_url=f"{self.worker_url}/api/v2/sms/rapidpro/incoming-messages", webhook_key=INCOMING_KEY)
        try:
            await self.standin.start()
        except OSError as exc:
            standin, self.standin = self.standin, None
            await standin.stop()
            raise PlaygroundError(f"the RapidPro stand-in cannot listen on port {self.rapidpro_port} "
                                  f"({exc}); set DEV_RAPIDPRO_PORT to a free port") from None
        since = await self._seed()
        self._tasks.append(asyncio.create_task(self._narrate(since), name="narrator"))
        await self._start_worker()
        assert self.worker is not None and self.couch is not None
        if not await self._wait_healthy():
            return await self.worker.wait()
        self._tasks.append(asyncio.create_task(self._demo(), name="demo"))
        couch_exit = asyncio.create_task(self.couch.wait())
        worker_exit = asyncio.create_task(self.worker.wait())
        await asyncio.wait({couch_exit, worker_exit}, return_when=asyncio.FIRST_COMPLETED)
        if not worker_exit.done():
            log.error("playground_couchdb_exited", hint=f"see {DATA_DIR / 'couchdb.log'}")
            couch_exit.cancel()
            worker_exit.cancel()
            return 1
        couch_exit.cancel()
        return worker_exit.result()

    # ------------------------------------------------------------------ the parts

    def _check_worker_port(self) -> None:
        """Say so plainly rather than let the daemon fail to bind after everything else started."""
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon's server does
            try:
                sock.bind((self.worker_host, self.worker_port))
            except OSError as exc:
                raise PlaygroundError(f"the worker cannot listen on {self.worker_host}:{self.worker_port} "
                                      f"({exc.strerror}); set LISTEN_PORT to a free port") from None

    async def _start_couch(self) -> None:
        server_log = self._couch_log()
        try:
            self.couch = await asyncio.create_subprocess_exec(
                "node", str(SERVER_DIR / "server.js"), "--host", "127.0.0.1", "--port", str(self.couch_port),
                "--admin", f"{ADMIN_USER}:{ADMIN_PASS}", "--memory", "--stop-on-stdin-close",
                cwd=SERVER_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=server_log, start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            server_log.close()
        assert self.couch.stdout is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = await self.couch.stdout.readline()
                    if not line:
                        tail = (DATA_DIR / "couchdb.log").read_text(errors="replace")[-300:].strip()
                        raise PlaygroundError(
                            f"the CouchDB-protocol server did not start on port {self.couch_port}: {tail} "
                            "(set DEV_COUCH_PORT to a free port if it is in use)")
                    with contextlib.suppress(ValueError):
                        if json.loads(line).get("event") == "couchdb_test_server_ready":
                            break
        except TimeoutError:
            raise PlaygroundError("the CouchDB-protocol server did not answer within 30 s; "
                                  f"see {DATA_DIR / 'couchdb.log'}") from None
        log.info("playground_couchdb_listening", url=f"{self.couch_base}/{DB}", admin=f"{ADMIN_USER}/***")

    @staticmethod
    def _couch_log() -> Any:
        DATA_DIR.mkdir(exist_ok=True)
        return open(DATA_DIR / "couchdb.log", "ab")  # closed once the child has its own copy

    async def _couch(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.session is not None
        url = f"{self.couch_base}/{path}"
        async with self.session.request(method, url, json=body, headers=self.auth) as r:
            return r.status, await r.json(content_type=None)

    async def _seed(self) -> str:
        """CHT's design docs and translation docs, the settings, one pending message. Returns the
        seq after them."""
        await self._couch("PUT", DB)
        docs = json.loads(DESIGN_DOCS.read_text())["docs"]
        translations = json.loads(TRANSLATION_DOCS.read_text())
        settings = json.loads(SETTINGS.read_text())
        settings["settings"]["sms"] = {"outgoing_service": self.service,
                                       "rapidpro": {"url": self.standin.url if self.standin else ""}}
        now = cht_time(time.time())
        message = {
            "_id": SEEDED_DOC_ID, "type": "data_record", "form": "P",
            "reported_date": int(time.time() * 1000),
            "fields": {"patient_name": "Mary Atieno"}, "errors": [],
            "tasks": [{"state": "pending", "state_history": [{"state": "pending", "timestamp": now}],
                       "messages": [{"uuid": self.seeded_uuid, "to": SEEDED_TO, "message": SEEDED_TEXT}]}],
        }
        status, result = await self._couch("POST", f"{DB}/_bulk_docs",
                                           {"docs": [*docs, *translations, settings, message]})
        if status != 201 or any("error" in item for item in result):
            raise PlaygroundError(f"seeding the medic database failed: {status} {result}")
        log.info("playground_seeded", db=DB, design_docs=len(docs),
                 forms=sorted(settings["settings"]["forms"]),
                 outgoing_service=self.service, rapidpro_url=self.standin.url if self.standin else None)
        log.info("playground_message", doc_id=SEEDED_DOC_ID, message_uuid=self.seeded_uuid,
                 to=mask_phone(SEEDED_TO), state="pending", note="seeded: the worker should send it now")
        _, info = await self._couch("GET", DB)
        return str(info["update_seq"])

    def _worker_settings(self) -> dict[str, str]:
        """What the worker is configured with here (also the env file the guide's commands use)."""
        return {
            "COUCH_URL": self.couch_url,
            "LISTEN_PORT": str(self.worker_port),
            "RAPIDPRO_API_TOKEN": API_TOKEN,
            "RAPIDPRO_INCOMING_KEY": INCOMING_KEY,
            "OUTGOING_SERVICE_NAME": self.service,
            # Where the stand-in's flow reaches the worker (`rapidpro setup` writes it into cht_url).
            "WEBHOOK_PUBLIC_URL": self.values.get("WEBHOOK_PUBLIC_URL", "").strip() or self.worker_url,
        }

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._worker_settings())
        # Delivery shows within seconds rather than a minute; an explicit choice wins.
        if not self.values.get("STATUS_POLL_INTERVAL", "").strip():
            env["STATUS_POLL_INTERVAL"] = "2"
        return env

    async def _start_worker(self) -> None:
        DATA_DIR.mkdir(exist_ok=True)
        ENV_FILE.write_text("".join(f"{name}={value}\n" for name, value in self._worker_settings().items()))
        self.worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", *self.worker_args, cwd=ROOT, env=self._worker_env(),
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)

    async def _wait_healthy(self) -> bool:
        """Until /healthz answers (True), or the worker exits (False)."""
        assert self.worker is not None and self.session is not None
        started = time.monotonic()
        while self.worker.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(f"{self.worker_url}/healthz") as r:
                    if r.status == 200:
                        log.info("playground_worker_healthy", url=f"{self.worker_url}/healthz",
                                 after_s=round(time.monotonic() - started, 1))
                        return True
            if time.monotonic() - started > 60:
                raise PlaygroundError(f"the worker did not answer on {self.worker_url}/healthz within 60 s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self.worker.wait()
        return False

    # ------------------------------------------------------------------ showing the job

    async def _demo(self) -> None:
        assert self.standin is not None
        log.info("playground_incoming_sms", sender=mask_phone(INCOMING_FROM), text=INCOMING_TEXT,
                 note="the stand-in receives an SMS and its flow calls the worker's webhook")
        result = await self.standin.receive(INCOMING_TEXT, INCOMING_FROM)
        self.incoming_id = result.message.uuid
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GUIDE_AFTER):
                await asyncio.gather(self.sent.wait(), self.reported.wait())
        await self._print_guide()

    async def _narrate(self, since: str) -> None:
        """Follow medic's _changes and say what happened to messages and incoming reports."""
        assert self.session is not None
        states: dict[str, tuple[Any, Any]] = {self.seeded_uuid: ("pending", None)}
        reports: set[str] = set()
        while True:
            try:
                params = {"feed": "longpoll", "since": since, "include_docs": "true", "timeout": "25000"}
                async with self.session.get(f"{self.couch_base}/{DB}/_changes", params=params,
                                            headers=self.auth, timeout=aiohttp.ClientTimeout(total=40)) as r:
                    page = await r.json(content_type=None)
                since = str(page["last_seq"])
                for row in page.get("results", []):
                    doc = row.get("doc") or {}
                    if not row.get("deleted"):
                        self._narrate_doc(doc, states, reports)
            except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                log.debug("playground_changes_retry", error=str(exc))
                await asyncio.sleep(1)

    def _narrate_doc(self, doc: dict[str, Any], states: dict[str, tuple[Any, Any]],
                     reports: set[str]) -> None:
        doc_id = doc.get("_id")
        sms = doc.get("sms_message")
        if doc.get("type") == "data_record" and isinstance(sms, dict) and doc_id not in reports:
            reports.add(doc_id)
            log.info("playground_report_stored", doc_id=doc_id, form=doc.get("form"),
                     fields=doc.get("fields"),
                     errors=[e.get("code") for e in doc.get("errors") or [] if isinstance(e, dict)],
                     sender=mask_phone(str(doc.get("from") or "")), gateway_ref=sms.get("gateway_ref"))
            if self.incoming_id is not None and sms.get("gateway_ref") == self.incoming_id:
                self.reported.set()
        for kind in ("tasks", "scheduled_tasks"):
            for task in doc.get(kind) or []:
                if not isinstance(task, dict):
                    continue
                for message in task.get("messages") or []:
                    key = message.get("uuid") if isinstance(message, dict) else None
                    if not isinstance(key, str):
                        continue
                    now = (task.get("state"), task.get("state_details"))
                    if states.get(key) == now:
                        continue
                    states[key] = now
                    log.info("playground_message", doc_id=doc_id, message_uuid=key,
                             to=mask_phone(str(message.get("to") or "")), state=now[0], state_details=now[1],
                             gateway_ref=task.get("gateway_ref"))
                    if key == self.seeded_uuid and task.get("gateway_ref"):
                        self.sent.set()
                    if key == self.seeded_uuid and now[0] == "delivered":
                        self.delivered.set()
                        log.info("playground_seeded_message_delivered", message_uuid=key,
                                 note="sent through RapidPro and followed to delivered")

    async def _optional(self) -> tuple[bool, bool]:
        """Whether this version has `/metrics` and the `status` command (the guide names only those)."""
        assert self.session is not None
        metrics = False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.get(f"{self.worker_url}/metrics") as r:
                metrics = r.status == 200
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "status", "--help", cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return metrics, await probe.wait() == 0

    async def _print_guide(self) -> None:
        assert self.standin is not None
        metrics, status_command = await self._optional()
        post = f"curl -s -u {ADMIN_USER}:{ADMIN_PASS} -H 'Content-Type: application/json' -X POST"
        doc = json.dumps({"type": "data_record", "tasks": [{"state": "pending", "messages": [
            {"uuid": "my-first-message", "to": "+254712345679", "message": "Hello from my playground"}]}]})
        lines = [
            "",
            "── The playground is running ─────────────────────────────────────────────────",
            f"  CHT's CouchDB (in memory)  {self.couch_base}/{DB}   admin {ADMIN_USER}/{ADMIN_PASS}",
            f"  RapidPro stand-in          {self.standin.url}   API token {API_TOKEN}",
            f"  the worker                 {self.worker_url}   webhook key {INCOMING_KEY}",
            "",
            "  The seeded message reaches `delivered` when status tracking next asks RapidPro about it",
            "  (README: Status tracking); look for playground_seeded_message_delivered.",
            "",
            "  Send an SMS: add a CHT doc with a pending message (the same uuid is never sent twice):",
            f"    {post} {self.couch_base}/{DB} \\",
            f"         -d '{doc}'",
            "  Receive an SMS: it reaches the stand-in, whose flow calls the worker's webhook:",
            f"    curl -s -X POST {self.standin.receive_url} \\",
            "         --data-urlencode from=+254722000111 --data-urlencode 'text=N 12345 F 20 Jane Cho'",
            "  See the messages and reports (CHT data_records):",
            f"    {post} {self.couch_base}/{DB}/_find \\",
            """         -d '{"selector": {"type": "data_record"}}'""",
            "  Ask the worker:",
            f"    curl -s {self.worker_url}/healthz",
        ]
        if metrics:
            lines.append(f"    curl -s {self.worker_url}/metrics")
        if status_command:
            lines.append(f"    COUCH_URL={self.couch_url} LISTEN_PORT={self.worker_port} "
                         ".venv/bin/cht-rapidpro-worker status")
        env_file, flow_file = ENV_FILE.relative_to(ROOT), FLOW_FILE.relative_to(ROOT)
        command = f".venv/bin/cht-rapidpro-worker {{}} --env-file {env_file}"
        lines += [
            "  RapidPro's side, as on a real workspace: the globals and the flow to import (README:",
            "  Setting up RapidPro), the import page, then `check` (all ok but, on cgroup v1, `limits`):",
            "    " + command.format(f"rapidpro setup --dry-run --output {flow_file}"),
            "    " + command.format(f"rapidpro setup --output {flow_file}"),
            f"    curl -s -H 'Authorization: Token {API_TOKEN}' -F file=@{flow_file} "
            f"{self.standin.url}/orgimport/create/",
            "    " + command.format("check"),
            "  The stand-in's Android channel as the worker watches it: `rapidpro.channels` in /healthz, and",
            f"    curl -s {self.worker_url}/metrics | grep channel",
        ]
        lines += ["  Ctrl-C stops the worker, the stand-in and the CouchDB server (nothing is kept).",
                  "──────────────────────────────────────────────────────────────────────────────", ""]
        print("\n".join(lines), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ stopping

    async def _shutdown(self) -> int | None:
        """Worker first (its orderly shutdown still writes to CouchDB), then the rest."""
        code: int | None = None
        if self.worker is not None:
            if self.worker.returncode is None:
                self.worker.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(self._shutdown_timeout() + 10):
                    code = await self.worker.wait()
            except TimeoutError:
                log.warning("playground_worker_killed", reason="did not stop in time")
                self.worker.kill()
                code = await self.worker.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.standin is not None:
            await self.standin.stop()
        if self.couch is not None:
            if self.couch.returncode is None:
                self.couch.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.couch.wait()
            except TimeoutError:
                self.couch.kill()
                await self.couch.wait()
        if self.session is not None:
            await self.session.close()
        ENV_FILE.unlink(missing_ok=True)
        log.info("playground_stopped", worker_exit_code=code)
        return code

    def _shutdown_timeout(self) -> float:
        try:
            return float(self.values.get("SHUTDOWN_TIMEOUT", "") or 7)
        except ValueError:
            return 7.0


def main() -> int:
    try:
        values = read_environment(None)
    except ConfigError as exc:
        print(f"playground: {exc}", file=sys.stderr)
        return 2
    level = (values.get("LOG_LEVEL") or "info").strip().lower()
    fmt = (values.get("LOG_FORMAT") or "").strip().lower() or ("console" if sys.stdout.isatty() else "json")
    configure_logging(level if level in ("debug", "info", "warning", "error") else "info",
                      fmt if fmt in ("json", "console") else "json")
    try:
        playground = Playground(values, sys.argv[1:])
    except PlaygroundError as exc:
        log.error("playground_cannot_start", error=str(exc))
        return 2
    return asyncio.run(playground.run())


if __name__ == "__main__":
    sys.exit(main())
