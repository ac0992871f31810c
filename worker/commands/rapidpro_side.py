"""The RapidPro side as `check` and `rapidpro setup` read it: the globals, the relay flow and its
trigger, the channels, judged by transitions/rapidpro/relay_check.py and transitions/rapidpro/channels.py.

Reads only, a handful of calls: `globals.json`, `flows.json`, `definitions.json` (the active
messaging flows, the relay flow's name first), `channels.json`.
"""

from __future__ import annotations

import time
from typing import Any

from config.env import Config
from transitions.rapidpro.channels import judge_channels, read_channels
from transitions.rapidpro.relay_check import (
    PROBLEM,
    WARNING,
    Expectation,
    Judgement,
    judge_api_key,
    judge_cht_url,
    judge_relay,
    relay_unused,
)
from transitions.rapidpro.relay_flow import FLOW_NAME, cht_url_for
from worker.couch.client import CouchServer, CouchUnavailable
from worker.rapidpro.budget import Priority, ScopedBudget
from worker.rapidpro.client import RapidProClient, user_agent
from worker.rapidpro.credentials import Credential, Vault
from worker.rapidpro.errors import RapidProError
from worker.rapidpro.workspace import MAX_DEFINITIONS, Workspace

# A command's calls: its own budget (a one-off run of a few calls) at the priority that keeps no
# reserve, waiting at most this long for a token or a 429.
COMMAND_PRIORITY = Priority.SEND
COMMAND_MAX_WAIT = 15.0


def expectation(config: Config, key: str | None) -> Expectation:
    public = config.webhook_public_url
    return Expectation(cht_url=cht_url_for(public) if public else None, key=key,
                       reconcile=config.incoming_reconcile)


def command_credentials(config: Config, couch: CouchServer) -> tuple[Vault, Credential, Credential]:
    """CHT's vault, the API token and the incoming key, as the daemon finds them (never cached)."""
    vault = Vault(couch, config.couch.vault_db_name, config.couch_secret)
    token = Credential(vault, "rapidpro:outgoing", value=config.rapidpro_api_token,
                       file=config.rapidpro_api_token_file, ttl=0)
    key = Credential(vault, "rapidpro:incoming", value=config.rapidpro_incoming_key,
                     file=config.rapidpro_incoming_key_file, ttl=0)
    return vault, token, key


async def credential_value(credential: Credential) -> str | None:
    try:
        return await credential.get()
    except CouchUnavailable:
        return None


def command_client(config: Config, command: str) -> RapidProClient:
    budget = ScopedBudget(overrides=config.rapidpro_scope_rates, every=config.rapidpro_calls_per_hour)
    return RapidProClient(budget,
                          timeout=min(config.rapidpro_timeout, 15), max_wait=COMMAND_MAX_WAIT,
                          user_agent=user_agent(f"{config.instance_id or command} {command}"))


def command_workspace(client: RapidProClient, url: str, token: str) -> Workspace:
    return Workspace(client, url, token, priority=COMMAND_PRIORITY, max_wait=COMMAND_MAX_WAIT)


async def judge_flow(workspace: Workspace, expect: Expectation) -> list[Judgement]:
    """The relay flow and its trigger (two calls; one when there is no flow at all)."""
    flows, more = await workspace.active_flows()
    ordered = sorted(flows, key=lambda flow: flow.get("name") != FLOW_NAME)[:MAX_DEFINITIONS]
    definitions = await workspace.definitions([str(flow["uuid"]) for flow in ordered if flow.get("uuid")])
    flow, trigger = judge_relay(ordered, definitions, expect, truncated=more or len(flows) > len(ordered))
    return [flow] if trigger is None else [flow, trigger]


async def judge_workspace(workspace: Workspace, expect: Expectation) -> list[Judgement]:
    """`check`'s lines for the RapidPro side; a call that fails is a line of its own."""
    found: list[Judgement] = []
    try:
        globals_by_key = await workspace.globals()
    except RapidProError as exc:
        found.append(Judgement(PROBLEM, "rapidpro_globals", f"cannot list globals.json: {_reason(exc)}"))
    else:
        found += [judge_cht_url(globals_by_key, expect.cht_url), judge_api_key(globals_by_key, expect.key)]
    try:
        found += await judge_flow(workspace, expect)
    except RapidProError as exc:
        found.append(Judgement(PROBLEM, "rapidpro_flow", f"cannot read the flows (flows.json, "
                               f"definitions.json): {_reason(exc)}"))
    try:
        channels = read_channels(await workspace.channels())
    except RapidProError as exc:
        found.append(Judgement(WARNING, "rapidpro_channels", f"cannot list channels.json: {_reason(exc)}"))
    else:
        found.append(judge_channels(channels, time.time()))
    return found if expect.key is not None else relay_unused(found)


def _reason(exc: RapidProError) -> str:
    reason: Any = exc.reason
    if exc.status == 403:
        reason = f"{reason} (the token's user must be an administrator or an editor of the workspace)"
    return str(reason)
