"""Entry point of the ``radnode`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from node.cli import (
    data_commands,
    demo_command,
    eval_commands,
    label_command,
    model_commands,
    node_commands,
    token_commands,
    web_commands,
    worker_commands,
)
from node.config import ConfigError, load_settings, masked_url


def _database_error(error: SQLAlchemyError) -> str:
    """One line naming ``[database] url`` (password masked) and what went wrong."""
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    try:
        url = masked_url(load_settings().database.url)
    except ConfigError:
        url = "?"
    return f"[database] url = {url!r}: {detail[0] if detail else type(error).__name__}"


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
    token_commands.register(commands)
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
    except SQLAlchemyError as exc:  # a command that met a database it cannot use
        print(f"radnode: {_database_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
