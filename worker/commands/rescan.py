"""`rescan`: asks the running daemon to ask RapidPro about every non-final message now."""

from __future__ import annotations

import argparse
import sys

from config.env import Config
from worker.commands.command import Command
from worker.commands.local import DaemonProblem, add_url_argument, call
from worker.http.admin import RESCAN_PATH


def main(args: argparse.Namespace, config: Config | None) -> int:
    assert config is not None
    try:
        call(config, args.url, "POST", RESCAN_PATH, {}, expect=202)
    except DaemonProblem as exc:
        print(f"problem: {exc}", file=sys.stderr)
        return 1
    print("ok: rescan started; follow it in the log (status_round) or with `status`")
    return 0


COMMAND = Command("rescan", "ask the running daemon to rescan the status of every non-final message",
                  add_url_argument, main)
