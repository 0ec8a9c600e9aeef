"""Every ``radnode`` command prints its help (a stray ``%`` in a help text breaks it)."""

from __future__ import annotations

import argparse

import pytest

from node.cli.main import build_parser, main


def _all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                 ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_all_parsers(sub, (*path, name)))
    return found


def test_every_command_formats_its_help() -> None:
    parsers = _all_parsers(build_parser())
    names = {" ".join(path) for path, _ in parsers}
    assert {"serve", "worker", "eval", "model synth", "db upgrade", "user add"} <= names
    for path, parser in parsers:
        text = parser.format_help()
        assert text.startswith("usage: radnode"), path


def test_top_level_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    assert "eval" in capsys.readouterr().out
