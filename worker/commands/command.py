"""What a subcommand is: its name, help, arguments and entry point."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.env import Config


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # main(args, config): the exit status. `check` gets config None and loads it itself, since
    # reporting a broken configuration is part of its job.
    main: Callable[[argparse.Namespace, Config | None], int]
    loads_config: bool = True
    description: str | None = None


def env_file_parent() -> argparse.ArgumentParser:
    """`--env-file` for a command's actions too (`parked retry --env-file F X`); SUPPRESS keeps
    the value given before the action when this one is absent."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--env-file", type=Path, default=argparse.SUPPRESS, help="as for the other commands")
    return parent
