"""Conversation templates of the supported models, rendered exactly as upstream.

``vicuna_v1`` (LLaVA-Rad)::

    {system} USER: <image>\\n{question} ASSISTANT:

``llama2_chat`` (CXR-LLaVA; the historical default LLaMA-2 chat template, whose user turn is
``strip()``-ed)::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<image>\\n{question} [/INST]

``radnode_plain`` (synthetic demo models)::

    {system}\\n<image>\\n{question}\\n          (the first line is omitted when system is empty)

The rendered text keeps the image token as a placeholder; :func:`split_prompt` cuts the text
around it so the pieces can be tokenised separately and the image embeddings spliced in.
"""

from __future__ import annotations

import re

from workers.inference.manifest import PromptSpec

BOS_TEXT = "<s>"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_RAD_QUESTION = "Provide a description of the findings in the radiology image."
LLAVA_RAD_QUESTION_WITH_INDICATION = (
    "Provide a description of the findings in the radiology image given the following "
    "indication: {indication}"
)
CXR_LLAVA_SYSTEM = (
    "You are a helpful radiologist. Try to interpret chest x ray image and answer to the "
    "question that user provides."
)
CXR_LLAVA_QUESTION = (
    "Write a radiologic report on the given chest radiograph, including information about "
    "atelectasis, cardiomegaly, consolidation, pulmonary edema, pleural effusion, and "
    "pneumothorax.\n"
)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def llava_rad_prompt_spec() -> PromptSpec:
    """The Vicuna-v1 prompt of LLaVA-Rad (findings request, optional indication)."""
    return PromptSpec(
        style="vicuna_v1",
        system=VICUNA_SYSTEM,
        question=LLAVA_RAD_QUESTION,
        question_with_indication=LLAVA_RAD_QUESTION_WITH_INDICATION,
    )


def cxr_llava_prompt_spec() -> PromptSpec:
    """The LLaMA-2 chat prompt of CXR-LLaVA's ``write_radiologic_report``."""
    return PromptSpec(
        style="llama2_chat",
        system=CXR_LLAVA_SYSTEM,
        question=CXR_LLAVA_QUESTION,
        question_with_indication=None,
    )


def clean_indication(indication: str) -> str:
    """Put a free-text indication on one line: each line break (``\\n``, ``\\r\\n`` or
    ``\\r``) becomes one space, as in LLaVA-Rad's data loaders; nothing else changes."""
    return _LINE_BREAK.sub(" ", indication)


def question_for(spec: PromptSpec, indication: str | None) -> str:
    """The question text, with the indication filled in when the template supports it.

    An empty or whitespace-only indication counts as none. A template without an indication
    variant ignores the indication. The ``vicuna_v1`` question is ``strip()``-ed, as LLaVA-Rad
    strips it before building the conversation (``llama2_chat`` strips the whole user turn).
    """
    cleaned = clean_indication(indication) if indication and indication.strip() else ""
    question = spec.question
    if cleaned and spec.question_with_indication is not None:
        question = spec.question_with_indication.replace("{indication}", cleaned)
    if spec.style == "vicuna_v1":
        question = question.strip()  # LLaVA-Rad's evaluation strips the question
    return question


def render_prompt(spec: PromptSpec, indication: str | None = None) -> str:
    """Render the full prompt text, image token included.

    Parameters
    ----------
    spec
        Template description.
    indication
        Optional reason for the examination.

    Returns
    -------
    str
        The prompt as the upstream code builds it (for ``llama2_chat`` it starts with the
        literal ``<s>``, as the chat template does; the tokenizer adds its own BOS in front,
        so the ids start with two BOS ids, as upstream's do).
    """
    question = question_for(spec, indication)
    user = f"{spec.image_token}\n{question}"
    if spec.style == "vicuna_v1":
        return f"{spec.system} USER: {user} ASSISTANT:"
    if spec.style == "llama2_chat":
        content = f"<<SYS>>\n{spec.system}\n<</SYS>>\n\n{user}"
        return f"{BOS_TEXT}[INST] {content.strip()} [/INST]"
    if spec.style == "radnode_plain":
        head = f"{spec.system}\n" if spec.system else ""
        return f"{head}{user}\n"
    raise ValueError(f"unknown prompt style {spec.style!r}")


def split_prompt(text: str, image_token: str) -> tuple[str, str]:
    """Split a rendered prompt at its single image token.

    The text is kept whole, a leading literal BOS text (``<s>``) included: upstream
    tokenises it as the BOS id, after the one its tokenizer adds
    (:func:`workers.inference.llm.tokenize_prompt`).

    Returns
    -------
    tuple of str
        ``(before, after)``, the text around the image token.
    """
    count = text.count(image_token)
    if count != 1:
        raise ValueError(f"prompt must contain exactly one {image_token!r}, found {count}")
    before, after = text.split(image_token)
    return before, after


__all__ = [
    "BOS_TEXT",
    "CXR_LLAVA_QUESTION",
    "CXR_LLAVA_SYSTEM",
    "LLAVA_RAD_QUESTION",
    "LLAVA_RAD_QUESTION_WITH_INDICATION",
    "VICUNA_SYSTEM",
    "clean_indication",
    "cxr_llava_prompt_spec",
    "llava_rad_prompt_spec",
    "question_for",
    "render_prompt",
    "split_prompt",
]
