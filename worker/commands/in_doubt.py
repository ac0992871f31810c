"""`in-doubt`: list the sends in doubt that wait for an operator, or record the operator's decision.

Reads and writes the ledger in the worker's db directly (with `_rev`, so it is safe while the
daemon runs); the decision is written to the CHT task exactly as the daemon would have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from config.env import Config
from transitions.outgoing.broadcasts import BroadcastKey, broadcast_key
from worker.commands.command import Command
from worker.couch.client import CouchError, CouchServer


def _broadcast(value: str) -> BroadcastKey:
    key = broadcast_key(value)
    if key is None:
        raise argparse.ArgumentTypeError(f"not a broadcast id or uuid: {value!r}")
    return key


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="list every claim without an outcome, also those the worker still checks")
    actions = parser.add_subparsers(dest="in_doubt_command")
    # SUPPRESS: without it the sub-command's default would overwrite an --env-file given before it.
    resolve_common = argparse.ArgumentParser(add_help=False)
    resolve_common.add_argument("--env-file", type=Path, default=argparse.SUPPRESS,
                                help="as for the other commands")
    resolve = actions.add_parser("resolve", parents=[resolve_common],
                                 help="record what happened to one in-doubt message")
    resolve.add_argument("uuid", help="the message uuid (message_uuid in the listing)")
    decision = resolve.add_mutually_exclusive_group(required=True)
    decision.add_argument("--sent", type=_broadcast, metavar="BROADCAST",
                          help="it went out as this RapidPro broadcast: its integer id, or its uuid "
                               "on a RapidPro without ids")
    decision.add_argument("--resend", action="store_true", help="it never went out: send it now, once")
    decision.add_argument("--failed", metavar="REASON", help="do not send it; mark its task failed")


def main(args: argparse.Namespace, config: Config | None) -> int:
    assert config is not None
    return asyncio.run(_in_doubt(config, args))


async def _in_doubt(config: Config, args: argparse.Namespace) -> int:
    from worker.outgoing.in_doubt import OperatorError, list_in_doubt, operator_resolve
    from worker.outgoing.ledger import Ledger

    couch = CouchServer(config.couch, timeout=config.couch_timeout, threads=1)
    try:
        ledger = Ledger(couch.db(config.worker_db))
        await ledger.ensure_views()
        if args.in_doubt_command != "resolve":
            for line in await list_in_doubt(ledger, config.claim_timeout, every=args.all):
                print(json.dumps(line, sort_keys=True))
            return 0
        try:
            result = await operator_resolve(
                ledger, couch.db(config.couch.db_name), args.uuid, claim_timeout=config.claim_timeout,
                sent=args.sent, resend=args.resend, failed=args.failed)
        except OperatorError as exc:
            print(json.dumps({"event": "in_doubt_resolve_refused", "level": "error",
                              "message_uuid": args.uuid, "error": str(exc)}), file=sys.stderr)
            return 1
        print(json.dumps(result, sort_keys=True))
        return 0
    except CouchError as exc:
        print(json.dumps({"event": "couch_error", "level": "error", "error": str(exc)}), file=sys.stderr)
        return 1
    finally:
        await couch.close()


COMMAND = Command(
    name="in-doubt",
    help="list sends in doubt that wait for an operator (one JSON object a line), or resolve one",
    add_arguments=_arguments,
    main=main,
)
