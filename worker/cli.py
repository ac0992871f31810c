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
    return parser


def _config_error(exc: ConfigError) -> int:
    # One line, in the log format we would have used, so it reads well in journalctl too.
    print(json.dumps({"event": "config_invalid", "level": "error", "variable": exc.variable,
                      "error": str(exc)}), file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(read_environment(args.env_file), stdout_is_terminal=sys.stdout.isatty())
    except ConfigError as exc:
        return _config_error(exc)
    configure_logging(config.log_level, config.log_format)
    if args.command == "parked":
        return asyncio.run(_list_parked(config))
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


if __name__ == "__main__":
    sys.exit(main())
