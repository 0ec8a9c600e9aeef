"""``radnode label``: the 14 CheXpert labels and the mentions behind them, for any report text.

One text (an argument, or standard input) gives one JSON object; ``--jsonl`` reads one JSON
object per line (the report in ``--field``, default ``text``) and writes one JSON object per
line, keeping the input's ``id``. A line that is not a JSON object with a string in the field
gets ``{"line": N, "error": "…"}`` and the rest are still labelled; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from node.config import load_settings

LONG_INPUT = 200
"""From this many JSONL lines on, progress is shown on stderr."""

MentionLabeler = Callable[[str], dict[str, Any]]


def _labeler(rules_dir: Path | None) -> MentionLabeler:
    from workers.evaluation.labeler import aggregate, label_mentions
    from workers.evaluation.labeler_rules import default_rules, site_rules

    rules = site_rules(rules_dir.resolve()) if rules_dir is not None else default_rules()

    def label(text: str) -> dict[str, Any]:
        mentions = label_mentions(text, rules)
        labels = aggregate(mentions)
        return {
            "labels": {o.value: m.value for o, m in labels.mentions.items()},
            "mentions": [
                {"observation": m.observation.value, "status": m.mention.value,
                 "start": m.start, "end": m.end,
                 "text": text[m.start:m.end] if m.start is not None else m.text}
                for m in mentions
            ],
        }

    return label


def _read(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        yield from handle


def _lines(path: Path) -> tuple[Iterator[str], int | None]:
    if str(path) == "-":
        return iter(sys.stdin), None
    with path.open(encoding="utf-8") as handle:
        total = sum(1 for _ in handle)
    return _read(path), total


def _label_jsonl(label: MentionLabeler, path: Path, field: str, out: IO[str]) -> int:
    lines, total = _lines(path)
    failed = 0
    progress = tqdm(total=total, desc="labelling", unit="report", file=sys.stderr,
                    disable=total is None or total < LONG_INPUT)
    with progress:
        for number, line in enumerate(lines, start=1):
            progress.update(1)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                text = record.get(field)
                if not isinstance(text, str):
                    raise ValueError(f"no text in field {field!r}")
            except ValueError as exc:
                failed += 1
                out.write(json.dumps({"line": number, "error": str(exc)}) + "\n")
                continue
            result = label(text)
            if "id" in record:
                result = {"id": record["id"], **result}
            out.write(json.dumps(result) + "\n")
    if failed:
        print(f"radnode label: {failed} line(s) could not be labelled", file=sys.stderr)
    return 1 if failed else 0


def _label(args: argparse.Namespace) -> int:
    rules_dir = args.rules_dir
    if rules_dir is None:
        rules_dir = load_settings().quality.labeler_rules_dir
    from workers.evaluation.labeler_rules import RulesError

    try:
        label = _labeler(rules_dir)
    except RulesError as exc:
        print(f"radnode label: {exc}", file=sys.stderr)
        return 2
    out: IO[str] = sys.stdout
    try:
        if args.jsonl is not None and str(args.jsonl) != "-" and not args.jsonl.is_file():
            raise FileNotFoundError(f"no such file: {args.jsonl}")
        if args.output is not None:
            out = args.output.open("w", encoding="utf-8")
        if args.jsonl is not None:
            return _label_jsonl(label, args.jsonl, args.field, out)
        text = args.text if args.text is not None else sys.stdin.read()
        out.write(json.dumps(label(text), indent=2) + "\n")
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        print(f"radnode label: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``label`` to the ``radnode`` parser."""
    parser = commands.add_parser(
        "label", help="label report text with the 14 CheXpert observations (JSON out)",
        description="Label report text with the 14 CheXpert observations and list the "
                    "mentions (start, end, text, status) each label comes from.")
    parser.add_argument("text", nargs="?", help="report text (default: read standard input)")
    parser.add_argument("--jsonl", type=Path, metavar="IN.jsonl",
                        help="label each line of a JSONL file ('-' for standard input)")
    parser.add_argument("--field", default="text",
                        help="JSONL field holding the report text (default: text)")
    parser.add_argument("--output", "-o", type=Path, metavar="OUT",
                        help="write to a file instead of standard output")
    parser.add_argument("--rules-dir", type=Path, metavar="DIR",
                        help="site rule files (default: [quality] labeler_rules_dir)")
    parser.set_defaults(handler=_label)
