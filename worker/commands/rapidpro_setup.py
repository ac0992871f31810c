"""`rapidpro setup`: the RapidPro side of the relay in one command.

1. checks the token (`workspace.json`);
2. creates or updates the globals `cht_url` (WEBHOOK_PUBLIC_URL, or `--public-url`, plus the
   webhook's path) and `cht_api_key` (the worker's incoming key; never printed) through
   `POST globals.json`;
3. writes the export file with the relay flow and its catch-all trigger
   (transitions/rapidpro/relay_flow.py) for RapidPro's import page, and
4. says what is left: importing the file, unless the workspace already has a relay flow that
   `check` finds right.

Idempotent: a second run changes nothing and says so. `--dry-run` says what it would change and
changes nothing (reads only). Exit status 1 when something could not be done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from config.env import Config, ConfigError, public_url
from config.settings import SETTINGS_DOC_ID, SettingsError, parse_settings
from transitions.rapidpro.relay_check import OK, Expectation
from transitions.rapidpro.relay_flow import (
    CREATE,
    FLOW_NAME,
    GLOBAL_NAMES,
    KEEP,
    KEY_GLOBAL,
    URL_GLOBAL,
    cht_url_for,
    export_text,
    global_changes,
    relay_export,
)
from worker.commands.command import Command, env_file_parent
from worker.commands.rapidpro_side import (
    command_client,
    command_credentials,
    command_workspace,
    credential_value,
    judge_flow,
)
from worker.couch.client import CouchError, CouchServer
from worker.rapidpro.errors import RapidProError, RapidProUnauthorized
from worker.rapidpro.workspace import Workspace

DEFAULT_OUTPUT = Path("cht-rapidpro-flow.json")


class SetupProblem(Exception):
    """Printed after `problem: `; the setup stops with exit status 1."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{setup}")
    env_file = env_file_parent()
    setup = actions.add_parser(
        "setup", parents=[env_file],
        help="create the globals cht_url and cht_api_key and write the flow to import",
        description="Verifies the token, creates or updates the RapidPro globals cht_url and cht_api_key, "
                    "and writes the export file (the flow that posts each incoming SMS to the worker, and "
                    "a catch-all trigger) to import on RapidPro's import page. Idempotent.")
    setup.add_argument("--public-url", default=None,
                       help="the URL RapidPro reaches the worker at (default: WEBHOOK_PUBLIC_URL); the "
                            "webhook's path is appended")
    setup.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                       help=f"the export file to write (default: ./{DEFAULT_OUTPUT})")
    setup.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")


def main(args: argparse.Namespace, config: Config | None) -> int:
    assert config is not None
    try:
        asyncio.run(_setup(args, config))
    except SetupProblem as exc:
        print(f"problem: {exc}", file=sys.stderr)
        return 1
    return 0


def _say(name: str, detail: str) -> None:
    print(f"{name}: {detail}", flush=True)


async def _setup(args: argparse.Namespace, config: Config) -> None:
    try:
        public = public_url(args.public_url, "--public-url") if args.public_url else config.webhook_public_url
    except ConfigError as exc:
        raise SetupProblem(str(exc)) from None
    if not public:
        raise SetupProblem("no public URL: set WEBHOOK_PUBLIC_URL or give --public-url URL, the address "
                           "RapidPro reaches the worker's webhook at (e.g. https://cht.example.org/rapidpro-worker)")
    cht_url = cht_url_for(public)
    couch = CouchServer(config.couch, timeout=min(config.couch_timeout, 10.0), threads=2)
    try:
        url, token, key = await _from_cht(config, couch)
    finally:
        await couch.close()
    client = command_client(config, "setup")
    try:
        workspace = command_workspace(client, url, token)
        try:
            info = await workspace.info()
        except RapidProUnauthorized as exc:
            raise SetupProblem(f"{url} refused the token: {exc.reason}") from None
        _say("rapidpro", f"{url}: the token belongs to workspace {info.get('name')!r}")
        await _globals(workspace, {URL_GLOBAL: cht_url, KEY_GLOBAL: key}, dry_run=args.dry_run)
        _write(args.output, export_text(relay_export(url)), dry_run=args.dry_run)
        in_place = await _flow_in_place(workspace, Expectation(cht_url, key, config.incoming_reconcile))
    except RapidProError as exc:
        raise SetupProblem(f"RapidPro at {url}: {exc.reason}") from None
    finally:
        await client.close()
    if args.dry_run:
        _say("dry run", "nothing was changed")
    elif in_place:
        _say("done", "nothing left to do; `cht-rapidpro-worker check` verifies the whole relay")
    else:
        base = url.rstrip("/")
        _say("next", f"import {args.output} on RapidPro's import page, {base}/orgimport/create/ (RapidPro "
             f"before 2021: {base}/org/import/; it updates a flow of the same name), then run "
             "`cht-rapidpro-worker check`")


async def _from_cht(config: Config, couch: CouchServer) -> tuple[str, str, str]:
    """RapidPro's URL (CHT's settings), the API token and the incoming key."""
    try:
        doc = await couch.db(config.couch.db_name).get_or_none(SETTINGS_DOC_ID)
        settings = parse_settings(doc) if doc is not None else None
    except (CouchError, SettingsError) as exc:
        raise SetupProblem(f"cannot read CHT's settings: {exc}") from None
    url = settings.rapidpro_url if settings is not None else None
    if not url:
        raise SetupProblem("sms.rapidpro.url is not set in CHT's settings: set it to the RapidPro server "
                           "(e.g. https://textit.com) first")
    _, token_credential, key_credential = command_credentials(config, couch)
    token = await credential_value(token_credential)
    if not token:
        raise SetupProblem("no RapidPro API token: set RAPIDPRO_API_TOKEN(_FILE), a rapidpro-token "
                           "credential, or rapidpro:outgoing in CHT's vault")
    key = await credential_value(key_credential)
    if not key:
        raise SetupProblem("no incoming key (what RapidPro's flow presents to the worker): set "
                           "RAPIDPRO_INCOMING_KEY(_FILE), a rapidpro-incoming-key credential, or "
                           "rapidpro:incoming in CHT's vault")
    return url, token, key


async def _globals(workspace: Workspace, wanted: dict[str, str], *, dry_run: bool) -> None:
    changes = global_changes(await workspace.globals(), wanted)
    for key, change in changes.items():
        shown = wanted[key] if key == URL_GLOBAL else "the worker's incoming key, not shown"
        if change == KEEP:
            _say(key, f"unchanged ({shown})")
            continue
        verb = "created" if change == CREATE else "updated"
        if dry_run:
            _say(key, f"would be {verb} ({shown})")
        elif change == CREATE:
            await workspace.create_global(GLOBAL_NAMES[key], wanted[key])
            _say(key, f"{verb} ({shown})")
        else:
            await workspace.update_global(key, wanted[key])
            _say(key, f"{verb} ({shown})")


def _write(path: Path, text: str, *, dry_run: bool) -> None:
    try:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
    except OSError:
        current = None
    what = f"flow {FLOW_NAME!r} and a catch-all trigger"
    if current == text:
        _say("file", f"{path} unchanged ({what})")
        return
    if dry_run:
        _say("file", f"would write {path} ({what})")
        return
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        raise SetupProblem(f"cannot write {path}: {exc.strerror or exc}") from None
    _say("file", f"wrote {path} ({what})")


async def _flow_in_place(workspace: Workspace, expect: Expectation) -> bool:
    """Whether the workspace already has a right relay flow and trigger (as `check` judges them)."""
    judgements = await judge_flow(workspace, expect)
    if all(judgement.level == OK for judgement in judgements) and len(judgements) == 2:
        _say("flow", judgements[0].detail)
        return True
    _say("flow", "not in place yet: " + "; ".join(j.detail for j in judgements if j.level != OK))
    return False


COMMAND = Command("rapidpro", "set up the RapidPro side: `rapidpro setup` (the globals, the flow to import)",
                  _arguments, main)
