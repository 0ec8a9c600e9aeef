"""``radnode eval``: score generated reports against references, optionally drafting first."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.cli.progress import FractionProgress
from node.config import Settings, load_settings

LONG_INPUT = 50
"""From this many studies on, progress is shown on stderr."""


def _draft_records(args: argparse.Namespace, settings: Settings) -> list[Any]:
    from workers.context import resolve_device
    from workers.evaluation.drafted import (
        draft_folder,
        parse_generation_overrides,
        read_references,
    )
    from workers.evaluation.harness import write_records
    from workers.inference.bundle import load_bundle

    if args.references is None:
        raise ValueError("--draft-from needs --references REFS.jsonl")
    overrides = {**settings.model.generation_overrides(),
                 **parse_generation_overrides(args.generation or "")}
    references = read_references(args.references)
    bundle = load_bundle(args.bundle or settings.model.bundle,
                         device=resolve_device(args.device))
    generation = bundle.manifest.generation.with_overrides(overrides)
    seed = settings.model.seed if args.seed is None else args.seed
    print(f"drafting {len(references)} studies with {bundle.manifest.name} "
          f"{bundle.manifest.version} (temperature {generation.temperature}, top_p "
          f"{generation.top_p}, indication {'off' if args.no_indication else 'on'})",
          file=sys.stderr)
    with FractionProgress("drafting") as bar:
        records = draft_folder(args.draft_from, references, bundle, generation=generation,
                               use_indication=not args.no_indication, seed=seed,
                               progress=bar.update)
    out = args.predictions_out
    if out is None:
        out = (args.json.with_name(args.json.stem + ".predictions.jsonl") if args.json
               else Path("predictions.jsonl"))
    write_records(records, out)
    print(f"predictions written to {out}", file=sys.stderr)
    return records


def _chexprompt(records: list[Any], settings: Settings, resamples: int,
                seed: int) -> dict[str, Any]:
    from workers.evaluation.chexprompt import ChatEndpoint, ChexpromptError, run_chexprompt

    config = settings.evaluation
    endpoint = ChatEndpoint.from_settings(config.chexprompt_url, config.chexprompt_model,
                                          config.chexprompt_api_key_env,
                                          config.chexprompt_timeout_s)
    pairs = [(r.record_id, r.reference, r.prediction) for r in records]
    try:
        with FractionProgress("CheXprompt") as bar:
            result = run_chexprompt(pairs, endpoint, progress=bar.update, resamples=resamples,
                                    seed=seed)
    except ChexpromptError as exc:
        return {"error": str(exc)}
    return result.to_json()


def _eval(args: argparse.Namespace) -> int:
    from workers.evaluation.harness import PredictionsError, evaluate, format_table, read_records
    from workers.evaluation.metrics import UncertainPolicy

    if (args.predictions is None) == (args.draft_from is None):
        print("radnode eval: give either PRED.jsonl or --draft-from FOLDER", file=sys.stderr)
        return 2
    settings = load_settings()
    try:
        records = (read_records(args.predictions) if args.predictions is not None
                   else _draft_records(args, settings))
        if len(records) >= LONG_INPUT:
            with FractionProgress("evaluating") as bar:
                report = evaluate(records, resamples=args.resamples, seed=args.bootstrap_seed,
                                  progress=bar.update)
        else:
            report = evaluate(records, resamples=args.resamples, seed=args.bootstrap_seed)
    except (PredictionsError, ValueError, OSError) as exc:
        print(f"radnode eval: {exc}", file=sys.stderr)
        return 2
    policy = UncertainPolicy(args.uncertain_as)
    print(format_table(report, policy))
    result: dict[str, Any] = report.to_json()
    result["uncertain_as"] = policy.value
    status = 0
    if settings.evaluation.chexprompt_url and not args.no_chexprompt:
        result["chexprompt"] = _chexprompt(records, settings, args.resamples,
                                           args.bootstrap_seed)
        if "error" in result["chexprompt"]:
            print(f"radnode eval: CheXprompt failed: {result['chexprompt']['error']}",
                  file=sys.stderr)
            status = 1
        else:
            metrics = result["chexprompt"]["metrics"]
            print(f"CheXprompt: {metrics['significant_errors']['value']:.2f} clinically "
                  f"significant and {metrics['insignificant_errors']['value']:.2f} "
                  f"insignificant errors per report ({result['chexprompt']['judged']} judged)")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return status


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` to the ``radnode`` parser."""
    parser = commands.add_parser(
        "eval", help="score generated reports (clinical F1, ROUGE-L, BLEU) with 95%% intervals",
        description="Score predictions against references: jsonl with id, reference and "
                    "prediction, or draft a folder of studies first with --draft-from.")
    parser.add_argument("predictions", nargs="?", type=Path, metavar="PRED.jsonl")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write metrics as JSON")
    parser.add_argument("--uncertain-as", choices=["negative", "positive"], default="negative",
                        help="how uncertain labels count in the printed table (JSON has both)")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--draft-from", type=Path, metavar="FOLDER",
                        help="draft each study sub-folder with the configured bundle first")
    parser.add_argument("--references", type=Path, metavar="REFS.jsonl",
                        help="reference reports for --draft-from: jsonl with id and reference")
    parser.add_argument("--predictions-out", type=Path, metavar="PRED.jsonl",
                        help="where --draft-from writes its predictions")
    parser.add_argument("--generation", metavar="KEY=VALUE,…",
                        help="generation overrides, e.g. temperature=0.2,top_p=0.9")
    parser.add_argument("--no-indication", action="store_true",
                        help="draft with the plain question, without the indication")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: [model] bundle)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, help="sampling seed (default: [model] seed)")
    parser.add_argument("--no-chexprompt", action="store_true",
                        help="skip CheXprompt even when [evaluation] configures it")
    parser.set_defaults(handler=_eval)
