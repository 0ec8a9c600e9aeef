"""onnxruntime execution-provider selection (TensorRT > CUDA > CPU)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCE: tuple[str, ...] = (TENSORRT, CUDA, CPU)
PROVIDERS_ENV = "RADNODE_ORT_PROVIDERS"

ProviderEntry = str | tuple[str, dict[str, Any]]


def available_providers() -> list[str]:
    """Return the providers compiled into the installed onnxruntime."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def select_providers(
    requested: Sequence[str] | None = None,
    *,
    available: Sequence[str] | None = None,
    trt_cache_dir: Path | None = None,
    trt_fp16: bool = False,
) -> list[ProviderEntry]:
    """Choose onnxruntime providers in order of preference.

    Parameters
    ----------
    requested
        Provider names to use, in order (e.g. ``["CUDAExecutionProvider"]``). Names that are
        not available are dropped with a warning. ``None`` reads the comma-separated
        ``RADNODE_ORT_PROVIDERS`` variable, else uses TensorRT > CUDA > CPU.
    available
        Providers to choose from; defaults to :func:`available_providers`.
    trt_cache_dir
        Folder for TensorRT engine caches (strongly recommended in production: building an
        engine takes minutes).
    trt_fp16
        Let TensorRT run in fp16 (changes numerics; off by default).

    Returns
    -------
    list
        Entries for ``onnxruntime.InferenceSession(providers=...)``; CPU is always last.
    """
    have = list(available) if available is not None else available_providers()
    explicit = True
    if requested is None:
        env = os.environ.get(PROVIDERS_ENV, "").strip()
        explicit = bool(env)
        requested = [p.strip() for p in env.split(",") if p.strip()] if env else list(PREFERENCE)
    chosen: list[str] = []
    for name in requested:
        if name in have and name not in chosen:
            chosen.append(name)
        elif name not in have and explicit:
            log.warning("onnxruntime provider %s is not available; skipping", name)
    if CPU not in chosen:
        chosen.append(CPU)
    entries: list[ProviderEntry] = []
    for name in chosen:
        if name == TENSORRT:
            options: dict[str, Any] = {"trt_fp16_enable": trt_fp16}
            if trt_cache_dir is not None:
                trt_cache_dir.mkdir(parents=True, exist_ok=True)
                options.update(
                    trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir)
                )
            entries.append((name, options))
        else:
            entries.append(name)
    return entries


def provider_names(entries: Sequence[ProviderEntry]) -> list[str]:
    """Strip provider options, keeping the names."""
    return [e if isinstance(e, str) else e[0] for e in entries]


__all__ = [
    "CPU",
    "CUDA",
    "PREFERENCE",
    "PROVIDERS_ENV",
    "ProviderEntry",
    "TENSORRT",
    "available_providers",
    "provider_names",
    "select_providers",
]
