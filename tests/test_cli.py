"""The command line, as an operator meets it (subprocess, no server needed)."""

import json
import os
import subprocess
import sys

import pytest

from tests.support.daemon import child_env

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

BASE_ENV = child_env({"PYTHONPATH": os.getcwd()})


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None):
    return subprocess.run([sys.executable, "-m", "worker", *args], env={**BASE_ENV, **(env or {})},
                          capture_output=True, text=True, timeout=30, cwd=cwd)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "COUCH_URL"),
        ({"COUCH_URL": "http://a:b@127.0.0.1:1/medic", "LISTEN_PORT": "port"}, "LISTEN_PORT"),
        ({"COUCH_URL": "ftp://x/medic"}, "COUCH_URL"),
    ],
)
def test_bad_configuration_exits_2_with_one_clear_line(env, variable, tmp_path):
    result = run_cli("run", env=env, cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    event = json.loads(lines[0])
    assert event["event"] == "config_invalid"
    assert event["variable"] == variable
    assert variable in event["error"]
    assert "Traceback" not in result.stderr


def test_missing_env_file_exits_2(tmp_path):
    result = run_cli("run", "--env-file", str(tmp_path / "missing.env"), cwd=str(tmp_path))
    assert result.returncode == 2
    assert "--env-file" in result.stderr


def test_password_never_printed_on_config_error(tmp_path):
    result = run_cli("run", env={"COUCH_URL": "http://admin:topsecret@127.0.0.1:1/Bad"}, cwd=str(tmp_path))
    assert result.returncode == 2
    assert "topsecret" not in result.stderr + result.stdout


def test_help_lists_the_run_subcommand(tmp_path):
    result = run_cli("--help", cwd=str(tmp_path))
    assert result.returncode == 0
    assert "run" in result.stdout
