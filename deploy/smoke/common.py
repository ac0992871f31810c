"""What the deploy smoke tests share (deploy/smoke/docker_image.py, deploy/smoke/systemd_unit.py):
the check list they print, a CHT-like database on the CouchDB they are given, the playground's
RapidPro stand-in, and a cached Debian 12 root file system made with debootstrap.

Run by hand, as root, on a Debian 12 machine (docs/development.md, "Deploy smoke tests"); not part of CI or of
the installed package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # playground/ and tests.support are not part of the installed package

from playground.rapidpro_standin import RapidProStandIn  # noqa: E402
from tests.support.couch_fixtures import (  # noqa: E402
    couch_request,
    create_db,
    delete_db,
    load_example_settings,
    put_settings,
    seed_design_docs,
)
from transitions.cht.timestamps import cht_time  # noqa: E402
from transitions.incoming.record import doc_id_for  # noqa: E402
from worker.logs import configure_logging  # noqa: E402

T = TypeVar("T")
StandIn = RapidProStandIn

SUITE = "bookworm"  # Debian 12, what the unit and the image were written for
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_WORK_DIR = Path("/var/tmp/cht-rapidpro-smoke")
# Where Debian (and Ubuntu) keep locally added CA certificates (update-ca-certificates(8)): a
# machine behind a TLS-inspecting proxy needs them in the test system too, to reach the package index.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
API_TOKEN = "smoke-api-token"
INCOMING_KEY = "smoke-incoming-key"
WEBHOOK_PATH = "/api/v2/sms/rapidpro/incoming-messages"


# ---------------------------------------------------------------------------- the check list
class Checks:
    """Prints one line per check as it is decided, then `N passed, N failed`."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def record(self, name: str, ok: bool, detail: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {name}: {' '.join(detail.split())}", flush=True)
        return ok

    def not_run(self, names: Iterable[str], reason: str) -> None:
        for name in names:
            self.record(name, False, f"not run: {reason}")

    def summary(self) -> int:
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


def quiet_logs() -> None:
    """The stand-in's log lines go to stderr, warnings only: stdout is the check list."""
    configure_logging("warning", "console", stream=sys.stderr)


def note(text: str) -> None:
    """Progress, on stderr: the check lines on stdout stay the report."""
    print(f"smoke: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- processes
@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def tail(self) -> str:
        return (self.err.strip() or self.out.strip())[-600:]


async def sh(*args: str | Path, input: str | None = None, timeout: float = 900, cwd: Path | None = None,
             env: dict[str, str] | None = None, quiet: bool = True) -> Result:
    """Runs a command; its output is returned (and, with quiet=False, also shown on stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args), cwd=cwd, env=env,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(input.encode() if input is not None else None)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Result(124, "", f"timed out after {timeout:g} s: {' '.join(map(str, args))}")
    result = Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
    if not quiet:
        sys.stderr.write(result.out + result.err)
    return result


def missing_tools(tools: dict[str, str]) -> list[str]:
    """`tool (Debian package)` for each tool not on PATH."""
    return [f"{tool} (apt-get install {package})" for tool, package in tools.items()
            if shutil.which(tool) is None]


async def wait_for(probe: Callable[[], Awaitable[T | None]], timeout: float,
                   interval: float = 0.25) -> T | None:
    """The probe's first truthy answer within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_status(url: str, timeout: float = 3.0) -> int | None:
    status, _ = await asyncio.to_thread(_get, url, timeout)
    return status


def _get(url: str, timeout: float) -> tuple[int | None, Any]:
    try:
        return couch_request("GET", url, timeout=timeout)
    except OSError:
        return None, None


def json_lines(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line[line.find("{"):]) if "{" in line else None
            if isinstance(event, dict):
                events.append(event)
    return events


# ---------------------------------------------------------------------------- CouchDB
def couch_url_argument(raw: str | None) -> str:
    url = (raw or os.environ.get("SMOKE_COUCH_URL") or os.environ.get("TEST_COUCH_URL") or "").strip()
    if not url:
        raise SystemExit("give the CouchDB to use: --couch-url http://admin:PASS@127.0.0.1:5984 (an Apache "
                         "CouchDB 3 with admin credentials; SMOKE_COUCH_URL or TEST_COUCH_URL work too)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--couch-url must be an http(s) URL, got {redact(url)}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", "")).rstrip("/")


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url


class SmokeCouch:
    """A fresh CHT-like medic database of its own (`smoke-<hex>`, with CHT's design docs and
    settings sending through the stand-in); it and the worker's sibling databases go at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"smoke-{uuid.uuid4().hex[:8]}"
        self.url = f"{server_url}/{self.name}"  # the worker's COUCH_URL

    async def create(self, rapidpro_url: str) -> None:
        status, body = await asyncio.to_thread(_get, f"{self.server_url}/_up", 5)
        if status != 200:
            raise SystemExit(f"CouchDB at {redact(self.server_url)} does not answer /_up: {status} {body}")
        await asyncio.to_thread(create_db, self.url)
        await asyncio.to_thread(seed_design_docs, self.url)
        settings = load_example_settings()
        settings["sms"] = {"outgoing_service": "rapidpro", "rapidpro": {"url": rapidpro_url}}
        await asyncio.to_thread(put_settings, self.url, settings)

    async def drop(self) -> None:
        for suffix in ("", "-vault", "-rapidpro"):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(delete_db, f"{self.server_url}/{self.name}{suffix}")

    async def add_pending_message(self, to: str, text: str) -> str:
        """A CHT doc with one pending outgoing message, as CHT's own transitions write them; its id."""
        doc_id = f"smoke-message-{uuid.uuid4().hex[:8]}"
        history = [{"state": "pending", "timestamp": cht_time(time.time())}]
        doc = {"_id": doc_id, "type": "data_record", "reported_date": int(time.time() * 1000), "errors": [],
               "tasks": [{"state": "pending", "state_history": history,
                          "messages": [{"uuid": str(uuid.uuid4()), "to": to, "message": text}]}]}
        status, body = await asyncio.to_thread(couch_request, "PUT", f"{self.url}/{doc_id}", doc)
        if status not in (201, 202):
            raise RuntimeError(f"writing the message failed: {status} {body}")
        return doc_id

    async def sent_task(self, doc_id: str, timeout: float) -> dict[str, Any] | None:
        """The doc's task once the worker recorded RapidPro's broadcast on it (`gateway_ref`)."""
        async def probe() -> dict[str, Any] | None:
            status, doc = await asyncio.to_thread(couch_request, "GET", f"{self.url}/{doc_id}")
            task = (doc.get("tasks") or [{}])[0] if status == 200 and isinstance(doc, dict) else {}
            return task if task.get("gateway_ref") else None
        return await wait_for(probe, timeout, 0.5)

    async def incoming_report(self, message_uuid: str, timeout: float = 10) -> dict[str, Any] | None:
        """The CHT report the worker stored for a RapidPro message (its id derives from the uuid)."""
        async def probe() -> dict[str, Any] | None:
            url = f"{self.url}/{doc_id_for(message_uuid)}"
            status, doc = await asyncio.to_thread(couch_request, "GET", url)
            return doc if status == 200 and isinstance(doc, dict) else None
        return await wait_for(probe, timeout, 0.5)


# ---------------------------------------------------------------------------- RapidPro
async def start_rapidpro_standin(webhook_url: str | None) -> RapidProStandIn:
    """The playground's RapidPro stand-in on a free loopback port. With `webhook_url`, a built-in
    flow calls it until one is imported; without, the workspace is as RapidPro makes it: incoming
    SMS reach the worker only once the operator has imported the relay flow (`rapidpro setup`)."""
    return await RapidProStandIn(token=API_TOKEN, webhook_url=webhook_url,
                                 webhook_key=INCOMING_KEY if webhook_url else None,
                                 host="127.0.0.1", port=0).start()


async def send_and_receive(checks: Checks, couch: SmokeCouch, standin: StandIn, label: str) -> None:
    """Checks `sends_message` and `stores_incoming_sms`: one pending CHT message goes out through
    RapidPro, one SMS arriving at RapidPro becomes a CHT report."""
    await check_sends(checks, couch, standin, label)
    await check_receives(checks, couch, standin)


async def check_sends(checks: Checks, couch: SmokeCouch, standin: StandIn, label: str) -> bool:
    """Check `sends_message`: one pending CHT message goes out through RapidPro, once."""
    to = "+254712000101"
    doc_id = await couch.add_pending_message(to, f"Smoke test from the {label}: your visit is due tomorrow.")
    started = time.monotonic()
    task = await couch.sent_task(doc_id, timeout=30)
    broadcasts = [b for b in standin.fake.broadcasts if b.urns == [f"tel:{to}"]]
    detail = (f"task {task.get('state')} with gateway_ref {task.get('gateway_ref')} after "
              f"{time.monotonic() - started:.1f} s; {len(broadcasts)} broadcast(s) at RapidPro" if task
              else f"the task got no gateway_ref within 30 s; {len(broadcasts)} broadcast(s)")
    return checks.record("sends_message", task is not None and len(broadcasts) == 1, detail)


async def check_receives(checks: Checks, couch: SmokeCouch, standin: StandIn) -> bool:
    """Check `stores_incoming_sms`: one SMS arriving at RapidPro becomes a CHT report."""
    result = await standin.receive("Smoke test: hello from a phone", "+254722000202")
    report = await couch.incoming_report(result.message.uuid) if result.status is not None else None
    detail = (f"webhook answered {result.status}; report {report['_id']} stored" if report
              else f"webhook answered {result.status} {result.error or result.body}; no report stored")
    return checks.record("stores_incoming_sms", bool(result.status and 200 <= result.status < 300 and report),
                         detail)


# ---------------------------------------------------------------------------- Debian root file systems
def local_ca_files() -> list[Path]:
    return sorted(p for p in LOCAL_CA_DIR.rglob("*.crt") if p.is_file()) if LOCAL_CA_DIR.is_dir() else []


async def debootstrap_tarball(work_dir: Path, packages: list[str], mirror: str) -> Path:
    """A tarball of a minimal Debian 12 with `packages`, the host's local CA certificates and a
    pip that trusts them; made once per package list (and CA set) and kept in `work_dir`."""
    cas = local_ca_files()
    key = hashlib.sha256(json.dumps([SUITE, mirror, sorted(packages)]).encode()
                         + b"".join(p.read_bytes() for p in cas)).hexdigest()[:12]
    tarball = work_dir / f"{SUITE}-{key}.tar"
    if tarball.exists():
        note(f"using the cached root file system {tarball}")
        return tarball
    tree = work_dir / f"{SUITE}-{key}.tree"
    shutil.rmtree(tree, ignore_errors=True)
    note(f"debootstrap {SUITE} ({', '.join(packages)}) into {tree}: a few minutes, once")
    result = await sh("debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, tree,
                      mirror, timeout=1800)
    if result.rc != 0:
        raise RuntimeError(f"debootstrap failed: {result.tail}")
    _add_cas(tree, cas)
    if cas:
        result = await sh("chroot", tree, "update-ca-certificates")
        if result.rc != 0:
            raise RuntimeError(f"update-ca-certificates failed: {result.tail}")
    partial = tarball.with_suffix(".partial")
    result = await sh("tar", "--numeric-owner", "-C", tree, "-cf", partial, ".")
    if result.rc != 0:
        raise RuntimeError(f"tar failed: {result.tail}")
    partial.rename(tarball)
    shutil.rmtree(tree, ignore_errors=True)
    return tarball


def _add_cas(tree: Path, cas: list[Path]) -> None:
    target = tree / "usr/local/share/ca-certificates/smoke-host"
    target.mkdir(parents=True, exist_ok=True)
    for ca in cas:
        shutil.copy(ca, target / ca.name)
    # Debian's pip uses its own CA bundle unless told otherwise (pip's "cert" setting).
    (tree / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (tree / leftovers).glob("*"):
            if path.is_file():
                path.unlink()


def source_files(source: Path) -> list[str]:
    """The project's files as a fresh clone has them (plus uncommitted changes), relative paths."""
    listed = None
    if (source / ".git").exists() and shutil.which("git"):
        with contextlib.suppress(OSError):
            run = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=False)
            if run.returncode == 0:
                listed = [p for p in run.stdout.decode().split("\0") if p and (source / p).is_file()]
    if listed is None:  # an unpacked archive: everything but what a checkout's tools leave behind
        skip = {".venv", ".git", "node_modules", "__pycache__", ".devdata", ".pytest_cache", ".ruff_cache"}
        listed = [str(p.relative_to(source)) for p in source.rglob("*")
                  if p.is_file() and not skip.intersection(p.relative_to(source).parts)]
    return sorted(listed)


def copy_source(source: Path, dest: Path) -> None:
    for rel in source_files(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)


def smoke_main(doc: str, run: Callable[[argparse.Namespace], Awaitable[int]], *, source_help: str,
               keep_help: str) -> int:
    """The command line both smoke scripts share: parse the arguments, run, exit 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--couch-url", help="an Apache CouchDB 3 with admin credentials (or SMOKE_COUCH_URL)")
    parser.add_argument("--source", type=Path, default=ROOT, help=f"{source_help} (default: this checkout)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help=f"where the Debian root file system is cached (default {DEFAULT_WORK_DIR})")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="the Debian mirror for debootstrap")
    parser.add_argument("--keep", action="store_true", help=keep_help)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130
