"""systemd/install.sh run for real, without systemd: a stub `systemctl` on PATH, and every path it
writes (PREFIX, ETC, UNIT_DIR) in a directory of the test's. It builds the release and its venv
from requirements.lock, so it takes as long as that (and needs the package index, as the suite's
own set-up does).

Root's umask of 077, a common hardening default, once made the whole release 0700: the service
(DynamicUser=, so only the "other" bits count) then failed with 203/EXEC and restarted for ever.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import rapidpro_settings, unused_port
from tests.support.couch_fixtures import MedicDb, put_settings

ROOT = Path(__file__).resolve().parent.parent
NAME = "cht-rapidpro-worker"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
        reason="install.sh runs as root and checks the release with setpriv"),
]


def _others_may_run(path: Path) -> bool:
    real = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [real, *real.parents])


def _others_may_read(path: Path) -> bool:
    need = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
    return path.stat().st_mode & need == need


def _python_for_the_service() -> str | None:
    """An interpreter with venv that a user with no groups may run (not one under root's 0700 home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(candidate)
        if path.exists() and _others_may_run(path) and subprocess.run(
                [str(path), "-c", "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))"],
                capture_output=True, check=False).returncode == 0:
            return str(path)
    return None


@pytest.fixture
def place() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="install-sh-"))
    base.chmod(0o755)  # as /opt and /etc are: the service's user must get through it
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _install(place: Path, prefix: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """install.sh install from a root shell with umask 077; its result and the systemctl calls."""
    python = _python_for_the_service()
    if python is None:
        pytest.skip("no Python 3.11+ with venv that an unprivileged user may run")
    stub = place / "bin"
    stub.mkdir()
    (stub / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {place}/systemctl.log\n')
    (stub / "systemctl").chmod(0o755)
    (place / "units").mkdir()
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "PREFIX": str(prefix),
           "ETC": str(place / "etc"), "UNIT_DIR": str(place / "units"), "PYTHON": python}
    result = subprocess.run(["sh", "-c", "umask 077 && exec systemd/install.sh install"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
                            check=False)
    log = place / "systemctl.log"
    return result, log.read_text().splitlines() if log.exists() else []


def test_install_under_umask_077_leaves_a_release_the_service_can_read(place: Path) -> None:
    prefix, etc, units = place / "opt", place / "etc", place / "units"
    result, calls = _install(place, prefix)
    assert result.returncode == 0, result.stderr[-2000:]

    release = (prefix / "current").resolve()
    assert release.parent == prefix / "releases"
    unreadable = [str(p) for p in [prefix, prefix / "releases", *release.rglob("*")]
                  if not p.is_symlink() and not _others_may_read(p)]
    assert not unreadable, unreadable[:5]
    writable = [str(p) for p in release.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o022]
    assert not writable, writable[:5]
    assert stat.S_IMODE((units / f"{NAME}.service").stat().st_mode) == 0o644
    # The secrets stay root's alone, whatever the umask.
    assert stat.S_IMODE((etc / "credentials").stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (etc / "credentials").iterdir()} == {0o600}
    # No COUCH_URL configured, so `check` fails: enabled, not started.
    assert calls == ["daemon-reload", f"enable {NAME}"]
    assert "installed but not started" in result.stderr


def test_install_refuses_a_release_the_service_cannot_read(place: Path) -> None:
    # A folder above PREFIX that others may not enter: the script cannot fix that, so it stops
    # before the service is switched to the release or started.
    hidden = place / "hidden"
    hidden.mkdir(mode=0o700)
    result, calls = _install(place, hidden / "opt")
    assert result.returncode != 0
    assert "cannot run" in result.stderr and "unreadable to others" in result.stderr
    assert not (hidden / "opt" / "current").exists()
    assert not list((hidden / "opt" / "releases").iterdir())  # nothing left for `rollback` to pick
    assert calls == []


def test_install_starts_the_service_when_check_finds_only_problems(place: Path, medic_db: MedicDb) -> None:
    # A new deployment: CouchDB and the token are fine, RapidPro's side is not ready (here: not
    # even reachable). check prints the problem; it is not fatal, so the service is started.
    put_settings(medic_db.url, rapidpro_settings(f"http://127.0.0.1:{unused_port()}"))
    etc = place / "etc"
    (etc / "credentials").mkdir(parents=True, mode=0o700)
    (etc / "worker.env").write_text(f"LISTEN_PORT={unused_port()}\n")
    (etc / "credentials" / "couch-url").write_text(medic_db.url)
    (etc / "credentials" / "rapidpro-token").write_text("a-token")
    result, calls = _install(place, place / "opt")
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout
    assert "problem rapidpro:" in said and "summary: 0 fatal, 1 problem" in said, said
    assert calls == ["daemon-reload", f"enable --now {NAME}"]
    assert "do not stop it but need fixing" in result.stderr
