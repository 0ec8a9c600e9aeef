"""Language-model side: loading, prompt tokenisation, embedding splice and generation.

The image embeddings replace the image token of the prompt: the text before it and after it
are tokenised separately, each piece on its own with the upstream tokenizer's settings, and
joined as the upstream ``tokenizer_image_token`` joins them. :func:`build_inputs_embeds` and
:func:`build_batch_inputs_embeds` are pure functions usable by any decode engine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from workers.inference.manifest import GenerationSpec, TokenizerSpec

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype name (``float16``, ``bf16``, ...) to a torch dtype."""
    try:
        return DTYPES[name.lower()]
    except KeyError as exc:
        raise ValueError(f"unknown dtype {name!r}") from exc


@dataclass(frozen=True)
class PromptTokens:
    """Token ids around the image slot (``before`` starts with the BOS id or ids)."""

    before: tuple[int, ...]
    after: tuple[int, ...]

    def length(self, num_image_tokens: int) -> int:
        """Sequence length once ``num_image_tokens`` embeddings are spliced in."""
        return len(self.before) + num_image_tokens + len(self.after)


@dataclass(frozen=True)
class GenerationResult:
    """One generated report text and its accounting."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    new_tokens: int
    seconds: float
    stopped_on_eos: bool = False


def tokenize_prompt(
    tokenizer: Any,
    before_text: str,
    after_text: str,
    settings: TokenizerSpec | None = None,
) -> PromptTokens:
    """Token ids of the text on both sides of the image token, as upstream builds them.

    Each piece is tokenised on its own with the special ids ``settings`` says the upstream
    tokenizer adds (``add_bos_token`` / ``add_eos_token``); a literal ``<s>`` in the text
    is the BOS id too. As LLaVA's ``tokenizer_image_token`` does, when the first piece
    starts with the BOS id, that id is kept once and the first id of every piece dropped
    (the BOS the tokenizer put there); otherwise the pieces are joined as they are.

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer, loaded with ``settings.legacy``
        (:func:`load_llm`).
    before_text, after_text
        Output of :func:`workers.inference.prompts.split_prompt`.
    settings
        The bundle's tokenizer settings; ``None`` means :class:`TokenizerSpec`'s defaults.

    Returns
    -------
    PromptTokens
        The ids before and after the image slot.
    """
    settings = settings or TokenizerSpec()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if settings.add_bos_token and bos is None:
        raise ValueError("tokenizer has no BOS token")
    if settings.add_eos_token and eos is None:
        raise ValueError("tokenizer has no EOS token")

    def encode(text: str) -> list[int]:
        ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        head = [int(bos)] if settings.add_bos_token else []
        tail = [int(eos)] if settings.add_eos_token else []
        return head + ids + tail

    first, second = encode(before_text), encode(after_text)
    offset = 1 if first and bos is not None and first[0] == int(bos) else 0
    return PromptTokens(before=tuple(first), after=tuple(second[offset:]))


def build_inputs_embeds(
    embedding: nn.Module,
    prompt: PromptTokens,
    image_embeds: torch.Tensor,
) -> torch.Tensor:
    """Splice image embeddings between the embedded prompt pieces.

    Parameters
    ----------
    embedding
        The LLM's input embedding (``model.get_input_embeddings()``).
    prompt
        Token ids before/after the image slot.
    image_embeds
        (T, D) image embeddings in the LLM hidden width.

    Returns
    -------
    torch.Tensor
        (1, L, D) with L = ``prompt.length(T)``, in the embedding's dtype and device.
    """
    weight = _embedding_weight(embedding)
    if image_embeds.ndim != 2 or image_embeds.shape[1] != weight.shape[1]:
        raise ValueError(
            f"image_embeds must be (T, {weight.shape[1]}), got {tuple(image_embeds.shape)}"
        )
    device = weight.device
    before = embedding(torch.tensor(prompt.before, dtype=torch.long, device=device))
    after = embedding(torch.tensor(prompt.after, dtype=torch.long, device=device))
    image = image_embeds.to(device=device, dtype=weight.dtype)
    return torch.cat([before, image, after], dim=0).unsqueeze(0)


def build_batch_inputs_embeds(
    embedding: nn.Module,
    prompts: Sequence[PromptTokens],
    image_embeds: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded batch of spliced sequences for batched decoding.

    Returns
    -------
    tuple of torch.Tensor
        ``inputs_embeds`` (B, L, D) padded on the left with zeros and ``attention_mask``
        (B, L) long, 0 on padding.
    """
    if len(prompts) != len(image_embeds) or not prompts:
        raise ValueError("need one prompt per image embedding, at least one")
    rows = [
        build_inputs_embeds(embedding, p, e)[0] for p, e in zip(prompts, image_embeds, strict=True)
    ]
    longest = max(row.shape[0] for row in rows)
    width = rows[0].shape[1]
    embeds = rows[0].new_zeros((len(rows), longest, width))
    mask = torch.zeros((len(rows), longest), dtype=torch.long, device=rows[0].device)
    for index, row in enumerate(rows):
        embeds[index, longest - row.shape[0] :] = row
        mask[index, longest - row.shape[0] :] = 1
    return embeds, mask


def _embedding_weight(embedding: nn.Module) -> torch.Tensor:
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError("embedding module has no weight tensor")
    return weight


def load_llm(
    llm_dir: Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer_settings: TokenizerSpec | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local Hugging Face folder, offline.

    Parameters
    ----------
    llm_dir
        Folder in ``save_pretrained`` layout.
    device
        Torch device string.
    dtype
        Weights dtype; ``None`` keeps the dtype stored in ``config.json``.
    tokenizer_settings
        The bundle's tokenizer settings; their ``legacy`` flag is given to the tokenizer
        (``None``: :class:`TokenizerSpec`'s default).

    Returns
    -------
    tuple
        ``(model, tokenizer)``, the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = tokenizer_settings or TokenizerSpec()
    tokenizer = AutoTokenizer.from_pretrained(
        str(llm_dir), local_files_only=True, legacy=settings.legacy
    )
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = cast(Any, AutoModelForCausalLM).from_pretrained(str(llm_dir), **kwargs)
    model = model.to(device).eval()
    return model, tokenizer


def make_generation_config(
    spec: GenerationSpec,
    *,
    eos_token_id: int,
    pad_token_id: int,
    bos_token_id: int | None,
    max_new_tokens: int,
) -> Any:
    """A fresh ``transformers.GenerationConfig`` carrying exactly ``spec``.

    Nothing is inherited from the model's own ``generation_config.json`` (Vicuna's, for
    instance, enables sampling), so decoding is what the bundle manifest says.
    """
    from transformers import GenerationConfig

    factory: Any = GenerationConfig
    common: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "num_beams": 1,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "repetition_penalty": spec.repetition_penalty,
        "use_cache": True,
    }
    if spec.greedy:
        return factory(do_sample=False, temperature=None, top_p=None, top_k=None, **common)
    return factory(
        do_sample=True,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k if spec.top_k > 0 else None,
        **common,
    )


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run a block under a fixed torch RNG seed without disturbing the global RNG state."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def pad_id_of(tokenizer: Any) -> int:
    """Pad id, falling back to UNK then EOS (LLaMA tokenizers often have no pad)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def generate_from_embeds(
    model: Any,
    tokenizer: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    spec: GenerationSpec,
    *,
    seed: int | None = None,
    max_new_tokens: int | None = None,
) -> list[GenerationResult]:
    """Decode a (left-padded) batch of spliced sequences with ``model.generate``.

    Parameters
    ----------
    model, tokenizer
        From :func:`load_llm`.
    inputs_embeds, attention_mask
        (B, L, D) and (B, L), e.g. from :func:`build_batch_inputs_embeds`.
    spec
        Decoding parameters (greedy when ``temperature == 0``).
    seed
        Seed for sampling; the same seed gives the same text.
    max_new_tokens
        Override of ``spec.max_new_tokens``; always capped so that prompt + output fit the
        model's ``max_position_embeddings``.

    Returns
    -------
    list of GenerationResult
        One per row; token ids stop before the first EOS.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no EOS token")
    prompt_len = int(inputs_embeds.shape[1])
    limit = max_new_tokens if max_new_tokens is not None else spec.max_new_tokens
    context = getattr(model.config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0:
        limit = max(1, min(limit, context - prompt_len - 1))
    config = make_generation_config(
        spec,
        eos_token_id=int(eos),
        pad_token_id=pad_id_of(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        max_new_tokens=limit,
    )
    started = time.perf_counter()
    with torch.inference_mode(), seeded(seed, inputs_embeds.device):
        output = model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=config
        )
    elapsed = time.perf_counter() - started
    results: list[GenerationResult] = []
    prompt_lengths = attention_mask.sum(dim=1).tolist()
    for row, prompt_tokens in zip(output.tolist(), prompt_lengths, strict=True):
        ids, stopped = _cut_at_eos(row, int(eos))
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        results.append(
            GenerationResult(
                text=text,
                token_ids=ids,
                prompt_tokens=int(prompt_tokens),
                new_tokens=len(ids),
                seconds=elapsed,
                stopped_on_eos=stopped,
            )
        )
    return results


def _cut_at_eos(ids: list[int], eos: int) -> tuple[list[int], bool]:
    if eos in ids:
        return ids[: ids.index(eos)], True
    return ids, False


__all__ = [
    "DTYPES",
    "GenerationResult",
    "PromptTokens",
    "build_batch_inputs_embeds",
    "build_inputs_embeds",
    "generate_from_embeds",
    "load_llm",
    "make_generation_config",
    "pad_id_of",
    "resolve_dtype",
    "seeded",
    "tokenize_prompt",
]
