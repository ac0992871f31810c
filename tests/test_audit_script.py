"""scripts/audit's verdicts, with a stand-in pip-audit that writes a chosen JSON report.

The real pip-audit needs PyPI's vulnerability data, which a test must not depend on; what is
tested here is how the script reads a report: vulnerabilities fail, an allow-listed id needs a
reason, and a service that answered for nothing is reported as an audit not done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AUDIT = ROOT / "scripts" / "audit"

OK = {"name": "aiohttp", "version": "3.14.5", "vulns": []}
SKIPPED = {"name": "yarl", "skip_reason": "Dependency not found on PyPI and could not be audited: yarl"}
VULNERABLE = {"name": "structlog", "version": "1.0", "vulns": [{"id": "PYSEC-0000-1", "fix_versions": []}]}


def run_audit(tmp_path: Path, deps: list[dict], *, exit_status: int = 0, allowlist: str = "",
              mode: str = "") -> subprocess.CompletedProcess[str]:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"dependencies": deps, "fixes": []}))
    stub = tmp_path / "pip-audit"
    # Writes the report where --output says, records its arguments, exits as pip-audit would.
    stub.write_text(f"""#!{sys.executable}
import shutil, sys
args = sys.argv[1:]
open({str(tmp_path / "args")!r}, "w").write(" ".join(args))
shutil.copy({str(report)!r}, args[args.index("--output") + 1])
sys.exit({exit_status})
""")
    stub.chmod(0o755)
    allow = tmp_path / "allow.txt"
    allow.write_text(allowlist)
    env = {**os.environ, "PIP_AUDIT": str(stub), "AUDIT_ALLOWLIST": str(allow), "AUDIT": mode}
    return subprocess.run(["bash", str(AUDIT)], env=env, capture_output=True, text=True, timeout=60)


def test_every_package_checked_and_clean_passes(tmp_path: Path) -> None:
    result = run_audit(tmp_path, [OK, {**OK, "name": "yarl"}])
    assert result.returncode == 0, result.stderr
    assert "2 locked packages checked, no known vulnerabilities" in result.stderr


def test_a_known_vulnerability_fails(tmp_path: Path) -> None:
    result = run_audit(tmp_path, [OK, VULNERABLE], exit_status=1)
    assert result.returncode == 1
    assert "structlog==1.0:PYSEC-0000-1" in result.stderr


def test_an_allowlisted_id_is_passed_to_pip_audit(tmp_path: Path) -> None:
    result = run_audit(tmp_path, [OK], allowlist="PYSEC-0000-1  the worker never calls it\n")
    assert result.returncode == 0, result.stderr
    assert "--ignore-vuln PYSEC-0000-1" in (tmp_path / "args").read_text()


def test_an_allowlisted_id_without_a_reason_fails(tmp_path: Path) -> None:
    result = run_audit(tmp_path, [OK], allowlist="PYSEC-0000-1\n")
    assert result.returncode == 1
    assert "has no reason" in result.stderr


def test_some_packages_unknown_to_pypi_fails(tmp_path: Path) -> None:
    result = run_audit(tmp_path, [OK, SKIPPED])
    assert result.returncode == 1
    assert "1 of 2 locked packages could not be audited" in result.stderr


@pytest.mark.parametrize(("mode", "status"), [("", 0), ("strict", 1)])
def test_no_package_answered_is_said_loudly_and_fails_only_when_strict(
        tmp_path: Path, mode: str, status: int) -> None:
    result = run_audit(tmp_path, [SKIPPED, {**SKIPPED, "name": "aiohttp"}], mode=mode)
    assert result.returncode == status
    assert "audit: NOT DONE" in result.stderr and "nothing was checked" in result.stderr


def test_skip_says_so(tmp_path: Path) -> None:
    result = run_audit(tmp_path, [VULNERABLE], exit_status=1, mode="skip")
    assert result.returncode == 0
    assert "SKIPPED" in result.stderr
