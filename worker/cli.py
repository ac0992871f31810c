"""Command line: parses arguments, loads the configuration, and calls the daemon or a subcommand."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib import metadata
from pathlib import Path

from config.env import ConfigError, load_config, read_environment
from worker.app import EXIT_CONFIG, run_worker
from worker.commands import commands
from worker.logs import configure_logging, get_logger


def version() -> str:
    try:
        return metadata.version("cht-rapidpro-worker")
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cht-rapidpro-worker",
        description="Sends CHT's outgoing SMS through RapidPro and stores incoming SMS in CHT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", type=Path, default=None,
                        help="read variables from this file (the real environment wins); "
                             "default: ./.env when present")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon")
    for command in commands():
        command.add_arguments(sub.add_parser(command.name, parents=[common], help=command.help,
                                             description=command.description or command.help))
    return parser


def _config_error(exc: ConfigError) -> int:
    # One line, in the log format we would have used, so it reads well in journalctl too.
    print(json.dumps({"event": "config_invalid", "level": "error", "variable": exc.variable,
                      "error": str(exc)}), file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = next((c for c in commands() if c.name == args.command), None)
    if command is not None and not command.loads_config:
        return command.main(args, None)
    try:
        config = load_config(read_environment(args.env_file), stdout_is_terminal=sys.stdout.isatty())
    except ConfigError as exc:
        return _config_error(exc)
    if command is not None:
        # Subcommands print their results on stdout; only real trouble is logged, on stderr.
        configure_logging("error", config.log_format, stream=sys.stderr)
        return command.main(args, config)
    configure_logging(config.log_level, config.log_format)
    try:
        return asyncio.run(run_worker(config))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        get_logger(__name__).warning("shutdown_interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
