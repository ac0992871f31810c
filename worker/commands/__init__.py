"""Operator subcommands besides `run`: one module each, listed in `COMMANDS` (worker/cli.py adds
their parsers and calls them), so a new subcommand is a new module and one line here."""

from __future__ import annotations

from worker.commands.command import Command


def commands() -> list[Command]:
    from worker.commands import check, in_doubt, parked, rapidpro_setup, rescan, status

    return [check.COMMAND, status.COMMAND, parked.COMMAND, in_doubt.COMMAND, rescan.COMMAND,
            rapidpro_setup.COMMAND]
