"""Entry point of the ``radnode`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from node.cli import (
    data_commands,
    demo_command,
    eval_commands,
    label_command,
    model_commands,
    node_commands,
    web_commands,
    worker_commands,
)
from node.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="radnode",
        description="DICOM node that drafts chest X-ray reports for radiologist sign-off.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node_commands.register(commands)
    worker_commands.register(commands)
    model_commands.register(commands)
    demo_command.register(commands)
    web_commands.register(commands)
    eval_commands.register(commands)
    label_command.register(commands)
    data_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
