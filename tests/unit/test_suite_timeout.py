"""A hung test fails within the suite's timeout (pytest-timeout, configured in pyproject.toml)
instead of eating CI's time: a planted hang, run with the project's own pytest configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HANGS = '''
import asyncio
import time


def test_a_blocking_hang():
    time.sleep(3600)


async def test_an_async_hang():
    await asyncio.Event().wait()
'''


@pytest.mark.timeout(120)
def test_a_planted_hang_fails_within_the_timeout(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_planted_hang.py").write_text(HANGS)
    # The project's configuration with its timeout shortened, so the planted hangs end quickly.
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "timeout=2",
                             "tests/test_planted_hang.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=100, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed" in result.stdout, result.stdout
    for name in ("test_a_blocking_hang", "test_an_async_hang"):
        line = f"FAILED tests/test_planted_hang.py::{name} - Failed: Timeout (>2"
        assert line in result.stdout, result.stdout
