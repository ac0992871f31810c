"""Deploy smoke test of the systemd unit and systemd/install.sh, under a real systemd.

    sudo .venv/bin/python -m deploy.smoke.systemd_unit --couch-url http://admin:PASS@127.0.0.1:5984

Boots Debian 12 (systemd 252, made with debootstrap and cached) in systemd-nspawn, copies the
project into it as a clone made with umask 077 would be, and installs it with
`systemd/install.sh` from a root shell whose umask is 077, as an operator would. The container
shares the host's network, so the worker reaches a CouchDB on 127.0.0.1 and the RapidPro
stand-in this script runs. Needs root, debootstrap, systemd-nspawn (systemd-container) and
nsenter (util-linux). Commands run inside with `nsenter -t <the container's systemd> -a` with a
clean environment; nspawn runs with --register=no --keep-unit, so the host needs no systemd.

The stand-in's workspace starts as RapidPro makes one, without the relay flow or its globals,
as at every new deployment's install; the operator sets it up once the service runs.

Checks, one line each, then `N passed, N failed` (exit status 1 on any failure):
  install_umask_077       install.sh under umask 077 exits 0 and the service user can read the release
  install_without_relay   on that workspace install.sh starts the service: check's lines on the relay
                          are problems, none fatal (README, "What check says")
  active_via_notify       the unit reaches active (running) through READY=1 (Type=notify), time to ready
  status_line             `systemctl status` shows the daemon's STATUS= line
  sends_message           a pending CHT message is sent through the RapidPro stand-in (no flow needed)
  rapidpro_setup          the operator's set-up: `rapidpro setup`, the file imported, then `check`
                          exits 0 with nothing worse than a warning
  stores_incoming_sms     an SMS arriving at the stand-in reaches the worker through the imported
                          flow and is stored as a CHT report
  resource_limits_logged  the start-up line resource_limits says whether MemoryMax=/TasksMax= are in
                          force, as the service's cgroup seen from the host says (a warning if not)
  watchdog_restarts       a SIGSTOPped daemon is killed by the watchdog and restarted
  stops_cleanly           `systemctl stop` ends it with exit status 0
  no_restart_on_exit_2    a configuration error (exit 2) is not restarted
  upgrade                 install.sh upgrade (a newer version) while RapidPro's side has a problem
                          (a stale global): check prints it, the upgrade goes on, restarts; the new
                          code sends
  rollback                install.sh rollback goes back; the old code sends
  uninstall               install.sh uninstall --purge removes the unit, the code and /etc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `deploy.smoke` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.smoke.common import (
    API_TOKEN,
    INCOMING_KEY,
    Checks,
    Result,
    SmokeCouch,
    StandIn,
    check_receives,
    check_sends,
    copy_source,
    couch_url_argument,
    debootstrap_tarball,
    free_port,
    json_lines,
    missing_tools,
    note,
    quiet_logs,
    sh,
    smoke_main,
    start_rapidpro_standin,
    wait_for,
)
from worker.limits import Limits, assess, limit_files

MACHINE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "python3", "python3-venv",
                    "ca-certificates", "curl"]
UNIT = "cht-rapidpro-worker"
PREFIX = Path("/opt/cht-rapidpro-worker")
ETC = Path("/etc/cht-rapidpro-worker")
SRC = Path("/root/cht-rapidpro-worker")  # the operator's clone, inside the machine
NEXT_SRC = Path("/root/cht-rapidpro-worker-next")  # the same with a newer version, for `upgrade`
CLEAN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
             "LANG=C.UTF-8"]
FLOW_FILE = Path("/root/cht-rapidpro-flow.json")  # where the operator's `rapidpro setup` writes
CHECKS = ["install_umask_077", "install_without_relay", "active_via_notify", "status_line", "sends_message",
          "rapidpro_setup", "stores_incoming_sms", "resource_limits_logged", "watchdog_restarts",
          "stops_cleanly", "no_restart_on_exit_2", "upgrade", "rollback", "uninstall"]
RELAY_LINES = ("rapidpro_cht_url", "rapidpro_cht_api_key", "rapidpro_flow")  # check's, on a bare workspace


class Machine:
    """A Debian 12 booted with systemd-nspawn from a directory; commands run in it via nsenter."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.console = root.with_suffix(".console.log")

    async def boot(self) -> None:
        self._start()
        self.init_pid = await wait_for(lambda: asyncio.to_thread(self._find_init), 30, 0.2)
        if self.init_pid is None:
            raise RuntimeError(f"systemd-nspawn started no systemd; see {self.console}")
        # Until its systemd has opened its bus socket, systemctl cannot even ask.
        deadline = time.monotonic() + 120
        while True:
            state = await self.run("systemctl is-system-running --wait", timeout=120)
            if state.out.strip() in ("running", "degraded"):
                return
            # Before its systemd answers, systemctl says "offline" or cannot reach the bus at all.
            starting = state.out.strip() == "offline" or "Failed to connect to bus" in state.err
            if not starting or time.monotonic() > deadline:
                raise RuntimeError(f"the machine did not boot: {state.out.strip()} {state.err.strip()}")
            await asyncio.sleep(0.5)

    def _start(self) -> None:
        with open(self.console, "wb") as console:
            # --register=no --keep-unit: no machined, no host system bus needed (systemd-nspawn(1)).
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--boot", "--directory", str(self.root), "--machine", self.name,
                 "--register=no", "--keep-unit", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)

    def _find_init(self) -> int | None:
        """The machine's systemd: nspawn's child that is pid 1 in its own pid namespace."""
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.nspawn.returncode}; see {self.console}")
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                text = status.read_text()
                fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
                pid_1 = fields.get("NSpid", "").split()[-1:] == ["1"]
                if pid_1 and fields.get("PPid") == str(self.nspawn.pid):
                    return int(status.parent.name)
        return None

    async def run(self, script: str, timeout: float = 900) -> Result:
        """A root shell in the machine, with a clean environment."""
        return await sh("nsenter", "-t", str(self.init_pid), "-a", *CLEAN_ENV, "sh", "-c", script,
                        timeout=timeout)

    async def show(self, *properties: str) -> dict[str, str]:
        shown = await self.run(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in properties))
        return dict(line.split("=", 1) for line in shown.out.splitlines() if "=" in line)

    async def journal(self) -> list[dict[str, Any]]:
        return json_lines((await self.run(f"journalctl -u {UNIT} -o cat --no-pager")).out)

    async def journal_text(self) -> str:
        return (await self.run(f"journalctl -u {UNIT} --no-pager")).out

    def host_pid(self, pid: int) -> int | None:
        """The host's pid of a process the machine calls `pid`."""
        own_ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                nspid = next((line.split()[1:] for line in status.read_text().splitlines()
                              if line.startswith("NSpid:")), [])
                if nspid[-1:] == [str(pid)] and os.readlink(status.parent / "ns" / "pid") == own_ns:
                    return int(status.parent.name)
        return None

    async def poweroff(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        await self.run("systemctl poweroff", timeout=10)
        for _ in range(60):
            if self.nspawn.poll() is not None:
                return
            await asyncio.sleep(0.5)
        os.killpg(self.nspawn.pid, signal.SIGKILL)
        self.nspawn.wait()


async def active(machine: Machine, timeout: float, other_than: str | None = None) -> dict[str, str] | None:
    """The unit's properties once it is active (running), with a main pid other than `other_than`."""
    async def probe() -> dict[str, str] | None:
        props = await machine.show("ActiveState", "SubState", "MainPID", "NRestarts", "Type", "StatusText",
                                   "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
        running = props.get("ActiveState") == "active" and props.get("SubState") == "running"
        return props if running and props.get("MainPID") not in ("0", other_than) else None
    return await wait_for(probe, timeout, 0.5)


def host_limits(machine: Machine, pid: int) -> Limits | None:
    """What the host sees in force on the service's cgroup (its files are not the container's)."""
    host = machine.host_pid(pid)
    if host is None:
        return None
    own = Path(f"/proc/{host}/cgroup").read_text()
    contents = {}
    for paths in limit_files(own).values():
        for path in paths[:1]:  # the process's own cgroup only: the host has no container mount root
            with contextlib.suppress(OSError):
                contents[path] = Path(path).read_text()
    return assess(own, contents)


async def send_one(couch: SmokeCouch, standin: StandIn) -> str | None:
    """The User-Agent of the broadcast the service makes for one new pending message."""
    doc_id = await couch.add_pending_message("+254712000303", "Smoke test: which release sends this?")
    task = await couch.sent_task(doc_id, timeout=30)
    if task is None:
        return None
    posts = [r for r in standin.fake.requests if r.method == "POST" and r.path.endswith("/broadcasts.json")]
    return posts[-1].user_agent if posts else None


def check_lines(output: str) -> dict[str, str]:
    """`check`'s lines in some output: {check: level}."""
    found = {}
    for line in output.splitlines():
        level, _, rest = line.partition(" ")
        if level in ("ok", "warning", "problem", "fatal") and ": " in rest:
            found[rest.split(": ", 1)[0]] = level
    return found


async def set_up_rapidpro(machine: Machine, standin: StandIn) -> tuple[bool, str]:
    """As the README's operator: `rapidpro setup` with the service's configuration, the file it
    writes imported on the workspace's import page, then `check`."""
    cli = (f"CREDENTIALS_DIRECTORY={ETC}/credentials {PREFIX}/current/venv/bin/cht-rapidpro-worker")
    setup = await machine.run(f"cd /root && {cli} rapidpro setup --env-file {ETC}/worker.env "
                              f"--output {FLOW_FILE} 2>&1")
    if setup.rc != 0:
        return False, f"rapidpro setup exited {setup.rc}: {setup.out.strip()[-300:]}"
    imported = await machine.run(f"curl -sS -f -H 'Authorization: Token {API_TOKEN}' -F file=@{FLOW_FILE} "
                                 f"{standin.url}/orgimport/create/ 2>&1")
    if imported.rc != 0:
        return False, f"the import failed (curl {imported.rc}): {imported.out.strip()[-300:]}"
    check = await machine.run(f"{cli} check --env-file {ETC}/worker.env 2>&1")
    said = check_lines(check.out)
    worse = {name: level for name, level in said.items() if level in ("problem", "fatal")}
    summary = next((line for line in check.out.splitlines() if line.startswith("summary: ")), "")
    return (check.rc == 0 and not worse and all(said.get(name) == "ok" for name in RELAY_LINES),
            f"rapidpro setup and the import done; check exited {check.rc}, relay lines "
            f"{ {name: said.get(name) for name in RELAY_LINES} }, {worse or 'no problem'}; {summary}")


async def run(args: argparse.Namespace) -> int:
    checks = Checks()
    missing = missing_tools({"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
                             "nsenter": "util-linux"})
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}")
    if os.geteuid() != 0:
        raise SystemExit("run as root (debootstrap, systemd-nspawn)")
    couch_url = couch_url_argument(args.couch_url)
    source = args.source.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    quiet_logs()
    try:
        tarball = await debootstrap_tarball(args.work_dir, MACHINE_PACKAGES, args.mirror)
    except RuntimeError as exc:
        checks.not_run(CHECKS, str(exc))
        return checks.summary()

    couch = SmokeCouch(couch_url)
    operator_port, public_port = free_port(), free_port()
    standin = await start_rapidpro_standin(None)  # no relay flow until the operator imports it
    root = Path(tempfile.mkdtemp(prefix="machine-", dir=args.work_dir))
    machine = Machine(root, f"smoke-{couch.name.removeprefix('smoke-')}")
    try:
        await couch.create(standin.url)
        note(f"unpacking {tarball} into {root}")
        unpacked = await sh("tar", "--numeric-owner", "-C", root, "-xpf", tarball)
        if unpacked.rc != 0:
            raise RuntimeError(f"tar failed: {unpacked.tail}")
        prepare(root, source, couch.url, operator_port, public_port)
        note(f"booting {machine.name} with systemd-nspawn")
        await machine.boot()
        version = (await machine.run("systemctl --version")).out.split("\n")[0]
        note(f"{version}; installing from {SRC} under umask 077")
        await check_all(checks, machine, couch, standin)
    except RuntimeError as exc:  # the test machine itself failed: every check not run says why
        checks.not_run(CHECKS[checks.passed + checks.failed:], str(exc))
    finally:
        await machine.poweroff()
        await standin.stop()
        await couch.drop()
        if args.keep:
            note(f"kept the machine's files in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            machine.console.unlink(missing_ok=True)
    return checks.summary()


def prepare(root: Path, source: Path, couch_url: str, operator_port: int, public_port: int) -> None:
    """The project as a clone made under umask 077 (files 0600, dirs 0700), a newer copy of it,
    and the settings and secrets an operator writes before installing (RapidPro reaches the
    public door at WEBHOOK_PUBLIC_URL, here on loopback)."""
    for target, bump in ((root / SRC.relative_to("/"), False), (root / NEXT_SRC.relative_to("/"), True)):
        copy_source(source, target)
        if bump:
            pyproject = target / "pyproject.toml"
            pyproject.write_text(re.sub(r'^version = "([^"]+)"', r'version = "\1+smoke"',
                                        pyproject.read_text(), count=1, flags=re.MULTILINE))
        for path in [target, *target.rglob("*")]:
            mode = path.stat().st_mode & 0o700
            path.chmod(mode)
    etc = root / ETC.relative_to("/")
    (etc / "credentials").mkdir(parents=True, mode=0o700)
    # The operator's door and the public one on loopback: the machine shares the host's network.
    (etc / "worker.env").write_text(
        f"LISTEN_HOST=127.0.0.1\nLISTEN_PORT={operator_port}\nWEBHOOK_LISTEN_HOST=127.0.0.1\n"
        f"WEBHOOK_LISTEN_PORT={public_port}\nLOG_FORMAT=json\nINSTANCE_ID=smoke-systemd\n"
        f"WEBHOOK_PUBLIC_URL=http://127.0.0.1:{public_port}\n")
    for name, value in (("couch-url", couch_url), ("couch-secret", ""), ("rapidpro-token", API_TOKEN),
                        ("rapidpro-incoming-key", INCOMING_KEY)):
        (etc / "credentials" / name).write_text(value)
        (etc / "credentials" / name).chmod(0o600)


async def check_all(checks: Checks, machine: Machine, couch: SmokeCouch, standin: StandIn) -> None:
    remaining = list(CHECKS)

    def done(name: str, ok: bool, detail: str) -> bool:
        remaining.remove(name)
        return checks.record(name, ok, detail)

    # 1. Install from a root shell with umask 077.
    installed = await machine.run(f"umask 077 && cd {SRC} && systemd/install.sh install 2>&1", timeout=900)
    # DynamicUser= shares no group with root: only the "other" bits let it read the release.
    unreadable = await machine.run(f"find {PREFIX} \\( -type d ! -perm -o=rx \\) -o "
                                   "\\( -type f ! -perm -o=r \\) | head -n 3")
    ok = installed.rc == 0 and not unreadable.out.strip()
    props = await active(machine, 20)
    if not ok:
        await asyncio.sleep(12)  # past RestartSec=10: is it restarting?
        state = await machine.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
        done("install_umask_077", False, f"install.sh exited {installed.rc}; not readable by others: "
             f"{unreadable.out.split() or 'nothing'}; the unit: {state}; {installed.out.strip()[-200:]}")
        checks.not_run(remaining, "not installed")
        return
    done("install_umask_077", True,
         "install.sh exited 0; everything under /opt readable by the service's user")

    # 1b. The workspace has no relay yet: check says so, and the service starts all the same.
    said = check_lines(installed.out)
    relay = {name: level for name, level in said.items() if name in RELAY_LINES}
    summary = next((line for line in installed.out.splitlines() if line.startswith("summary: ")), "")
    done("install_without_relay", props is not None and set(relay.values()) == {"problem"}
         and "fatal" not in said.values() and summary.startswith("summary: 0 fatal"),
         f"check said {relay or 'nothing on the relay'}; {summary or 'no summary line'}; the service "
         f"{'started' if props else 'did not start'}")

    # 2. Type=notify: active (running) once the daemon said READY=1.
    if props is None:
        state = await machine.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
        done("active_via_notify", False, f"not active (running) within 20 s: {state}")
        checks.not_run(remaining, "the service is not running")
        return
    ready_us = int(props["ActiveEnterTimestampMonotonic"]) - int(props["ExecMainStartTimestampMonotonic"])
    done("active_via_notify", props["Type"] == "notify" and props["NRestarts"] == "0",
         f"active (running), Type={props['Type']}, ready {ready_us / 1e6:.2f} s after exec, "
         f"NRestarts={props['NRestarts']}")

    status = await machine.run(f"systemctl status {UNIT} --no-pager --lines=0")
    line = next((s.strip() for s in status.out.splitlines() if s.strip().startswith("Status:")), "")
    done("status_line", bool(line), line or f"no Status: line in systemctl status: {status.out[-300:]}")

    # 3. The job itself, from inside the sandbox: sending needs no relay flow.
    remaining.remove("sends_message")
    await check_sends(checks, couch, standin, "systemd unit")

    # 3b. The operator sets RapidPro's side up (README, "Setting up RapidPro"), then incoming works.
    done("rapidpro_setup", *await set_up_rapidpro(machine, standin))
    remaining.remove("stores_incoming_sms")
    await check_receives(checks, couch, standin)

    # 4. Defect 3: the start-up line says whether the unit's limits are in force, and it is right.
    lines = [e for e in await machine.journal() if e.get("event") == "resource_limits"]
    seen = host_limits(machine, int(props["MainPID"]))
    described = seen.describe() if seen else "nothing (the service's process not found)"
    if lines and seen:
        event = lines[-1]
        warned = event.get("level") == "warning"
        right = event.get("enforced") is seen.enforced and warned is (not seen.enforced)
        done("resource_limits_logged", right,
             f"{event.get('level')} enforced={event.get('enforced')} memory_max={event.get('memory_max')} "
             f"tasks_max={event.get('tasks_max')} cgroup={event.get('cgroup')}; the host sees {described}")
    else:
        done("resource_limits_logged", False, f"resource_limits lines in the journal: {len(lines)}; "
                                              f"the host sees {described}")

    # 5. The watchdog: a daemon that stops answering is killed and restarted.
    pid = props["MainPID"]
    stopped_at = time.monotonic()
    await machine.run(f"kill -STOP {pid}")
    again = await active(machine, 120, other_than=pid)
    text = await machine.journal_text()
    done("watchdog_restarts", again is not None and "Watchdog timeout" in text,
         f"SIGSTOP pid {pid}: 'Watchdog timeout' logged, active (running) again as pid {again['MainPID']} "
         f"{time.monotonic() - stopped_at:.0f} s later, NRestarts={again['NRestarts']}" if again
         else f"not restarted within 120 s; watchdog in journal: {'Watchdog timeout' in text}")

    # 6. systemctl stop: SIGTERM, an orderly shutdown, exit 0.
    started = time.monotonic()
    stop = await machine.run(f"systemctl stop {UNIT}")
    took = time.monotonic() - started
    after = await machine.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    done("stops_cleanly",
         stop.rc == 0 and after.get("Result") == "success" and after.get("ExecMainStatus") == "0",
         f"systemctl stop took {took:.2f} s; {after}")

    # 7. Exit status 2 (a configuration error) is not restarted.
    env_file = f"{ETC}/worker.env"
    await machine.run(f"cp {env_file} /root/worker.env.good && echo STATUS_POLL_INTERVAL=often >> {env_file}")
    start = await machine.run(f"systemctl start {UNIT}")
    before = (await machine.show("NRestarts"))["NRestarts"]  # a manual start resets it
    await asyncio.sleep(15)  # past RestartSec=10
    failed = await machine.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    done("no_restart_on_exit_2", start.rc != 0 and failed.get("ExecMainStatus") == "2"
         and failed.get("ActiveState") == "failed" and failed.get("NRestarts") == before,
         f"systemctl start exited {start.rc}; 15 s later {failed} (NRestarts just after the start: {before})")
    await machine.run(f"cp /root/worker.env.good {env_file} && systemctl reset-failed {UNIT}; "
                      f"systemctl start {UNIT}")
    first = await active(machine, 30)
    if first is None:
        checks.not_run(remaining, "the service did not start again with the good configuration")
        return
    first_release = (await machine.run(f"readlink -f {PREFIX}/current")).out.strip()

    # 8. Upgrade to a newer version while RapidPro's side has a problem of its own (a stale
    # global, nothing to do with the release), then roll back; each time the code in service sends.
    good_url = standin.workspace.globals["cht_url"].value
    standin.workspace.set_global("cht_url", "https://old.example.org/rapidpro-worker", name="CHT URL")
    upgraded = await machine.run(f"umask 077 && cd {NEXT_SRC} && systemd/install.sh upgrade 2>&1")
    standin.workspace.set_global("cht_url", good_url, name="CHT URL")
    now = await active(machine, 30, other_than=first["MainPID"])
    release = (await machine.run(f"readlink -f {PREFIX}/current")).out.strip()
    agent = await send_one(couch, standin) if now else None
    stale = check_lines(upgraded.out).get("rapidpro_cht_url")
    done("upgrade",
         upgraded.rc == 0 and stale == "problem" and now is not None and "+smoke" in release
         and "+smoke" in (agent or ""),
         f"check said rapidpro_cht_url {stale}; current -> {release}; restarted as pid {now['MainPID']}; "
         f"it sends as {agent!r}" if now
         else f"install.sh upgrade exited {upgraded.rc}: {upgraded.out.strip()[-300:]}")

    rolled = await machine.run(f"cd {NEXT_SRC} && systemd/install.sh rollback 2>&1")
    back = await active(machine, 30, other_than=now["MainPID"] if now else None)
    release = (await machine.run(f"readlink -f {PREFIX}/current")).out.strip()
    agent = await send_one(couch, standin) if back else None
    done("rollback", rolled.rc == 0 and back is not None and release == first_release
         and agent is not None and "+smoke" not in agent,
         f"current -> {release}; restarted as pid {back['MainPID']}; it sends as {agent!r}" if back
         else f"install.sh rollback exited {rolled.rc}: {rolled.out.strip()[-300:]}")

    # 9. Uninstall, /etc too.
    removed = await machine.run(f"cd {SRC} && systemd/install.sh uninstall --purge 2>&1")
    load = (await machine.show("LoadState")).get("LoadState")
    listed = await machine.run(f"ls -d {PREFIX} {ETC} /etc/systemd/system/{UNIT}.service 2>/dev/null")
    left = listed.out.split()
    done("uninstall", removed.rc == 0 and load == "not-found" and not left,
         f"install.sh uninstall --purge exited {removed.rc}; unit {load}; left behind: {left or 'nothing'}")


def main() -> int:
    return smoke_main(__doc__ or "", run, source_help="the project to install",
                      keep_help="keep the machine's files afterwards")


if __name__ == "__main__":
    sys.exit(main())
