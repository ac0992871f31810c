"""worker/limits.py: which memory and task limits are in force, from /proc/self/cgroup and the
cgroup files it names (contents as the kernel shows them; cgroups(7), the kernel's cgroup-v2 and
cgroup-v1 memory/pids documents)."""

from __future__ import annotations

from worker.limits import Limits, assess, check_finding, limit_files, startup_event

V1_NO_LIMIT = "9223372036854771712\n"  # what memory.limit_in_bytes says when nothing is set

UNIFIED = "0::/system.slice/cht-rapidpro-worker.service\n"
UNIFIED_DIR = "/sys/fs/cgroup/system.slice/cht-rapidpro-worker.service"

# systemd 252's hybrid mode (the one this project's test machine has): v1 controllers, systemd's
# own tracking on the unified hierarchy.
HYBRID = """12:pids:/system.slice/cht-rapidpro-worker.service
11:memory:/system.slice/cht-rapidpro-worker.service
5:cpu,cpuacct:/system.slice/cht-rapidpro-worker.service
1:name=systemd:/system.slice/cht-rapidpro-worker.service
0::/system.slice/cht-rapidpro-worker.service
"""
LEGACY = "\n".join(line for line in HYBRID.splitlines() if not line.startswith("0::")) + "\n"
V1_MEMORY = "/sys/fs/cgroup/memory/system.slice/cht-rapidpro-worker.service/memory.limit_in_bytes"
V1_PIDS = "/sys/fs/cgroup/pids/system.slice/cht-rapidpro-worker.service/pids.max"


def test_cgroup_v2_with_the_units_limits() -> None:
    limits = assess(UNIFIED, {f"{UNIFIED_DIR}/memory.max": "536870912\n", f"{UNIFIED_DIR}/pids.max": "64\n"})
    assert limits == Limits("unified", 536870912, 64)
    assert limits.enforced
    assert limits.describe() == "memory 512 MiB, 64 tasks (cgroup v2)"


def test_cgroup_v2_max_means_no_limit() -> None:
    limits = assess(UNIFIED, {f"{UNIFIED_DIR}/memory.max": "max\n", f"{UNIFIED_DIR}/pids.max": "64\n"})
    assert (limits.memory_max, limits.tasks_max, limits.enforced) == (None, 64, False)


def test_cgroup_v2_without_the_controller_files_has_no_limit() -> None:
    # memory.max exists only where the memory controller is enabled for the cgroup.
    limits = assess(UNIFIED, {f"{UNIFIED_DIR}/pids.max": "64\n"})
    assert limits == Limits("unified", None, 64)


def test_hybrid_reads_the_v1_controllers_not_the_unified_tree() -> None:
    files = limit_files(HYBRID)
    assert files["memory"][0] == V1_MEMORY
    assert files["pids"][0] == V1_PIDS
    limits = assess(HYBRID, {V1_MEMORY: "536870912\n", V1_PIDS: "64\n",
                             f"{UNIFIED_DIR}/memory.max": "1\n"})  # ignored: memory is on v1
    assert limits == Limits("hybrid", 536870912, 64)
    assert limits.cgroup == "v1 (hybrid)"


def test_v1_no_limit_is_the_huge_value() -> None:
    # What systemd-nspawn's container shows when its systemd could not write the limits.
    limits = assess(LEGACY, {V1_MEMORY: V1_NO_LIMIT, V1_PIDS: "max\n"})
    assert limits == Limits("legacy", None, None)
    assert limits.describe() == "no memory limit, no task limit (cgroup v1)"


def test_a_container_sees_its_own_cgroup_as_the_mount_root() -> None:
    # Docker on cgroup v1, no cgroup namespace: /proc/self/cgroup names the host's path, the
    # container's cgroup is mounted as the root of each controller.
    own = "9:pids:/docker/0123abcd\n4:memory:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n"
    files = limit_files(own)
    assert files["memory"] == ["/sys/fs/cgroup/memory/docker/0123abcd/memory.limit_in_bytes",
                               "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    limits = assess(own, {"/sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912",
                          "/sys/fs/cgroup/pids/pids.max": "64"})
    assert limits == Limits("legacy", 536870912, 64)


def test_the_root_cgroup_is_named_once() -> None:
    assert limit_files("0::/\n") == {"memory": ["/sys/fs/cgroup/memory.max"],
                                     "pids": ["/sys/fs/cgroup/pids.max"]}


def test_unreadable_or_odd_contents_mean_no_limit() -> None:
    assert assess("", {}) == Limits("unknown", None, None)
    assert assess(UNIFIED, {f"{UNIFIED_DIR}/memory.max": "lots", f"{UNIFIED_DIR}/pids.max": ""}) == \
        Limits("unified", None, None)


def test_check_is_ok_with_limits_in_force_or_on_cgroup_v2() -> None:
    assert check_finding(Limits("hybrid", 2**29, 64)) == \
        ("ok", "memory 512 MiB, 64 tasks (cgroup v1 (hybrid)) in force")
    # `check` run from a root shell has no limits of its own: on cgroup v2 systemd applies the unit's.
    level, detail = check_finding(Limits("unified", None, None))
    assert level == "ok" and "cgroup v2" in detail


def test_check_warns_on_cgroup_v1_without_limits_in_force() -> None:
    for hierarchy in ("hybrid", "legacy", "unknown"):
        level, detail = check_finding(Limits(hierarchy, None, None))
        assert level == "warning"
        assert "MemoryMax=/TasksMax=" in detail and "resource_limits" in detail


def test_the_start_up_line_warns_only_under_systemd() -> None:
    missing = Limits("hybrid", None, 64)
    level, fields = startup_event(missing, under_systemd=True)
    assert level == "warning"
    assert fields["enforced"] is False and fields["memory_max"] is None and fields["tasks_max"] == 64
    assert "MemoryMax=" in fields["hint"]
    assert startup_event(missing, under_systemd=False)[0] == "info"  # ./scripts/run, a plain docker run
    level, fields = startup_event(Limits("unified", 2**29, 64), under_systemd=True)
    assert level == "info"
    assert fields == {"cgroup": "v2", "memory_max": 2**29, "tasks_max": 64, "enforced": True}
