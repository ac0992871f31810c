"""`check`: is this configuration ready to run? Read-only: nothing is sent or written anywhere.

Prints one line per check, `ok|warning|problem|fatal <check>: <detail>`, then a summary line (or
one JSON object with `--json`), and exits 1 when any check found a problem. With `--for-install`
it exits 1 only on a fatal one: what `systemd/install.sh` gates `install` and `upgrade` on.
Which lines are fatal: transitions/commands/check_grades.py. Each line's level is given where it is added
(`report.add`), so a new line is graded by its author; none is fatal unless added as FATAL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

from config.env import Config, ConfigError, load_config, read_environment
from config.settings import SETTINGS_DOC_ID, Settings, SettingsError, parse_settings
from transitions.commands.check_grades import (
    FATAL,
    OK,
    PROBLEM,
    WARNING,
    Finding,
    blocks_install,
    counts,
    exit_status,
    summary,
)
from transitions.outgoing.dispatch import CHT_SENDER_UNKNOWN, cht_sender_runs, not_sending_reason
from worker.commands.command import Command
from worker.commands.local import DaemonProblem, call, daemon_url
from worker.commands.rapidpro_side import (
    command_client,
    command_credentials,
    command_workspace,
    credential_value,
    expectation,
    judge_workspace,
)
from worker.couch.client import CouchError, CouchServer, NotFound, Unauthorized
from worker.http.health_text import stalls
from worker.limits import check_finding, read_limits
from worker.logs import configure_logging
from worker.rapidpro.errors import RapidProError, RapidProUnauthorized, WrongUrl


class Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, level: str, check: str, detail: str) -> None:
        # One line per check, whatever a server put in its error message.
        self.findings.append(Finding(level, check, " ".join(detail.split())))

    @property
    def ok(self) -> bool:
        return exit_status(self.findings, for_install=False) == 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    parser.add_argument("--for-install", action="store_true",
                        help="exit 1 only when a check is fatal (the daemon cannot work), not on every "
                             "problem: what systemd/install.sh gates install and upgrade on")


def main(args: argparse.Namespace, _config: Config | None) -> int:
    report = Report()
    try:
        config: Config | None = load_config(read_environment(args.env_file))
    except ConfigError as exc:
        report.add(FATAL, "config", str(exc))
        config = None
    if config is not None:
        report.add(OK, "config", f"valid; CouchDB {config.couch.redacted_url}, worker db {config.worker_db}")
        configure_logging("error", config.log_format, stream=sys.stderr)
        asyncio.run(run_checks(config, report))
    level, detail = check_finding(read_limits())  # MemoryMax=/TasksMax= may not be enforced here
    report.add(level, "limits", detail)
    if args.json:
        print(json.dumps({"ok": report.ok, "fatal": blocks_install(report.findings),
                          "counts": counts(report.findings), "summary": summary(report.findings),
                          "checks": [asdict(f) for f in report.findings]}, sort_keys=True))
    else:
        for finding in report.findings:
            print(f"{finding.level} {finding.check}: {finding.detail}")
        print(f"summary: {summary(report.findings)}")
    return exit_status(report.findings, for_install=args.for_install)


async def run_checks(config: Config, report: Report) -> None:
    couch = CouchServer(config.couch, timeout=min(config.couch_timeout, 10.0), threads=2)
    try:
        await _check_all(config, couch, report)
    finally:
        await couch.close()


async def _get(couch: CouchServer, path: str) -> Any:
    return await couch.request_json("GET", path)


async def _check_all(config: Config, couch: CouchServer, report: Report) -> None:
    # 1. CouchDB answers, and who we are there.
    try:
        welcome = await _get(couch, "")
        session = await _get(couch, "_session")
    except Unauthorized:
        report.add(FATAL, "couchdb", f"{config.couch.redacted_url}: the credentials are refused")
        return
    except CouchError as exc:
        report.add(FATAL, "couchdb", f"cannot reach {config.couch.redacted_url}: {exc}")
        return
    ctx = (session or {}).get("userCtx") or {}
    name, roles = ctx.get("name"), list(ctx.get("roles") or [])
    server_admin = "_admin" in roles
    version = welcome.get("version") if isinstance(welcome, dict) else None
    who = f"user {name!r}" + (" (server admin)" if server_admin else f" (roles {roles})")
    report.add(OK, "couchdb", f"CouchDB {version} answers; {who}")

    # 2. Rights on the three databases.
    medic_ok = await _check_db(couch, config.couch.db_name, "medic", report, name, required=True,
                               purpose="reads the feed, writes task states and incoming reports")
    vault_state = await _db_state(couch, config.couch.vault_db_name)
    if vault_state == "ok":
        report.add(OK, "vault", f"{config.couch.vault_db_name} readable")
    elif vault_state == "missing":
        report.add(OK, "vault", f"{config.couch.vault_db_name} does not exist (CHT's credentials API unused)")
    else:
        report.add(WARNING, "vault", f"{name!r} may not read {config.couch.vault_db_name} ({vault_state}): "
                   "the token and key must be configured here, and CHT's own sender cannot be detected")
    worker_state = await _db_state(couch, config.worker_db)
    worker_admin = server_admin or await _db_admin(couch, config.worker_db, name, roles)
    if worker_state == "ok" and not worker_admin:
        # What the daemon needs at start: it writes the ledger's design doc there.
        report.add(PROBLEM, "worker_db",
                   f"{name!r} is a member of {config.worker_db} but not its admin: the daemon could not "
                   f"write the ledger's views there; add {name!r} to the admins in its _security")
    elif worker_state == "ok":
        report.add(OK, "worker_db", f"{config.worker_db} exists and {name!r} may use it (member and admin)")
    elif worker_state == "missing" and server_admin:
        report.add(OK, "worker_db", f"{config.worker_db} does not exist yet; it is created at start")
    elif worker_state == "missing":
        report.add(FATAL, "worker_db",
                   f"{config.worker_db} does not exist and {name!r} may not create it (only a server admin "
                   f"may): create it as an admin and make {name!r} a member and an admin in its _security")
    else:
        report.add(FATAL, "worker_db", f"{name!r} may not use {config.worker_db} ({worker_state}): "
                   f"make {name!r} a member and an admin in its _security")
    if not medic_ok:
        return

    # 3. The settings CHT holds.
    settings = await _check_settings(couch, config, report)

    # 4. Credentials.
    vault, token_cred, key_cred = command_credentials(config, couch)
    token = await credential_value(token_cred)
    key = await credential_value(key_cred)
    reason = not_sending_reason(settings, config.outgoing_service_name, bool(token))
    if token:
        report.add(OK, "token", f"RapidPro API token from {token_cred.source}")
    else:
        # In charge of sending without a token, the daemon cannot do its first job.
        level = FATAL if settings and settings.outgoing_service == config.outgoing_service_name else WARNING
        report.add(level, "token", "no RapidPro API token: set RAPIDPRO_API_TOKEN(_FILE), a rapidpro-token "
                   "credential, or rapidpro:outgoing in CHT's vault (with COUCH_SECRET if the user may not "
                   "read the server config)")
    if key:
        report.add(OK, "incoming_key", f"webhook key from {key_cred.source}")
    else:
        report.add(WARNING, "incoming_key", "no incoming key: the webhook would refuse every call "
                   "(RAPIDPRO_INCOMING_KEY(_FILE), a rapidpro-incoming-key credential, or rapidpro:incoming)")
    if reason is None:
        report.add(OK, "outgoing",
                   f"the worker is in charge of sending (service {config.outgoing_service_name!r})")
    else:
        report.add(WARNING, "outgoing", f"the worker will not send: {reason}")

    # 5. RapidPro: the token, then (reads only) the globals, the relay flow, the channels.
    if settings is not None and settings.rapidpro_url and token:
        await _check_rapidpro(config, settings.rapidpro_url, token, key, report, in_charge=reason is None)
    else:
        missing = "no token" if not token else "sms.rapidpro.url is not set"
        report.add(WARNING, "rapidpro", f"not asked: {missing}")

    # 6. The daemon, if one runs here: what only it knows.
    await _check_daemon(config, report)

    # 7. Two senders for one CHT.
    try:
        in_vault = await vault.has("rapidpro:outgoing")
    except CouchError as exc:
        if isinstance(exc, Unauthorized) and cht_sender_runs(settings, True):  # the daemon stands down
            report.add(PROBLEM, "double_sender", f"{CHT_SENDER_UNKNOWN} ({exc})")
        else:
            report.add(WARNING, "double_sender", f"cannot tell whether CHT's own sender runs: {exc}")
        return
    if cht_sender_runs(settings, in_vault):
        # A problem, but not one that keeps the daemon from running safely: it stands down from
        # sending while CHT's sender is on, and takes over by itself once it is off.
        report.add(PROBLEM, "double_sender",
                   "CHT's own RapidPro sender is on (sms.outgoing_service is 'rapidpro', sms.rapidpro.url "
                   "is set and rapidpro:outgoing is in CHT's vault): the worker stands down and sends "
                   "nothing while it is. To let the worker send: delete rapidpro:outgoing from CHT's vault "
                   "and give the worker its token, or set sms.outgoing_service and OUTGOING_SERVICE_NAME "
                   "to rapidpro-worker (README, 'Exactly one sender')")
    else:
        report.add(OK, "double_sender", "CHT's own RapidPro sender stays off")


async def _check_daemon(config: Config, report: Report) -> None:
    """The running daemon's own view, when one answers at its listener (before the first start
    none does, which is fine): periodic jobs that keep retrying without getting through."""
    url = daemon_url(config, None)
    try:
        health = await asyncio.to_thread(call, config, None, "GET", "/healthz", expect=200, label="/healthz",
                                         want_object=True, timeout=5.0)
    except DaemonProblem as exc:
        if "does not answer" in str(exc):
            report.add(OK, "daemon", f"no daemon answers at {url}: its running state was not checked")
        else:
            report.add(WARNING, "daemon", str(exc))
        return
    report.add(OK, "daemon", f"answers at {url} ({health.get('role')})")
    found = stalls(health)
    for part in ("status_tracking", "in_doubt"):
        if part in found:
            report.add(WARNING, part, found[part] + "; usually RapidPro's budget (429s, "
                       "RAPIDPRO_*_CALLS_PER_HOUR) or RapidPro errors: see the daemon's log")


async def _db_state(couch: CouchServer, db: str) -> str:
    """"ok" (readable), "missing", or why not."""
    try:
        await _get(couch, quote(db, safe=""))
        return "ok"
    except NotFound:
        return "missing"
    except Unauthorized as exc:
        return f"not a member: {exc}"
    except CouchError as exc:
        return str(exc)


async def _db_admin(couch: CouchServer, db: str, name: Any, roles: list[Any]) -> bool:
    """Whether the user is an admin of `db` by its _security (which a member may read)."""
    try:
        security = await _get(couch, f"{quote(db, safe='')}/_security")
    except CouchError:
        return False
    admins = security.get("admins") if isinstance(security, dict) else None
    if not isinstance(admins, dict):
        return False
    return name in (admins.get("names") or []) or bool(set(roles) & set(admins.get("roles") or []))


async def _check_db(couch: CouchServer, db: str, label: str, report: Report, user: Any, *,
                    required: bool, purpose: str) -> bool:
    state = await _db_state(couch, db)
    if state == "ok":
        report.add(OK, label, f"{db} readable by {user!r}; the worker {purpose}")
        return True
    report.add(FATAL if required else WARNING, label,
               f"{db}: {'does not exist' if state == 'missing' else state}; the worker {purpose}")
    return False


async def _check_settings(couch: CouchServer, config: Config, report: Report) -> Settings | None:
    try:
        doc = await couch.db(config.couch.db_name).get_or_none(SETTINGS_DOC_ID)
    except CouchError as exc:
        report.add(FATAL, "settings", f"cannot read the settings doc: {exc}")
        return None
    if doc is None:
        report.add(WARNING, "settings", "no settings doc in medic: CHT's defaults, which never send")
        return Settings()
    try:
        settings = parse_settings(doc)
    except SettingsError as exc:
        report.add(FATAL, "settings", f"the settings doc is invalid: {exc}")
        return None
    report.add(OK, "settings", f"outgoing_service {settings.outgoing_service!r}, rapidpro url "
               f"{settings.rapidpro_url or '(not set)'}")
    bad = sorted(str(code) for code, form in settings.forms.items() if not _form_ok(form))
    if bad:
        report.add(WARNING, "forms", f"{len(bad)} of {len(settings.forms)} SMS forms cannot be parsed "
                   f"(no fields object): {', '.join(bad[:10])}")
    else:
        report.add(OK, "forms", f"{len(settings.forms)} SMS forms")
    return settings


def _form_ok(form: Any) -> bool:
    return isinstance(form, Mapping) and isinstance(form.get("fields"), Mapping)


async def _check_rapidpro(config: Config, url: str, token: str, key: str | None, report: Report, *,
                          in_charge: bool) -> None:
    # A token RapidPro refuses (or a URL that is not RapidPro's API) stops sending, if the worker sends.
    unusable = FATAL if in_charge else PROBLEM
    client = command_client(config, "check")
    workspace = command_workspace(client, url, token)
    try:
        info = await workspace.info()
        report.add(OK, "rapidpro", f"{url}: the token belongs to workspace {info.get('name')!r}")
        for judgement in await judge_workspace(workspace, expectation(config, key)):
            report.add(judgement.level, judgement.check, judgement.detail)
    except RapidProUnauthorized as exc:
        report.add(unusable, "rapidpro", f"{url} refused the token: {exc.reason}")
    except WrongUrl as exc:
        report.add(unusable, "rapidpro", f"{url} does not look like RapidPro's API: {exc.reason}")
    except RapidProError as exc:
        # RapidPro down or slow right now: the daemon waits and retries, nothing is lost.
        report.add(PROBLEM, "rapidpro", f"{url} cannot be reached: {exc.reason}")
    finally:
        await client.close()


COMMAND = Command("check", "validate the configuration and, read-only, reach CouchDB and RapidPro; exits "
                  "1 on any problem, or with --for-install on a fatal one only (run it before starting "
                  "the service)", _arguments, main,
                  loads_config=False)
