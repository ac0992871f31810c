"""`parked`: list changes parked after repeated failures, retry them, or drop them.

Listing and dropping read and write the worker's db directly; a retry is done by the running
daemon (it owns the dispatcher, so a doc is never processed twice at once): the entry is removed
once the doc is processed, or refreshed with the new error if it fails again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from config.env import Config
from worker.commands.command import Command, env_file_parent
from worker.commands.local import DaemonProblem, add_url_argument, call
from worker.couch.client import CouchError, CouchServer
from worker.feed.parking import ParkedChanges
from worker.http.admin import PARKED_RETRY_PATH


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=False, metavar="{list,retry,drop}")
    env_file = env_file_parent()
    actions.add_parser("list", parents=[env_file], help="one JSON object a line (the default)")
    retry = actions.add_parser("retry", parents=[env_file],
                               help="have the running daemon process parked docs again")
    retry.add_argument("doc_ids", nargs="*", metavar="DOC_ID")
    retry.add_argument("--all", action="store_true", help="every parked change")
    add_url_argument(retry)
    drop = actions.add_parser("drop", parents=[env_file],
                              help="forget parked changes (the docs are not touched)")
    drop.add_argument("doc_ids", nargs="+", metavar="DOC_ID")


def main(args: argparse.Namespace, config: Config | None) -> int:
    assert config is not None
    action = args.action or "list"
    if action == "retry":
        return _retry(args, config)
    try:
        return asyncio.run(_list(config) if action == "list" else _drop(config, args.doc_ids))
    except CouchError as exc:
        print(f"problem: CouchDB: {exc}", file=sys.stderr)
        return 1


async def _list(config: Config) -> int:
    couch = CouchServer(config.couch, timeout=config.couch_timeout, threads=1)
    try:
        for doc in await ParkedChanges(couch.db(config.worker_db)).list():
            doc.pop("_rev", None)
            print(json.dumps(doc, sort_keys=True))
    finally:
        await couch.close()
    return 0


async def _drop(config: Config, doc_ids: list[str]) -> int:
    couch = CouchServer(config.couch, timeout=config.couch_timeout, threads=1)
    missing = 0
    try:
        parked = ParkedChanges(couch.db(config.worker_db))
        for doc_id in doc_ids:
            if await parked.drop(doc_id):
                print(f"ok: dropped the parked entry of {doc_id}")
            else:
                missing += 1
                print(f"problem: {doc_id} is not parked", file=sys.stderr)
    finally:
        await couch.close()
    return 1 if missing else 0


def _retry(args: argparse.Namespace, config: Config) -> int:
    if bool(args.doc_ids) == bool(args.all):
        print("problem: give DOC_ID... or --all", file=sys.stderr)
        return 2
    body = {"all": True} if args.all else {"doc_ids": args.doc_ids}
    try:
        result = call(config, args.url, "POST", PARKED_RETRY_PATH, body, expect=202, want_object=True)
    except DaemonProblem as exc:
        print(f"problem: {exc}", file=sys.stderr)
        return 1
    for doc_id in result.get("retrying", []):
        print(f"ok: {doc_id} handed to the daemon again (its entry goes once it is processed)")
    for doc_id in result.get("gone", []):
        print(f"ok: {doc_id} no longer exists; its parked entry was dropped")
    for doc_id in result.get("not_parked", []):
        print(f"problem: {doc_id} is not parked", file=sys.stderr)
    return 1 if result.get("not_parked") else 0


COMMAND = Command("parked", "list, retry or drop changes parked after repeated failures", _arguments, main)
