"""A tiny LLaMA-style tokenizer for the synthetic demo model.

Byte-pair encoding trained on the synthetic report vocabulary (so that nearly every template
word is one token) with the same conventions as the LLaMA tokenizers the real models use:

* ids 0/1/2 are ``<unk>``, ``<s>`` (BOS), ``</s>`` (EOS); ``<pad>`` and the image placeholder
  follow as special tokens;
* the 256 byte tokens ``<0x00>`` ... ``<0xFF>`` give a lossless fallback for any character the
  merges do not cover;
* words carry a leading ``▁`` (Metaspace) and the decoder turns it back into spaces;
* encoding with special tokens prepends BOS only, as LLaMA's post-processor does.

The result is saved as ``tokenizer.json`` + ``tokenizer_config.json`` and loads offline with
``transformers.AutoTokenizer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, BOS, EOS, PAD, IMAGE)
SPACE_MARK = "\u2581"
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))
# Printable ASCII is always in the alphabet, so ordinary text never needs the byte fallback.
BASE_ALPHABET: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n", SPACE_MARK)
DEFAULT_MERGE_VOCAB = 640
"""Size of the trained part of the vocabulary (alphabet + merges), before byte tokens."""


def _train_bpe(
    corpus: Iterable[str], vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    draft = Tokenizer(models.BPE(unk_token=UNK))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(BASE_ALPHABET),
        limit_alphabet=len(BASE_ALPHABET) + 32,
    )
    draft.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(draft.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return vocab, [(a, b) for a, b in merges]


def build_tokenizer(
    corpus: Iterable[str], *, merge_vocab_size: int = DEFAULT_MERGE_VOCAB
) -> Tokenizer:
    """Train the tokenizer on ``corpus``.

    Parameters
    ----------
    corpus
        Texts to learn merges from (reports, prompts, indications).
    merge_vocab_size
        Size of the learned vocabulary (alphabet + merges + special tokens); the 256 byte
        tokens come on top.

    Returns
    -------
    tokenizers.Tokenizer
        Deterministic for a given corpus.
    """
    trained, merges = _train_bpe(corpus, merge_vocab_size)
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *BYTE_TOKENS):
        vocab[token] = len(vocab)
    for token, _ in sorted(trained.items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE_MARK, prepend_scheme="first"
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE_MARK, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def to_transformers(tokenizer: Tokenizer) -> Any:
    """Wrap as a ``transformers`` fast tokenizer with the special tokens declared."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[IMAGE],
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> Path:
    """Save in Hugging Face layout (``tokenizer.json``, ``tokenizer_config.json``, ...).

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    to_transformers(tokenizer).save_pretrained(str(out_dir))
    return out_dir


__all__ = [
    "BOS",
    "BYTE_TOKENS",
    "DEFAULT_MERGE_VOCAB",
    "EOS",
    "IMAGE",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "build_tokenizer",
    "save_tokenizer",
    "to_transformers",
]
