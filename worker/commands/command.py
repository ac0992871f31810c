"""What a subcommand is: its name, help, arguments and entry point."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

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
