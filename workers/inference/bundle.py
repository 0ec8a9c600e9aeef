"""Model bundles: write, load, verify.

Layout of a bundle folder::

    manifest.json          BundleManifest (files: relative path -> sha256)
    encoder.onnx           vision tower + projector, float32 (B, C, H, W) -> (B, T, D)
    encoder.safetensors    torch reference weights of the same encoder
    llm/                   Hugging Face save_pretrained folder (config, weights, tokenizer)

Parity tolerance
----------------
:func:`verify_bundle` runs the ONNX graph (CPU provider unless told otherwise) and the torch
encoder on random and structured inputs and fails when::

    max |onnx - torch|  >  tolerance * max(1, max |torch|)

with ``tolerance = DEFAULT_PARITY_TOLERANCE = 1e-3`` (float32 kernels agree to about 1e-6
relative; fp16 TensorRT engines to about 1e-3).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from workers.inference.encoder import (
    ImageEncoder,
    OnnxImageEncoder,
    load_encoder_weights,
    save_encoder_weights,
)
from workers.inference.llm import (
    GenerationResult,
    PromptTokens,
    build_batch_inputs_embeds,
    build_inputs_embeds,
    generate_from_embeds,
    load_llm,
    resolve_dtype,
    tokenize_prompt,
)
from workers.inference.manifest import (
    ENCODER_ONNX_FILENAME,
    ENCODER_WEIGHTS_FILENAME,
    LLM_DIRNAME,
    MANIFEST_FILENAME,
    BundleManifest,
    GenerationSpec,
    sha256_file,
)
from workers.inference.onnx_export import export_encoder_onnx, max_abs_error, parity_inputs
from workers.inference.prompts import render_prompt, split_prompt
from workers.inference.runtime import CPU, ProviderEntry, select_providers

if TYPE_CHECKING:
    from workers.inference.engine_generation import EngineGenerator

log = logging.getLogger(__name__)

DEFAULT_PARITY_TOLERANCE = 1e-3
Progress = Callable[[str, float], None]


class BundleError(Exception):
    """A bundle is missing, malformed or fails verification."""


def _report(progress: Progress | None, message: str, fraction: float) -> None:
    if progress is not None:
        progress(message, min(max(fraction, 0.0), 1.0))


def hash_bundle_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` except ``manifest.json``, by relative POSIX path."""
    hashes: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_FILENAME:
            continue
        hashes[rel] = sha256_file(path)
    return hashes


def write_generation_config(
    llm_dir: Path, manifest: BundleManifest, tokenizer: Any | None = None
) -> None:
    """Write ``generation_config.json`` reflecting the manifest's decoding defaults."""
    from transformers import GenerationConfig

    spec = manifest.generation
    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    else:
        model_config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
        ids = {k: model_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    factory: Any = GenerationConfig
    config = factory(
        do_sample=not spec.greedy,
        temperature=spec.temperature if not spec.greedy else None,
        top_p=spec.top_p if not spec.greedy else None,
        top_k=spec.top_k if (spec.top_k > 0 and not spec.greedy) else None,
        max_new_tokens=spec.max_new_tokens,
        repetition_penalty=spec.repetition_penalty,
        **{k: v for k, v in ids.items() if v is not None},
    )
    config.save_pretrained(str(llm_dir))


def write_bundle(
    out_dir: Path,
    manifest: BundleManifest,
    encoder: ImageEncoder,
    llm: Any,
    tokenizer: Any | None = None,
    *,
    export_onnx: bool = True,
    overwrite: bool = False,
    move_llm: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write a complete bundle folder atomically and fill ``manifest.files``.

    Parameters
    ----------
    out_dir
        Destination folder (must not exist unless ``overwrite``).
    manifest
        Bundle description; its ``files`` are replaced by the hashes of what is written.
    encoder
        Torch image encoder (weights saved as float32).
    llm
        A ``transformers.PreTrainedModel`` (saved with ``save_pretrained``) or a ``Path`` to a
        folder already in that layout (copied, or moved when ``move_llm``).
    tokenizer
        Saved into ``llm/``; required when ``llm`` is a model, optional for a folder.
    export_onnx
        Also export ``encoder.onnx`` (a bundle without it can only use the torch encoder).
    overwrite
        Replace an existing ``out_dir``.
    move_llm
        Move (rename) a folder ``llm`` instead of copying it.
    progress
        Callback ``(message, fraction)``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise BundleError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _report(progress, "saving encoder weights", 0.05)
        encoder = encoder.to(device="cpu", dtype=torch.float32).eval()
        save_encoder_weights(encoder, staging / ENCODER_WEIGHTS_FILENAME)
        if export_onnx:
            _report(progress, "exporting encoder to ONNX", 0.15)
            export_encoder_onnx(encoder, staging / ENCODER_ONNX_FILENAME)
        _report(progress, "writing language model", 0.4)
        llm_dir = staging / LLM_DIRNAME
        if isinstance(llm, Path):
            if move_llm:
                shutil.move(str(llm), str(llm_dir))
            else:
                shutil.copytree(llm, llm_dir)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(llm_dir))
        else:
            if tokenizer is None:
                raise BundleError("a tokenizer is required when llm is a model object")
            llm.save_pretrained(str(llm_dir), safe_serialization=True)
            tokenizer.save_pretrained(str(llm_dir))
        if not (llm_dir / "config.json").is_file():
            raise BundleError("llm folder has no config.json")
        write_generation_config(llm_dir, manifest, tokenizer)
        _report(progress, "hashing files", 0.85)
        final = manifest.model_copy(update={"files": hash_bundle_files(staging)})
        final = BundleManifest.model_validate(final.model_dump())
        final.save(staging / MANIFEST_FILENAME)
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(trash)
            staging.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _report(progress, "bundle written", 1.0)
    log.info("bundle written", extra={"bundle": manifest.name, "version": manifest.version})
    return out_dir


def reexport_onnx(bundle_dir: Path, *, opset: int = 17, progress: Progress | None = None) -> Path:
    """Rebuild ``encoder.onnx`` from ``encoder.safetensors`` and refresh the manifest hashes.

    Parameters
    ----------
    bundle_dir
        An existing bundle (its ``encoder.safetensors`` hash must still match the manifest).
    opset
        ONNX opset for the export.
    progress
        Callback ``(message, fraction)``.

    Returns
    -------
    Path
        The new ``encoder.onnx``.
    """
    bundle_dir = Path(bundle_dir)
    manifest = BundleManifest.load(bundle_dir)
    weights = bundle_dir / ENCODER_WEIGHTS_FILENAME
    if manifest.files.get(ENCODER_WEIGHTS_FILENAME) != sha256_file(weights):
        raise BundleError("encoder.safetensors does not match the manifest; refusing to export")
    _report(progress, "loading encoder weights", 0.05)
    encoder = load_encoder_weights(weights, manifest.vision, manifest.projector)
    _report(progress, "exporting encoder to ONNX", 0.2)
    scratch = bundle_dir / f".{ENCODER_ONNX_FILENAME}.{uuid.uuid4().hex[:8]}"
    try:
        export_encoder_onnx(encoder, scratch, opset=opset)
        target = bundle_dir / ENCODER_ONNX_FILENAME
        scratch.replace(target)
    finally:
        scratch.unlink(missing_ok=True)
    files = dict(manifest.files, **{ENCODER_ONNX_FILENAME: sha256_file(target)})
    manifest.model_copy(update={"files": files}).save(bundle_dir)
    _report(progress, "encoder.onnx written", 1.0)
    return target


class LoadedBundle:
    """A bundle ready to draft: encoder (ONNX or torch) plus LLM and tokenizer."""

    def __init__(
        self,
        path: Path,
        manifest: BundleManifest,
        encoder: OnnxImageEncoder | ImageEncoder,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        engine: EngineGenerator | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.engine = engine

    @property
    def encoder_backend(self) -> Literal["onnx", "torch"]:
        """Which encoder implementation is in use."""
        return "onnx" if isinstance(self.encoder, OnnxImageEncoder) else "torch"

    def describe(self) -> dict[str, Any]:
        """What the UI shows about the loaded model (name, licence, intended use, ...)."""
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "architecture": m.architecture,
            "licence": m.licence,
            "intended_use": m.intended_use,
            "synthetic": m.synthetic,
            "device_uid": m.device_uid,
            "output_sections": m.output_sections,
            "encoder_backend": self.encoder_backend,
            "decode_engine": self.engine is not None,
        }

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Encode preprocessed pixels (B, C, H, W) or (C, H, W) to float32 (B, T, D)."""
        array = np.asarray(pixels, dtype=np.float32)
        if array.ndim == 3:
            array = array[None]
        return self.encoder.encode(array)

    def build_prompt(self, indication: str | None = None) -> str:
        """The full prompt text (image token included) for this bundle."""
        return render_prompt(self.manifest.prompt, indication)

    def prompt_tokens(self, indication: str | None = None) -> PromptTokens:
        """Token ids around the image slot for this bundle's prompt."""
        before, after = split_prompt(
            self.build_prompt(indication), self.manifest.prompt.image_token
        )
        return tokenize_prompt(self.tokenizer, before, after, self.manifest.tokenizer)

    def inputs_embeds(
        self, image_embeds: np.ndarray, indication: str | None = None
    ) -> torch.Tensor:
        """Spliced (1, L, D) input embeddings for one image."""
        embeds = _as_single(image_embeds, self.manifest.num_image_tokens)
        return build_inputs_embeds(
            self.model.get_input_embeddings(),
            self.prompt_tokens(indication),
            torch.from_numpy(embeds),
        )

    def generate(
        self,
        image_embeds: np.ndarray,
        *,
        indication: str | None = None,
        generation: GenerationSpec | None = None,
        seed: int | None = None,
        max_new_tokens: int | None = None,
    ) -> GenerationResult:
        """Generate the report text for one image.

        Parameters
        ----------
        image_embeds
            (T, D) or (1, T, D) output of :meth:`encode`.
        indication
            Optional reason for examination (used when the prompt supports it).
        generation
            Decoding override; defaults to the manifest's.
        seed
            Sampling seed (same seed, same text).
        max_new_tokens
            Override of the token budget.
        """
        return self.generate_batch(
            _as_single(image_embeds, self.manifest.num_image_tokens)[None],
            indications=[indication],
            generation=generation,
            seed=seed,
            max_new_tokens=max_new_tokens,
        )[0]

    def generate_batch(
        self,
        image_embeds: np.ndarray | Sequence[np.ndarray],
        *,
        indications: Sequence[str | None] | None = None,
        generation: GenerationSpec | None = None,
        seed: int | None = None,
        max_new_tokens: int | None = None,
    ) -> list[GenerationResult]:
        """Generate for several images at once.

        With the decode engine the rows join the engine's running batch (with the rows of
        every other draft in the process); without it they decode as one left-padded
        batch through ``model.generate``.

        Parameters
        ----------
        image_embeds
            (B, T, D) array or a sequence of (T, D) arrays.
        indications
            One per image (``None`` entries allowed); defaults to none.
        """
        rows = [_as_single(np.asarray(e), self.manifest.num_image_tokens) for e in image_embeds]
        if indications is None:
            indications = [None] * len(rows)
        if len(indications) != len(rows):
            raise ValueError("need one indication (or None) per image")
        prompts = [self.prompt_tokens(ind) for ind in indications]
        spec = generation or self.manifest.generation
        if self.engine is not None and all(
            self.engine.fits(p.length(self.manifest.num_image_tokens)) for p in prompts
        ):
            embedding = self.model.get_input_embeddings()
            spliced = [build_inputs_embeds(embedding, p, torch.from_numpy(r))[0]
                       for p, r in zip(prompts, rows, strict=True)]
            return self.engine.generate(spliced, spec, seed=seed, max_new_tokens=max_new_tokens)
        embeds, mask = build_batch_inputs_embeds(
            self.model.get_input_embeddings(), prompts, [torch.from_numpy(r) for r in rows]
        )
        return generate_from_embeds(
            self.model,
            self.tokenizer,
            embeds,
            mask,
            spec,
            seed=seed,
            max_new_tokens=max_new_tokens,
        )

    def draft(
        self, pixels: np.ndarray, *, indication: str | None = None, seed: int | None = None
    ) -> GenerationResult:
        """Encode one preprocessed image and generate its report text."""
        return self.generate(self.encode(pixels)[0], indication=indication, seed=seed)


def _as_single(image_embeds: np.ndarray, num_tokens: int) -> np.ndarray:
    array = np.asarray(image_embeds, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(
            f"expected (T, D) image embeddings for one image, got {array.shape}; "
            "use generate_batch for batches"
        )
    if array.shape[0] != num_tokens:
        raise ValueError(f"expected {num_tokens} image tokens, got {array.shape[0]}")
    return np.ascontiguousarray(array)


TRT_CACHE_ENV = "RADNODE_TRT_CACHE"


def default_trt_cache(manifest: BundleManifest) -> Path:
    """``$RADNODE_TRT_CACHE/<device_uid>``, else a per-bundle folder in the temp directory."""
    root = os.environ.get(TRT_CACHE_ENV) or str(Path(tempfile.gettempdir()) / "radnode-trt")
    return Path(root) / manifest.device_uid


def load_bundle(
    path: Path,
    *,
    device: str = "cpu",
    encoder_backend: Literal["onnx", "torch"] = "onnx",
    llm_dtype: str | None = None,
    providers: Sequence[ProviderEntry] | None = None,
    trt_cache_dir: Path | None = None,
    decode_engine: bool = False,
    engine_batch: int = 8,
    engine_max_new_tokens: int | None = None,
    engine_required: bool = True,
) -> LoadedBundle:
    """Load a bundle for drafting.

    Parameters
    ----------
    path
        Bundle folder.
    device
        Torch device of the LLM (and of the torch encoder).
    encoder_backend
        ``"onnx"`` (onnxruntime, providers chosen TensorRT > CUDA > CPU) or ``"torch"``.
    llm_dtype
        LLM weights dtype; default: the manifest's ``llm_dtype`` on CUDA, float32 on CPU.
    providers
        onnxruntime providers override.
    trt_cache_dir
        TensorRT engine cache (used only when TensorRT is available); default
        :func:`default_trt_cache`. Kept outside the bundle so verification stays clean.
    decode_engine
        Generate through the continuous-batching decode engine
        (:mod:`workers.inference.engine`) instead of ``model.generate``; needs a LLaMA-family
        LLM.
    engine_batch
        The engine's slots: sequences decoded together.
    engine_max_new_tokens
        Longest output the engine is sized for when a site allows more than the bundle's
        ``max_new_tokens``.
    engine_required
        With ``False``, an LLM the engine cannot run is loaded for ``model.generate`` (with
        a warning) instead of raising.

    Raises
    ------
    BundleError
        When a file is missing, the LLM does not fit the projector, or the engine is asked
        for a model it cannot run.

    Returns
    -------
    LoadedBundle
    """
    path = Path(path)
    manifest = BundleManifest.load(path)
    torch_device = torch.device(device)
    if encoder_backend == "onnx":
        onnx_path = path / ENCODER_ONNX_FILENAME
        if not onnx_path.is_file():
            raise BundleError(
                f"{onnx_path} missing; load with encoder_backend='torch' or re-export"
            )
        if providers is None:
            providers = select_providers(trt_cache_dir=trt_cache_dir or default_trt_cache(manifest))
        if torch_device.type == "cuda" and _cpu_only(providers):
            log.info("onnxruntime has no GPU provider here: image encoder runs in torch on %s",
                     torch_device)
            encoder_backend = "torch"
    encoder: OnnxImageEncoder | ImageEncoder
    if encoder_backend == "onnx":
        encoder = OnnxImageEncoder(path / ENCODER_ONNX_FILENAME, providers=providers)
    elif encoder_backend == "torch":
        encoder = load_encoder_weights(
            path / ENCODER_WEIGHTS_FILENAME, manifest.vision, manifest.projector
        )
        encoder = encoder.to(torch_device)
    else:
        raise ValueError(f"unknown encoder backend {encoder_backend!r}")
    if llm_dtype is not None:
        dtype = resolve_dtype(llm_dtype)
    elif torch_device.type == "cuda":
        dtype = resolve_dtype(manifest.llm_dtype)
    else:
        dtype = torch.float32
    model, tokenizer = load_llm(
        path / LLM_DIRNAME, device=device, dtype=dtype, tokenizer_settings=manifest.tokenizer
    )
    hidden = int(model.get_input_embeddings().weight.shape[1])
    if hidden != manifest.projector.out_dim:
        raise BundleError(
            f"LLM hidden size {hidden} != projector out_dim {manifest.projector.out_dim}"
        )
    engine = None
    if decode_engine:
        from workers.inference.engine import UnsupportedModelError
        from workers.inference.engine_generation import EngineGenerator

        try:
            engine = EngineGenerator(model, tokenizer, max_batch=engine_batch,
                                     num_image_tokens=manifest.num_image_tokens,
                                     max_new_tokens=max(manifest.generation.max_new_tokens,
                                                        engine_max_new_tokens or 0),
                                     fp8=manifest.engine.weights == "fp8",
                                     kv_cache="fp8" if manifest.engine.kv_cache == "fp8"
                                     else "auto")
        except UnsupportedModelError as exc:
            if engine_required:
                raise BundleError(f"the decode engine cannot run this LLM: {exc}") from exc
            log.warning("decode engine not used: %s; drafting with model.generate", exc)
        else:
            log.info("decode engine ready", extra={"engine": engine.describe()})
    return LoadedBundle(path, manifest, encoder, model, tokenizer, torch_device, engine)


def _cpu_only(providers: Sequence[ProviderEntry]) -> bool:
    names = [p if isinstance(p, str) else p[0] for p in providers]
    return all(name == CPU for name in names)


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_bundle`."""

    path: Path
    ok: bool = True
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    parity_max_abs_error: float | None = None
    parity_scale: float | None = None
    tolerance: float = DEFAULT_PARITY_TOLERANCE
    providers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def parity_limit(self) -> float | None:
        """The absolute error allowed for this bundle (``tolerance * max(1, scale)``)."""
        if self.parity_scale is None:
            return None
        return self.tolerance * max(1.0, self.parity_scale)

    def fail(self, message: str) -> None:
        """Record an error and mark the report failed."""
        self.ok = False
        self.errors.append(message)

    def raise_for_errors(self) -> None:
        """Raise :class:`BundleError` listing the errors, if any."""
        if not self.ok:
            raise BundleError(f"bundle {self.path} failed verification: " + "; ".join(self.errors))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "missing": self.missing,
            "mismatched": self.mismatched,
            "unexpected": self.unexpected,
            "parity_max_abs_error": self.parity_max_abs_error,
            "parity_scale": self.parity_scale,
            "parity_limit": self.parity_limit,
            "tolerance": self.tolerance,
            "providers": self.providers,
            "errors": self.errors,
        }


def verify_bundle(
    path: Path,
    *,
    tolerance: float = DEFAULT_PARITY_TOLERANCE,
    check_parity: bool = True,
    providers: Sequence[ProviderEntry] | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check a bundle's file hashes and ONNX-vs-torch encoder parity.

    Parameters
    ----------
    path
        Bundle folder.
    tolerance
        Relative parity tolerance (see the module docstring for the exact rule).
    check_parity
        Run the encoder comparison (takes seconds to a minute for full-size towers on CPU).
    providers
        onnxruntime providers for the parity run (default CPU only, for a stable reference).
    progress
        Callback ``(message, fraction)``.

    Returns
    -------
    VerifyReport
        ``ok`` is False on any missing, altered or unlisted file, or parity above tolerance.
    """
    path = Path(path)
    report = VerifyReport(path=path, tolerance=tolerance)
    try:
        manifest = BundleManifest.load(path)
    except Exception as exc:  # noqa: BLE001 - any parse/validation failure is a verification failure
        report.fail(f"manifest unreadable: {exc}")
        return report
    _report(progress, "checking file hashes", 0.05)
    present = hash_bundle_files(path)
    for rel, digest in sorted(manifest.files.items()):
        if rel not in present:
            report.missing.append(rel)
        elif present[rel] != digest:
            report.mismatched.append(rel)
    report.unexpected = sorted(set(present) - set(manifest.files))
    for label, items in (
        ("missing", report.missing),
        ("altered", report.mismatched),
        ("unlisted", report.unexpected),
    ):
        if items:
            report.fail(f"{label} files: {', '.join(items)}")
    for required in (ENCODER_WEIGHTS_FILENAME, f"{LLM_DIRNAME}/config.json"):
        if required not in manifest.files:
            report.fail(f"manifest does not list {required}")
    if check_parity:
        _report(progress, "comparing ONNX and torch encoders", 0.3)
        _check_parity(path, manifest, report, providers)
    _report(progress, "verification finished", 1.0)
    return report


def _check_parity(
    path: Path,
    manifest: BundleManifest,
    report: VerifyReport,
    providers: Sequence[ProviderEntry] | None,
) -> None:
    onnx_path = path / ENCODER_ONNX_FILENAME
    weights_path = path / ENCODER_WEIGHTS_FILENAME
    if not onnx_path.is_file() or not weights_path.is_file():
        report.fail("parity not checked: encoder.onnx or encoder.safetensors missing")
        return
    try:
        torch_encoder = load_encoder_weights(weights_path, manifest.vision, manifest.projector)
        session = OnnxImageEncoder(onnx_path, providers=list(providers) if providers else [CPU])
    except Exception as exc:  # noqa: BLE001 - a broken file is reported, not raised
        report.fail(f"encoder could not be loaded: {exc}")
        return
    report.providers = session.providers
    channels, size = manifest.vision.in_channels, manifest.vision.image_size
    worst = 0.0
    scale = 0.0
    for _name, batch in parity_inputs(channels, size):
        reference = torch_encoder.encode(batch)
        candidate = session.encode(batch)
        if reference.shape != candidate.shape:
            report.fail(
                f"encoder output shapes differ: torch {reference.shape} vs onnx {candidate.shape}"
            )
            return
        worst = max(worst, max_abs_error(reference, candidate))
        scale = max(scale, float(np.max(np.abs(reference))))
    expected = (1, manifest.num_image_tokens, manifest.projector.out_dim)
    if reference.shape != expected:
        report.fail(f"encoder output shape {reference.shape} != manifest {expected}")
    report.parity_max_abs_error = worst
    report.parity_scale = scale
    limit = report.parity_limit
    if limit is not None and not worst <= limit:
        report.fail(f"ONNX/torch parity error {worst:.3g} above limit {limit:.3g}")


__all__ = [
    "DEFAULT_PARITY_TOLERANCE",
    "BundleError",
    "GenerationResult",
    "LoadedBundle",
    "Progress",
    "VerifyReport",
    "default_trt_cache",
    "hash_bundle_files",
    "load_bundle",
    "reexport_onnx",
    "verify_bundle",
    "write_bundle",
    "write_generation_config",
]
