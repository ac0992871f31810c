"""Command line: parses arguments, loads the configuration, and calls the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from config.env import Config, ConfigError, load_config, read_environment
from worker.app import EXIT_CONFIG, run_worker
from worker.logs import configure_logging, get_logger


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cht-rapidpro-worker",
        description="Sends CHT's outgoing SMS through RapidPro and stores incoming SMS in CHT.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", type=Path, default=None,
                        help="read variables from this file (the real environment wins); "
                             "default: ./.env when present")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon")
    sub.add_parser("parked", parents=[common],
                   help="list changes parked after repeated failures (one JSON object a line)")
    in_doubt = sub.add_parser(
        "in-doubt", parents=[common],
        help="list sends in doubt that wait for an operator (one JSON object a line), or resolve one")
    in_doubt.add_argument("--all", action="store_true",
                          help="list every claim without an outcome, also those the worker still checks")
    actions = in_doubt.add_subparsers(dest="in_doubt_command")
    # SUPPRESS: without it the sub-command's default would overwrite an --env-file given before it.
    resolve_common = argparse.ArgumentParser(add_help=False)
    resolve_common.add_argument("--env-file", type=Path, default=argparse.SUPPRESS,
                                help="as for the other commands")
    resolve = actions.add_parser("resolve", parents=[resolve_common],
                                 help="record what happened to one in-doubt message")
    resolve.add_argument("uuid", help="the message uuid (message_uuid in the listing)")
    decision = resolve.add_mutually_exclusive_group(required=True)
    decision.add_argument("--sent", type=int, metavar="BROADCAST_ID",
                          help="it went out as this RapidPro broadcast (its integer id)")
    decision.add_argument("--resend", action="store_true", help="it never went out: send it now, once")
    decision.add_argument("--failed", metavar="REASON", help="do not send it; mark its task failed")
    return parser


def _config_error(exc: ConfigError) -> int:
    # One line, in the log format we would have used, so it reads well in journalctl too.
    print(json.dumps({"event": "config_invalid", "level": "error", "variable": exc.variable,
                      "error": str(exc)}), file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(read_environment(args.env_file))
    except ConfigError as exc:
        return _config_error(exc)
    # The operator commands print their results on stdout; their log lines go to stderr.
    configure_logging(config.log_level, config.log_format,
                      stream=sys.stderr if args.command in ("parked", "in-doubt") else None)
    if args.command == "parked":
        return asyncio.run(_list_parked(config))
    if args.command == "in-doubt":
        return asyncio.run(_in_doubt(config, args))
    try:
        return asyncio.run(run_worker(config))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        get_logger(__name__).warning("shutdown_interrupted")
        return 130


async def _list_parked(config: Config) -> int:
    from worker.couch import CouchServer
    from worker.parking import ParkedChanges

    couch = CouchServer(config.couch, timeout=config.couch_timeout, threads=1)
    try:
        for doc in await ParkedChanges(couch.db(config.worker_db)).list():
            doc.pop("_rev", None)
            print(json.dumps(doc, sort_keys=True))
    finally:
        await couch.close()
    return 0


async def _in_doubt(config: Config, args: argparse.Namespace) -> int:
    from worker.couch import CouchError, CouchServer
    from worker.in_doubt import OperatorError, list_in_doubt, operator_resolve
    from worker.ledger import Ledger

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


if __name__ == "__main__":
    sys.exit(main())
