"""Deploy smoke test of the Docker image: builds it and runs it for real, as an operator would.

    sudo .venv/bin/python -m deploy.smoke.docker_image --couch-url http://admin:PASS@127.0.0.1:5984

Needs root, a running Docker engine (Debian: docker.io), debootstrap and, for the Compose check,
docker-compose (Compose v1, Debian 12's) and/or the `docker compose` plugin (v2). No registry is
needed: when the Dockerfile's base image (FROM) is not in the engine already, a stand-in is made
with debootstrap (Debian 12 with its python3 and python3-venv, plus the host's local CA
certificates) and given that name for the build only. Pip reaches the package index through
`docker build --network=host`.

Checks, one line each, then `N passed, N failed` (exit status 1 on any failure):
  compose_file_loads      deploy/docker-compose.yml loads with every Compose installed (v1 and v2)
  image_builds            `docker build` of the project succeeds (time, size)
  image_has_the_lock      the image's packages are exactly requirements.lock's (and the project)
  runs_confined           read-only root, uid 10001, no capabilities, no new privileges
  ready                   /readyz answers 200 (time from `docker run`)
  sends_message           a pending CHT message is sent through the RapidPro stand-in
  stores_incoming_sms     an SMS arriving at the stand-in is stored as a CHT report
  healthy                 Docker's healthcheck (the image's HEALTHCHECK) says healthy
  resource_limits_logged  the start-up line resource_limits shows the container's 512 MiB / 64 tasks
  stops_cleanly           `docker stop` ends it with exit status 0 before the grace period

The container runs with the confinement and limits deploy/docker-compose.yml gives the service
(read from it: read_only, tmpfs, cap_drop, security_opt, mem_limit, pids_limit,
stop_grace_period) and its secrets as files in /run/secrets, but on the host's network, so it
reaches a CouchDB on 127.0.0.1; the worker listens on loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a file: make `deploy.smoke` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.smoke.common import (
    API_TOKEN,
    INCOMING_KEY,
    WEBHOOK_PATH,
    Checks,
    SmokeCouch,
    StandIn,
    copy_source,
    couch_url_argument,
    debootstrap_tarball,
    free_port,
    http_status,
    json_lines,
    missing_tools,
    note,
    quiet_logs,
    send_and_receive,
    sh,
    smoke_main,
    start_rapidpro_standin,
    wait_for,
)

IMAGE = "cht-rapidpro-worker:smoke"
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates"]
UID = "10001"  # the Dockerfile's USER
SERVICE = "rapidpro-worker"
SECRETS = ("couch-url", "couch-secret", "rapidpro-token", "rapidpro-incoming-key")
OWN_PACKAGES = {"cht-rapidpro-worker", "pip"}  # in the image beside the lock's
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHECKS = ["compose_file_loads", "image_builds", "image_has_the_lock", "runs_confined", "ready",
          "sends_message", "stores_incoming_sms", "healthy", "resource_limits_logged", "stops_cleanly"]


async def compose_loads(checks: Checks, source: Path) -> None:
    compose_file = source / "deploy" / "docker-compose.yml"
    results = []
    for label, command in (("Compose v1 (docker-compose)", ["docker-compose"]),
                           ("Compose v2 (docker compose)", ["docker", "compose"])):
        version = await sh(*command, "version", "--short")
        if version.rc != 0:
            results.append((label, None, "not installed"))
            continue
        loaded = await sh(*command, "-f", compose_file, "config", "-q", cwd=compose_file.parent)
        results.append((label, loaded.rc == 0, f"{version.out.strip()} " +
                        ("loads it" if loaded.rc == 0 else f"refuses it: {loaded.tail}")))
    tried = [ok for _, ok, _ in results if ok is not None]
    checks.record("compose_file_loads", bool(tried) and all(tried),
                  "; ".join(f"{label}: {detail}" for label, _, detail in results))


def lock_pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[_normal(match[1])] = match[2]
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


@dataclass(frozen=True)
class ServiceSettings:
    run_args: list[str]
    memory: int
    tasks: int
    grace: int  # seconds


def compose_service(compose_file: Path) -> ServiceSettings:
    """`docker run` arguments for the confinement and limits the compose file gives the worker."""
    service = yaml.safe_load(compose_file.read_text())["services"][SERVICE]
    args = ["--read-only"] if service.get("read_only") else []
    for key, flag in (("tmpfs", "--tmpfs"), ("cap_drop", "--cap-drop"), ("security_opt", "--security-opt")):
        for value in service.get(key) or []:
            args += [flag, str(value)]
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    raw = str(service["mem_limit"]).lower()
    memory = int(raw[:-1]) * units[raw[-1]] if raw[-1] in units else int(raw)
    tasks = int(service["pids_limit"])
    grace = int(str(service.get("stop_grace_period", "10s")).removesuffix("s"))
    return ServiceSettings([*args, "--memory", str(memory), "--pids-limit", str(tasks)], memory, tasks, grace)


def from_image(dockerfile: Path) -> str:
    match = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no FROM line in {dockerfile}")
    return match[1]


async def base_image(work_dir: Path, wanted: str, mirror: str) -> tuple[str, bool]:
    """The Dockerfile's FROM image, and whether this run gave that name to a stand-in (to untag)."""
    if (await sh("docker", "image", "inspect", wanted)).rc == 0:
        note(f"building on the engine's own {wanted}")
        return wanted, False
    tarball = await debootstrap_tarball(work_dir, BASE_PACKAGES, mirror)
    standin = f"cht-rapidpro-smoke-base:{tarball.stem.rsplit('-', 1)[-1]}"
    if (await sh("docker", "image", "inspect", standin)).rc != 0:
        note(f"docker import {tarball} as {standin}")
        imported = await sh("docker", "import", "-c", f"ENV PATH={SYSTEM_PATH}", "-c", "ENV LANG=C.UTF-8",
                            "-c", 'CMD ["python3"]', tarball, standin, timeout=600)
        if imported.rc != 0:
            raise RuntimeError(f"docker import failed: {imported.tail}")
    tagged = await sh("docker", "tag", standin, wanted)
    if tagged.rc != 0:
        raise RuntimeError(f"docker tag failed: {tagged.tail}")
    note(f"{wanted} is not in this engine: building on {standin} (Debian's python3) under that name")
    return wanted, True


async def build(checks: Checks, args: argparse.Namespace, source: Path) -> bool:
    """Check `image_builds`: from a copy of the project as a fresh clone has it, so nothing else
    rides in the build context."""
    context = Path(tempfile.mkdtemp(prefix="context-", dir=args.work_dir))
    copy_source(source, context)
    untag = None
    try:
        base, ours = await base_image(args.work_dir, from_image(context / "Dockerfile"), args.mirror)
        untag = base if ours else None
        note(f"docker build -t {IMAGE} (pip reaches the index through the host's network)")
        # BuildKit where the buildx plugin is installed; otherwise the engine's own builder
        # (Debian 12's docker.io has no buildx, and newer clients refuse to build without it).
        buildkit = "1" if (await sh("docker", "buildx", "version")).rc == 0 else "0"
        started = time.monotonic()
        built = await sh("docker", "build", "--network=host", "-t", IMAGE, context, timeout=1800,
                         env={**os.environ, "DOCKER_BUILDKIT": buildkit})
        elapsed = time.monotonic() - started
    finally:
        if untag:
            await sh("docker", "rmi", untag)  # the stand-in keeps its own name; the FROM name goes
        shutil.rmtree(context, ignore_errors=True)
    if built.rc != 0:
        return checks.record("image_builds", False, f"docker build failed: {built.tail}")
    size = int((await sh("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE)).out or 0)
    return checks.record("image_builds", True, f"{elapsed:.0f} s, {size / 1e6:.0f} MB, from {base}")


async def has_the_lock(checks: Checks, source: Path) -> None:
    listed = await sh("docker", "run", "--rm", "--network=none", "--entrypoint", "python", IMAGE,
                      "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    installed = {_normal(p["name"]): p["version"] for p in json.loads(listed.out or "[]")}
    pins = lock_pins(source / "requirements.lock")
    wrong = sorted(f"{name} {installed.get(name, 'missing')} (lock {version})"
                   for name, version in pins.items() if installed.get(name) != version)
    wrong += sorted(f"{name} (not in the lock)" for name in set(installed) - set(pins) - OWN_PACKAGES)
    ok = listed.rc == 0 and not wrong
    checks.record("image_has_the_lock", ok,
                  f"{len(pins)} pinned packages at their locked versions, plus the project "
                  f"{installed.get('cht-rapidpro-worker')}" if ok
                  else f"differs from requirements.lock: {wrong} {listed.tail if listed.rc else ''}")


def write_secrets(directory: Path, couch_url: str) -> list[str]:
    """As deploy/docker-compose.yml says: one file per secret, readable by the image's user only;
    the `docker run` arguments that mount each as its own file, as Compose does."""
    for name, value in zip(SECRETS, (couch_url, "", API_TOKEN, INCOMING_KEY), strict=True):
        (directory / name).write_text(value)
        os.chown(directory / name, int(UID), int(UID))
        (directory / name).chmod(0o600)
    return [arg for name in SECRETS for arg in ("-v", f"{directory / name}:/run/secrets/{name}:ro")]


async def run(args: argparse.Namespace) -> int:
    checks = Checks()
    missing = missing_tools({"docker": "docker.io", "debootstrap": "debootstrap"})
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}")
    if os.geteuid() != 0:
        raise SystemExit("run as root (debootstrap, docker)")
    engine = await sh("docker", "info", "-f", "{{.ServerVersion}} cgroup v{{.CgroupVersion}}")
    if engine.rc != 0:
        raise SystemExit("no Docker engine answers: start it (systemctl start docker; without systemd: "
                         f"dockerd >/var/log/dockerd.log 2>&1 &): {engine.tail}")
    couch_url = couch_url_argument(args.couch_url)
    source = args.source.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    quiet_logs()
    note(f"Docker engine {engine.out.strip()}; CouchDB {couch_url.split('@')[-1]}; source {source}")

    await compose_loads(checks, source)
    try:
        built = await build(checks, args, source)
    except RuntimeError as exc:  # no base image could be made
        checks.not_run(CHECKS[1:], str(exc))
        return checks.summary()
    if not built:
        checks.not_run(CHECKS[2:], "no image")
        return checks.summary()
    await has_the_lock(checks, source)

    settings = compose_service(source / "deploy" / "docker-compose.yml")
    operator_port, public_port = free_port(), free_port()
    standin = await start_rapidpro_standin(f"http://127.0.0.1:{public_port}{WEBHOOK_PATH}")
    couch = SmokeCouch(couch_url)
    secrets = Path(tempfile.mkdtemp(prefix="secrets-"))
    container = f"cht-rapidpro-smoke-{couch.name.removeprefix('smoke-')}"
    try:
        await couch.create(standin.url)
        started = time.monotonic()
        ran = await sh(
            "docker", "run", "-d", "--name", container, *settings.run_args, "--network", "host",
            "-e", "LISTEN_HOST=127.0.0.1", "-e", f"LISTEN_PORT={operator_port}",
            "-e", "WEBHOOK_LISTEN_HOST=127.0.0.1", "-e", f"WEBHOOK_LISTEN_PORT={public_port}",
            "-e", "LOG_FORMAT=json", "-e", "INSTANCE_ID=smoke-docker", *write_secrets(secrets, couch.url),
            IMAGE)
        if ran.rc != 0:
            checks.not_run(CHECKS[3:], f"docker run failed: {ran.tail}")
            return checks.summary()
        await check_container(checks, container, settings, operator_port, started, couch, standin)
    finally:
        if not args.keep:
            await sh("docker", "rm", "-f", container)
        await standin.stop()
        await couch.drop()
        shutil.rmtree(secrets, ignore_errors=True)
    return checks.summary()


async def check_container(checks: Checks, container: str, settings: ServiceSettings, port: int,
                          started: float, couch: SmokeCouch, standin: StandIn) -> None:
    ready = await wait_for(lambda: _ready(port), 60)
    ready_after = time.monotonic() - started

    probe = await sh("docker", "exec", container, "python", "-c", CONFINEMENT_PROBE)
    facts = json.loads(probe.out) if probe.rc == 0 else {}
    zero = "0" * 16
    confined = (probe.rc == 0 and set(facts["uid"]) == {UID} and set(facts["gid"]) == {UID}
                and facts["cap_eff"] == facts["cap_prm"] == facts["cap_bnd"] == zero
                and facts["no_new_privs"] == "1" and facts["write"] == "Read-only file system"
                and await inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true")
    checks.record("runs_confined", confined,
                  f"uid/gid {UID}, CapEff/CapPrm/CapBnd 0, NoNewPrivs 1, "
                  f"writing /opt/venv: {facts.get('write')}" if confined
                  else f"process 1: {facts or probe.tail}")

    if ready:
        checks.record("ready", True, f"/readyz 200 {ready_after:.1f} s after docker run")
        await send_and_receive(checks, couch, standin, "Docker image")
    else:
        logs = await sh("docker", "logs", container)
        state = await inspect(container, "{{.State.Status}}")
        checks.record("ready", False, f"/readyz not 200 within 60 s; container {state}: "
                      f"{(logs.out + logs.err)[-600:]}")
        checks.not_run(["sends_message", "stores_incoming_sms"], "not ready")

    note("waiting for Docker's first healthcheck (the image's HEALTHCHECK runs every 30 s)")
    health = await wait_for(lambda: _healthy(container), 100, 2)
    checks.record("healthy", health is not None,
                  f"health {health} {time.monotonic() - started:.0f} s after docker run" if health
                  else f"health {await inspect(container, '{{.State.Health.Status}}')} after 100 s")

    logs = await sh("docker", "logs", container)
    lines = [e for e in json_lines(logs.out + logs.err) if e.get("event") == "resource_limits"]
    limits = lines[0] if lines else {}
    checks.record("resource_limits_logged",
                  limits.get("memory_max") == settings.memory and limits.get("tasks_max") == settings.tasks
                  and limits.get("enforced") is True,
                  json.dumps(limits, sort_keys=True) if lines else "no resource_limits line at start")

    started = time.monotonic()
    stopped = await sh("docker", "stop", "-t", str(settings.grace), container)
    took = time.monotonic() - started
    code = await inspect(container, "{{.State.ExitCode}}")
    logs = await sh("docker", "logs", "--tail", "5", container)
    last = [e.get("event") for e in json_lines(logs.out + logs.err)]
    checks.record("stops_cleanly",
                  stopped.rc == 0 and code == "0" and took < settings.grace and "worker_stopped" in last,
                  f"docker stop took {took:.1f} s, exit status {code}, last events {last[-3:]}")


async def inspect(container: str, template: str) -> str:
    return (await sh("docker", "inspect", "-f", template, container)).out.strip()


async def _ready(port: int) -> bool:
    return await http_status(f"http://127.0.0.1:{port}/readyz") == 200


async def _healthy(container: str) -> str | None:
    status = await inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    return status if status == "healthy" else None


CONFINEMENT_PROBE = """
import json
status = dict(l.split(':\\t', 1) for l in open('/proc/1/status').read().splitlines() if ':\\t' in l)
try:
    open('/opt/venv/smoke-write-test', 'w')
    write = 'written'
except OSError as exc:
    write = exc.strerror
print(json.dumps({'uid': status['Uid'].split(), 'gid': status['Gid'].split(), 'cap_eff': status['CapEff'],
                  'cap_prm': status['CapPrm'], 'cap_bnd': status['CapBnd'],
                  'no_new_privs': status['NoNewPrivs'], 'write': write}))
"""


def main() -> int:
    return smoke_main(__doc__ or "", run, source_help="the project to build",
                      keep_help="leave the container for a look afterwards")


if __name__ == "__main__":
    sys.exit(main())
