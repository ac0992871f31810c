"""`status`: the running daemon's health, from /healthz, for a person (or `--json`)."""

from __future__ import annotations

import argparse
import json
import sys

from config.env import Config
from worker.commands.command import Command
from worker.commands.local import DaemonProblem, add_url_argument, call
from worker.http.health_text import summary


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print /healthz as it is")
    add_url_argument(parser)


def main(args: argparse.Namespace, config: Config | None) -> int:
    assert config is not None
    try:
        health = call(config, args.url, "GET", "/healthz", expect=200, label="/healthz", want_object=True)
    except DaemonProblem as exc:
        print(f"problem: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(health, indent=2, sort_keys=True) if args.json else summary(health))
    return 0


COMMAND = Command("status", "the running daemon's health in a few lines (from /healthz)", _arguments, main)
