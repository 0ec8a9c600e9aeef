"""``radnode model …`` and ``radnode draft``: build, import, verify and try model bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node.cli.progress import FractionProgress, step_progress
from node.config import load_settings


def _synth(args: argparse.Namespace) -> int:
    from workers.inference.synth.train import synthesize_demo_bundle

    out = args.out or load_settings().model.bundle
    update, close = step_progress("training demo model")
    try:
        bundle = synthesize_demo_bundle(out, seed=args.seed, progress=update)
    finally:
        close()
    print(f"demo bundle written to {bundle} (synthetic, not for clinical use)")
    return 0


def _import_llava_rad(args: argparse.Namespace) -> int:
    from workers.inference.importers import CheckpointFormatError
    from workers.inference.importers.llava_rad import import_llava_rad

    try:
        with FractionProgress("importing LLaVA-Rad") as bar:
            bundle = import_llava_rad(args.llava_rad, args.base, args.out, progress=bar.update,
                                      llm_dtype=args.dtype, overwrite=args.overwrite,
                                      trust_checkpoint_pickle=args.trust_checkpoint_pickle)
    except CheckpointFormatError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    print(f"bundle written to {bundle}")
    return 0


def _import_cxr_llava(args: argparse.Namespace) -> int:
    from workers.inference.importers import CheckpointFormatError
    from workers.inference.importers.cxr_llava import import_cxr_llava

    try:
        with FractionProgress("importing CXR-LLaVA") as bar:
            bundle = import_cxr_llava(args.source, args.out, progress=bar.update,
                                      overwrite=args.overwrite)
    except CheckpointFormatError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    print(f"bundle written to {bundle}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from workers.inference.bundle import reexport_onnx

    with FractionProgress("exporting encoder") as bar:
        path = reexport_onnx(args.bundle, opset=args.opset, progress=bar.update)
    print(f"encoder exported to {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from workers.inference.bundle import verify_bundle

    with FractionProgress("verifying bundle") as bar:
        report = verify_bundle(args.bundle, tolerance=args.tolerance,
                               check_parity=not args.no_parity, progress=bar.update)
    summary = report.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle: {args.bundle}")
        print(f"files: {len(report.missing)} missing, {len(report.mismatched)} changed, "
              f"{len(report.unexpected)} unexpected")
        if report.parity_max_abs_error is not None:
            print(f"ONNX vs torch encoder: max abs error {report.parity_max_abs_error:.3g} "
                  f"(limit {report.parity_limit:.3g})")
        for error in report.errors:
            print(f"ERROR: {error}")
        print("OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


def _draft(args: argparse.Namespace) -> int:
    from workers.context import resolve_device
    from workers.inference.bundle import load_bundle
    from workers.inference.drafting import dicom_files_in, draft_study

    settings = load_settings()
    bundle_dir = args.bundle or settings.model.bundle
    paths = dicom_files_in(args.paths)
    if not paths:
        print("radnode draft: no DICOM files found", file=sys.stderr)
        return 2
    bundle = load_bundle(bundle_dir, device=resolve_device(args.device))
    generation = bundle.manifest.generation
    overrides = {k: v for k, v in {"temperature": args.temperature, "top_p": args.top_p,
                                   "max_new_tokens": args.max_new_tokens}.items()
                 if v is not None}
    generation = generation.with_overrides(overrides)
    result = draft_study(paths, bundle, generation=generation, seed=args.seed)
    print(json.dumps(result.to_json_dict(), indent=2))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``model`` and ``draft`` to the ``radnode`` parser."""
    model = commands.add_parser("model", help="build, import and verify model bundles")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    synth = actions.add_parser("synth", help="train the synthetic demo model (CPU, minutes)")
    synth.add_argument("out", nargs="?", type=Path, help="bundle folder (default: [model] bundle)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    llava_rad = actions.add_parser("import-llava-rad",
                                   help="bundle from microsoft/llava-rad + Vicuna-7B-v1.5 folders")
    llava_rad.add_argument("--llava-rad", type=Path, required=True, dest="llava_rad")
    llava_rad.add_argument("--base", type=Path, required=True, help="local Vicuna-7B-v1.5 folder")
    llava_rad.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    llava_rad.add_argument("--overwrite", action="store_true")
    llava_rad.add_argument("--trust-checkpoint-pickle", action="store_true",
                           dest="trust_checkpoint_pickle",
                           help="load biomedclipcxr_518_checkpoint.pt with full unpickling "
                                "(an open_clip training checkpoint; runs code from the file: "
                                "only for a file from a trusted source)")
    llava_rad.add_argument("out", type=Path)
    llava_rad.set_defaults(handler=_import_llava_rad)

    cxr_llava = actions.add_parser("import-cxr-llava",
                                   help="bundle from an ECOFRI/CXR-LLAVA-v2 folder "
                                        "(no remote code)")
    cxr_llava.add_argument("source", type=Path)
    cxr_llava.add_argument("out", type=Path)
    cxr_llava.add_argument("--overwrite", action="store_true")
    cxr_llava.set_defaults(handler=_import_cxr_llava)

    export = actions.add_parser("export-onnx", help="re-export encoder.onnx from its weights")
    export.add_argument("bundle", type=Path)
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(handler=_export_onnx)

    verify = actions.add_parser("verify", help="check hashes and ONNX-vs-torch parity")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--tolerance", type=float, default=1e-3)
    verify.add_argument("--no-parity", action="store_true")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify)

    draft = commands.add_parser("draft", help="draft one study offline; JSON on stdout")
    draft.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders of one study")
    draft.add_argument("--bundle", type=Path, help="bundle folder (default: [model] bundle)")
    draft.add_argument("--device", default="auto")
    draft.add_argument("--seed", type=int, default=0)
    draft.add_argument("--temperature", type=float)
    draft.add_argument("--top-p", type=float, dest="top_p")
    draft.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    draft.set_defaults(handler=_draft)
