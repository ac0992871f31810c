"""`rapidpro setup` and `check`'s RapidPro side, as an operator runs them (subprocesses) against the
test CouchDB server and the fake RapidPro's workspace (playground/fake_workspace.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from playground.fake_workspace import FakeWorkspace
from playground.rapidpro_import import PROFILES, import_errors
from tests.support.cli import CHT_URL, KEY, PUBLIC_URL, acli, cli, lines_of, rapidpro_settings, unused_port
from tests.support.couch_fixtures import MedicDb, put_settings
from tests.support.rapidpro_fixtures import seed_relay
from transitions.rapidpro.relay_flow import WEBHOOK_BODY

SECRET_KEY = "k3y-0f-the-webhook-7e1d9c"  # distinctive: searched for in everything printed
SECRET_TOKEN = "tok-0f-the-api-5b2a8f"


@pytest.fixture
def env(medic_db: MedicDb, fake_rapidpro: FakeRapidPro) -> dict[str, str]:
    put_settings(medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.valid_tokens.add(SECRET_TOKEN)
    return {"COUCH_URL": medic_db.url, "RAPIDPRO_API_TOKEN": SECRET_TOKEN,
            "RAPIDPRO_INCOMING_KEY": SECRET_KEY, "LISTEN_PORT": str(unused_port()),
            "WEBHOOK_PUBLIC_URL": PUBLIC_URL}


def said(result: Any) -> dict[str, str]:
    """setup's output: {name: detail}, one `name: detail` line each; nothing secret in it."""
    text = result.stdout + result.stderr
    assert SECRET_KEY not in text and SECRET_TOKEN not in text
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def posts(fake: FakeRapidPro) -> list[tuple[str, dict[str, Any]]]:
    return [(r.path + "?" + "&".join(f"{k}={v[0]}" for k, v in r.query.items()), json.loads(r.body))
            for r in fake.requests if r.method == "POST"]


async def test_setup_creates_the_globals_and_writes_the_file_then_changes_nothing(
        env, fake_rapidpro, fake_workspace, tmp_path):
    first = await acli("rapidpro", "setup", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = said(first)
    assert lines["cht_url"] == f"created ({CHT_URL})"
    assert lines["cht_api_key"] == "created (the worker's incoming key, not shown)"
    assert lines["file"].startswith("wrote cht-rapidpro-flow.json")
    assert "import cht-rapidpro-flow.json" in lines["next"] and "/orgimport/create/" in lines["next"]
    assert {key: g.value for key, g in fake_workspace.globals.items()} == {"cht_url": CHT_URL,
                                                                           "cht_api_key": SECRET_KEY}
    assert {g.name for g in fake_workspace.globals.values()} == {"CHT URL", "CHT API Key"}
    assert posts(fake_rapidpro) == [("/api/v2/globals.json?", {"name": "CHT URL", "value": CHT_URL}),
                                    ("/api/v2/globals.json?", {"name": "CHT API Key", "value": SECRET_KEY})]
    written = (tmp_path / "cht-rapidpro-flow.json").read_text()
    assert SECRET_KEY not in written
    export = json.loads(written)
    for profile in PROFILES:
        assert import_errors(export, profile) == [], profile

    # Again: nothing to change, nothing written, no POST.
    fake_rapidpro.requests.clear()
    second = await acli("rapidpro", "setup", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    lines = said(second)
    assert lines["cht_url"].startswith("unchanged") and lines["cht_api_key"].startswith("unchanged")
    assert lines["file"].startswith("cht-rapidpro-flow.json unchanged")
    assert posts(fake_rapidpro) == [] and (tmp_path / "cht-rapidpro-flow.json").read_text() == written

    # The one step left, as the operator does it; then setup has nothing left and check is clean.
    fake_workspace.import_export(export)
    third = said(await acli("rapidpro", "setup", env=env, cwd=tmp_path))
    assert "nothing left to do" in third["done"] and "'CHT Incoming SMS'" in third["flow"]
    check = await acli("check", env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    # `limits` judges this machine's cgroups (a warning on cgroup v1), not the configuration.
    levels = {level for name, (level, _) in lines_of(check).items() if name != "limits"}
    assert levels == {"ok"}, check.stdout
    assert SECRET_KEY not in check.stdout + check.stderr and SECRET_TOKEN not in check.stdout + check.stderr


async def test_an_import_before_setup_leaves_empty_globals_that_setup_fills(
        env, fake_rapidpro, fake_workspace, tmp_path):
    from transitions.rapidpro.relay_flow import relay_export

    fake_workspace.import_export(relay_export(fake_rapidpro.url))  # RapidPro creates them, empty
    assert {key: g.value for key, g in fake_workspace.globals.items()} == {"cht_url": "", "cht_api_key": ""}
    result = await acli("rapidpro", "setup", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = said(result)
    assert lines["cht_url"].startswith("updated") and lines["cht_api_key"].startswith("updated")
    assert [path for path, _ in posts(fake_rapidpro)] == ["/api/v2/globals.json?key=cht_url",
                                                          "/api/v2/globals.json?key=cht_api_key"]
    assert fake_workspace.globals["cht_api_key"].value == SECRET_KEY
    assert "nothing left to do" in lines["done"]


async def test_a_dry_run_says_what_it_would_change_and_changes_nothing(env, fake_rapidpro, fake_workspace,
                                                                      tmp_path):
    fake_workspace.set_global("cht_api_key", "an-old-key", name="CHT API Key")
    result = await acli("rapidpro", "setup", "--dry-run", "--public-url", "https://other.example.org/w/",
                        "--output", "relay.json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = said(result)
    assert lines["cht_url"] == ("would be created "
                                "(https://other.example.org/w/api/v2/sms/rapidpro/incoming-messages)")
    assert lines["cht_api_key"] == "would be updated (the worker's incoming key, not shown)"
    assert lines["file"].startswith("would write relay.json")
    assert lines["dry run"] == "nothing was changed"
    assert "an-old-key" not in result.stdout
    assert posts(fake_rapidpro) == [] and not (tmp_path / "relay.json").exists()
    assert {r.method for r in fake_rapidpro.requests} == {"GET"}
    assert fake_workspace.globals["cht_api_key"].value == "an-old-key"
    assert "cht_url" not in fake_workspace.globals


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda e: e.pop("WEBHOOK_PUBLIC_URL"), "no public URL: set WEBHOOK_PUBLIC_URL or give --public-url"),
    (lambda e: e.update(RAPIDPRO_INCOMING_KEY=""), "no incoming key"),
    (lambda e: e.update(RAPIDPRO_API_TOKEN="not-the-token"), "refused the token"),
])
async def test_setup_stops_with_what_is_missing(env, fake_rapidpro, change, fragment, tmp_path):
    change(env)
    result = await acli("rapidpro", "setup", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert fragment in result.stderr, result.stderr
    assert posts(fake_rapidpro) == [] and not (tmp_path / "cht-rapidpro-flow.json").exists()
    assert "not-the-token" not in result.stderr + result.stdout


def test_the_commands_help(tmp_path):
    for args in (("rapidpro", "--help"), ("rapidpro", "setup", "--help")):
        result = cli(*args, env={}, cwd=tmp_path)
        assert result.returncode == 0 and "usage:" in result.stdout, args
    assert "--dry-run" in cli("rapidpro", "setup", "--help", env={}, cwd=tmp_path).stdout


# ---------------------------------------------------------------------------- check's RapidPro side


def _action(workspace: FakeWorkspace) -> dict[str, Any]:
    return workspace.flow("CHT Incoming SMS").definition["nodes"][0]["actions"][0]


FAULTS: list[tuple[str, Callable[[FakeWorkspace], None], str, str, str]] = [
    ("wrong cht_url", lambda w: w.set_global("cht_url", "https://old.example.org/x"), "rapidpro_cht_url",
     "problem", f"the worker expects {CHT_URL}"),
    ("wrong key", lambda w: w.set_global("cht_api_key", "not-the-key"), "rapidpro_cht_api_key", "problem",
     "not the worker's incoming key"),
    ("flow missing", lambda w: w.flows.clear(), "rapidpro_flow", "problem", "no active messaging flow"),
    ("flow archived", lambda w: setattr(w.flows[0], "archived", True), "rapidpro_flow", "problem",
     "no active messaging flow"),
    ("header missing", lambda w: _action(w)["headers"].pop("Authorization"), "rapidpro_flow", "problem",
     "no Authorization header"),
    ("body wrong", lambda w: _action(w).update(body=WEBHOOK_BODY.replace("input.text", "input")),
     "rapidpro_flow", "problem", 'as "content": send input.text'),
    ("trigger missing", lambda w: w.triggers.clear(), "rapidpro_trigger", "problem", "no catch-all trigger"),
    ("channel asleep", lambda w: w.put_to_sleep(w.channels[0], 2 * 3600), "rapidpro_channels", "warning",
     "may be asleep"),
    ("no channel", lambda w: w.channels.clear(), "rapidpro_channels", "warning", "no channel"),
]


@pytest.mark.parametrize(("fault", "change", "name", "level", "fragment"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_check_finds_each_fault_of_the_rapidpro_side(medic_db, fake_rapidpro, fake_workspace, tmp_path,
                                                            fault, change, name, level, fragment):
    put_settings(medic_db.url, rapidpro_settings(fake_rapidpro.url))
    seed_relay(fake_workspace, cht_url=CHT_URL, key=KEY)
    change(fake_workspace)
    env = {"COUCH_URL": medic_db.url, "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "RAPIDPRO_INCOMING_KEY": KEY,
           "LISTEN_PORT": str(unused_port()), "WEBHOOK_PUBLIC_URL": PUBLIC_URL}
    result = await acli("check", env=env, cwd=tmp_path)
    checks = lines_of(result)
    assert checks[name][0] == level and fragment in checks[name][1], result.stdout
    # Only that line is wrong (`limits` judges this machine's cgroups); a problem fails check, a
    # warning does not.
    assert {n for n, (lvl, _) in checks.items() if lvl != "ok"} - {"limits"} == {name}, result.stdout
    assert result.returncode == (1 if level == "problem" else 0)
    # RapidPro's side never stops an install or an upgrade: the daemon runs and sends meanwhile.
    assert "0 fatal" in result.stdout.splitlines()[-1], result.stdout
    assert (await acli("check", "--for-install", env=env, cwd=tmp_path)).returncode == 0
    as_json = json.loads((await acli("check", "--json", env=env, cwd=tmp_path)).stdout)
    assert {"level": level, "check": name, "detail": checks[name][1]} in as_json["checks"]
    assert not [r for r in fake_rapidpro.requests if r.method == "POST"]


async def test_check_stays_within_the_budget_when_rapidpro_throttles(env, fake_rapidpro, fake_workspace,
                                                                     tmp_path):
    seed_relay(fake_workspace, cht_url=CHT_URL, key=SECRET_KEY)
    fake_rapidpro.throttle_next(1, retry_after=1, path="/api/v2/flows.json")
    result = await acli("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert lines_of(result)["rapidpro_flow"][0] == "ok"
    assert len(fake_rapidpro.requests) == 6  # five reads, one of them repeated after its 429

