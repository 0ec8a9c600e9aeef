"""Importers turning published checkpoints into node bundles, without remote code.

Shared pieces: safe checkpoint reading, streaming of sharded Hugging Face weights,
sharded safetensors writing and tokenizer copying.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workers.inference.manifest import TokenizerSpec

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
DEFAULT_SHARD_BYTES = 4 * 1024**3


class CheckpointFormatError(Exception):
    """A source checkpoint folder does not look like what the importer expects."""


def report(progress: Progress | None, message: str, fraction: float) -> None:
    """Forward to a progress callback when one is given."""
    if progress is not None:
        progress(message, min(max(fraction, 0.0), 1.0))


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, with a clear error when the file is missing."""
    if not path.is_file():
        raise CheckpointFormatError(f"missing {path.name} in {path.parent}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path.name} is not a JSON object")
    return data


def load_pickled_checkpoint(path: Path, *, allow_unsafe_pickle: bool = False) -> Any:
    """``torch.load`` a ``.bin``/``.pt`` file with the weights-only unpickler.

    Training checkpoints sometimes hold numpy scalars (epoch counters, metrics); those numpy
    types are allowed explicitly. ``allow_unsafe_pickle`` falls back to full unpickling, which
    can execute code: only for files from a trusted source.
    """
    import numpy as np

    if not path.is_file():
        raise CheckpointFormatError(f"missing {path.name} in {path.parent}")
    safe_numpy: list[Any] = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    multiarray = getattr(core, "multiarray", None)
    for name in ("scalar", "_reconstruct"):
        if multiarray is not None and hasattr(multiarray, name):
            safe_numpy.append(getattr(multiarray, name))
    safe_numpy.extend(type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32"))
    try:
        with torch.serialization.safe_globals(safe_numpy):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError:
        if not allow_unsafe_pickle:
            raise
        log.warning("loading %s with full unpickling (trusted source)", path.name)
        return torch.load(str(path), map_location="cpu", weights_only=False)


def _is_zip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, in index order when an index exists.

    Safetensors are preferred over ``pytorch_model*.bin`` when both are present.
    """
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = model_dir / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map", {})
            names = list(dict.fromkeys(weight_map.values()))
            missing = [n for n in names if not (model_dir / n).is_file()]
            if missing:
                raise CheckpointFormatError(f"{index_name} lists missing shards: {missing}")
            return [model_dir / n for n in names]
        if (model_dir / single).is_file():
            return [model_dir / single]
    shards = sorted(model_dir.glob("model-*-of-*.safetensors")) or sorted(
        model_dir.glob("pytorch_model-*-of-*.bin")
    )
    if shards:
        return shards
    raise CheckpointFormatError(f"no model weights found in {model_dir}")


def iter_weight_tensors(
    path: Path, *, allow_unsafe_pickle: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from one weight file, lazily for safetensors."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, handle.get_tensor(name)
        return
    state = load_pickled_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path.name} does not hold a state dict")
    yield from state.items()


class ShardedSafetensorsWriter:
    """Write a state dict as Hugging Face safetensors shards, one tensor at a time.

    Produces ``model.safetensors`` when everything fits one shard, else
    ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.
    """

    def __init__(self, out_dir: Path, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()
        self.total_bytes = 0
        out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; flushes a shard when the size limit is reached."""
        if name in self._names:
            raise ValueError(f"duplicate tensor {name}")
        self._names.add(name)
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        part = self.out_dir / f".part-{len(self._written):05d}.safetensors"
        save_file(self._pending, str(part), metadata={"format": "pt"})
        self._written.append((part, list(self._pending)))
        self._pending = {}
        self._pending_bytes = 0

    def close(self) -> list[Path]:
        """Write the remaining tensors, name the shards and the index; return shard paths."""
        self._flush()
        total = len(self._written)
        if total == 0:
            raise ValueError("no tensors written")
        if total == 1:
            target = self.out_dir / "model.safetensors"
            self._written[0][0].rename(target)
            return [target]
        weight_map: dict[str, str] = {}
        paths: list[Path] = []
        for number, (part, names) in enumerate(self._written, start=1):
            target = self.out_dir / f"model-{number:05d}-of-{total:05d}.safetensors"
            part.rename(target)
            paths.append(target)
            weight_map.update({n: target.name for n in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n"
        )
        return paths


def tokenizer_settings_from(src_dir: Path) -> TokenizerSpec:
    """The settings the upstream code's ``LlamaTokenizer`` runs with, from
    ``tokenizer_config.json``.

    A key the file does not carry (or carries as ``null``) takes the value ``transformers``
    4.3x used then: ``legacy`` true, ``add_bos_token`` true, ``add_eos_token`` false.
    """
    path = src_dir / "tokenizer_config.json"
    config = read_json(path) if path.is_file() else {}
    defaults = TokenizerSpec()
    values: dict[str, bool] = {}
    for key in ("legacy", "add_bos_token", "add_eos_token"):
        value = config.get(key)
        if value is None:
            values[key] = bool(getattr(defaults, key))
        elif isinstance(value, bool):
            values[key] = value
        else:
            raise CheckpointFormatError(f"tokenizer_config.json: {key} must be true or false")
    return TokenizerSpec(**values)


def load_tokenizer_from(src_dir: Path) -> Any:
    """Load a tokenizer from the tokenizer files of ``src_dir`` only (offline).

    The files are copied to a scratch folder first so that a model ``config.json`` with an
    unknown ``model_type`` or ``auto_map`` (remote code) is never consulted. LLaMA tokenizers
    without a pad token get ``<unk>`` as pad, as both upstream projects do. The ``legacy``
    flag is the upstream one (:func:`tokenizer_settings_from`).
    """
    from transformers import AutoTokenizer

    present = [name for name in TOKENIZER_FILES if (src_dir / name).is_file()]
    if not any(name in present for name in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointFormatError(f"no tokenizer.json or tokenizer.model in {src_dir}")
    with tempfile.TemporaryDirectory(prefix="radnode-tok-") as scratch:
        for name in present:
            shutil.copy2(src_dir / name, Path(scratch) / name)
        config_path = Path(scratch) / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if "auto_map" in config:
            config.pop("auto_map")
            config_path.write_text(json.dumps(config, indent=2))
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                scratch,
                local_files_only=True,
                trust_remote_code=False,
                legacy=tokenizer_settings_from(src_dir).legacy,
            )
        except (ImportError, ValueError, OSError) as exc:
            if "tokenizer.json" not in present:
                raise CheckpointFormatError(
                    "converting tokenizer.model needs the 'sentencepiece' package "
                    f"(or provide tokenizer.json): {exc}"
                ) from exc
            raise
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def write_llama_config(config: dict[str, Any], out_dir: Path, *, dtype: str) -> None:
    """Write a ``LlamaForCausalLM`` ``config.json`` from a LLaMA config dict."""
    from transformers import LlamaConfig

    clean = {
        k: v
        for k, v in config.items()
        if k not in ("architectures", "model_type", "auto_map", "_name_or_path")
    }
    clean.pop("torch_dtype", None)
    llama = LlamaConfig(**clean)
    llama.architectures = ["LlamaForCausalLM"]
    llama.dtype = dtype
    llama.save_pretrained(str(out_dir))


def scaled_progress(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """Map a sub-task's 0..1 progress onto ``start..stop`` of the caller's callback."""
    if progress is None:
        return None
    callback = progress

    def forward(message: str, fraction: float) -> None:
        callback(message, start + (stop - start) * fraction)

    return forward


__all__ = [
    "CheckpointFormatError",
    "DEFAULT_SHARD_BYTES",
    "Progress",
    "ShardedSafetensorsWriter",
    "iter_weight_tensors",
    "load_pickled_checkpoint",
    "load_tokenizer_from",
    "read_json",
    "report",
    "scaled_progress",
    "tokenizer_settings_from",
    "weight_files",
    "write_llama_config",
]
