"""Are the service's memory and task limits in force? (systemd's MemoryMax=/TasksMax=, compose's
mem_limit/pids_limit.)

Both are cgroup limits. With cgroup v2 (the unified hierarchy, Debian 12's default) they are the
files memory.max and pids.max of the process's own cgroup. Where the memory or pids controller is
still a cgroup v1 one (the legacy or hybrid hierarchy), systemd writes memory.limit_in_bytes and
pids.max of that controller's hierarchy instead, and where it may not write them (inside a
container such as systemd-nspawn) it logs that only at debug level (systemd, src/core/cgroup.c:
LOG_LEVEL_CGROUP_WRITE): the service then runs without the limits and nothing says so. So the
process reads what is in force on itself, from the paths /proc/self/cgroup names (cgroups(7)).

`assess` is pure (the files' contents in, a verdict out); `read_limits` reads the files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
# cgroup v1 says "no limit" with the largest page-aligned value (0x7FFFFFFFFFFFF000 on 4 KiB pages).
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Limits:
    hierarchy: str  # "unified" (v2), "hybrid" (v1 controllers beside v2), "legacy" (v1), "unknown"
    memory_max: int | None  # bytes; None: no limit in force (or none could be read)
    tasks_max: int | None

    @property
    def cgroup(self) -> str:
        return {"unified": "v2", "hybrid": "v1 (hybrid)", "legacy": "v1"}.get(self.hierarchy, "unknown")

    @property
    def enforced(self) -> bool:
        return self.memory_max is not None and self.tasks_max is not None

    def describe(self) -> str:
        memory = "no memory limit" if self.memory_max is None else f"memory {self.memory_max / 2**20:g} MiB"
        tasks = f"{self.tasks_max} tasks" if self.tasks_max is not None else "no task limit"
        return f"{memory}, {tasks} (cgroup {self.cgroup})"


def _entries(proc_self_cgroup: str) -> list[tuple[list[str], str]]:
    """(controllers, path) per line of /proc/self/cgroup; v2's line has no controllers."""
    entries = []
    for line in proc_self_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            entries.append(([c for c in parts[1].split(",") if c], parts[2] or "/"))
    return entries


def _hierarchy(entries: list[tuple[list[str], str]]) -> str:
    v1 = any(c and not c[0].startswith("name=") for c, _ in entries)
    v2 = any(not c for c, _ in entries)
    if v1:
        return "hybrid" if v2 else "legacy"
    return "unified" if v2 else "unknown"


def limit_files(proc_self_cgroup: str, root: str = CGROUP_ROOT) -> dict[str, list[str]]:
    """The files holding this process's memory and task limits, most likely first.

    After the process's own cgroup comes the root of the controller's mount: a container without
    a cgroup namespace (Docker on cgroup v1) sees its host path in /proc/self/cgroup, while its
    own cgroup is mounted as the root.
    """
    entries = _entries(proc_self_cgroup)
    files: dict[str, list[str]] = {}
    for controller, v1_file, v2_file in (("memory", "memory.limit_in_bytes", "memory.max"),
                                         ("pids", "pids.max", "pids.max")):
        v1 = next(((c, p) for c, p in entries if controller in c), None)
        v2 = next((p for c, p in entries if not c), None)
        if v1 is not None:
            base, path, name = f"{root}/{','.join(v1[0])}", v1[1], v1_file
        elif v2 is not None:
            base, path, name = root, v2, v2_file
        else:
            continue
        own = f"{base}{path.rstrip('/')}/{name}"
        files[controller] = list(dict.fromkeys([own, f"{base}/{name}"]))
    return files


def _limit(text: str | None, unlimited_from: int | None) -> int | None:
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return None if unlimited_from is not None and value >= unlimited_from else value


def assess(proc_self_cgroup: str, contents: Mapping[str, str]) -> Limits:
    """The limits in force, from /proc/self/cgroup and the contents of those of `limit_files`'
    files that could be read (path -> text)."""
    files = limit_files(proc_self_cgroup)

    def first(controller: str) -> str | None:
        return next((contents[p] for p in files.get(controller, []) if p in contents), None)

    return Limits(hierarchy=_hierarchy(_entries(proc_self_cgroup)),
                  memory_max=_limit(first("memory"), _V1_UNLIMITED),
                  tasks_max=_limit(first("pids"), None))


def read_limits() -> Limits:
    try:
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return Limits("unknown", None, None)
    contents: dict[str, str] = {}
    for paths in limit_files(own).values():
        for path in paths:
            try:
                contents[path] = Path(path).read_text()
            except OSError:
                pass
    return assess(own, contents)


NOT_ENFORCED_HINT = ("the unit sets MemoryMax= and TasksMax=, but this host does not apply them to the "
                     "service (cgroup v1 controllers systemd may not write, e.g. inside a container); "
                     "see docs/deploying.md, 'Running under systemd'")


def check_finding(limits: Limits) -> tuple[str, str]:
    """`check`'s verdict, "ok" or "warning" with the detail. `check` runs in the operator's shell,
    not in the service, so without limits of its own it can only judge the host's cgroups."""
    if limits.enforced:
        return "ok", f"{limits.describe()} in force"
    if limits.hierarchy == "unified":
        return "ok", ("cgroup v2: systemd applies the unit's MemoryMax=/TasksMax= (compose: mem_limit/"
                      "pids_limit); the service logs resource_limits at start")
    return "warning", (f"cgroup {limits.cgroup} here: the unit's MemoryMax=/TasksMax= are applied only where "
                       "systemd may write the cgroup v1 controllers (not inside a container such as "
                       "systemd-nspawn), and nothing else says when they are not; the service logs "
                       "resource_limits at start with what is in force")


def startup_event(limits: Limits, under_systemd: bool) -> tuple[str, dict[str, Any]]:
    """(level, fields) of the `resource_limits` line the daemon logs at start. A warning only
    under systemd, whose unit always asks for limits; elsewhere limits are the runner's choice."""
    fields: dict[str, Any] = {"cgroup": limits.cgroup, "memory_max": limits.memory_max,
                              "tasks_max": limits.tasks_max, "enforced": limits.enforced}
    if under_systemd and not limits.enforced:
        return "warning", {**fields, "hint": NOT_ENFORCED_HINT}
    return "info", fields


def log_resource_limits(log: Any, environ: Mapping[str, str] | None = None) -> None:
    # systemd sets INVOCATION_ID for every service it starts (systemd.exec(5), "Environment").
    env = os.environ if environ is None else environ
    level, fields = startup_event(read_limits(), under_systemd=bool(env.get("INVOCATION_ID")))
    getattr(log, level)("resource_limits", **fields)
