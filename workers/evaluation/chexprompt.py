"""CheXprompt: a large language model as judge of report errors, through a chat endpoint.

LLaVA-Rad's CheXprompt asks a strong LLM to compare a generated report with the reference
and count errors of six kinds, each split into clinically significant and insignificant:

(a) a false report of a finding; (b) a missing finding; (c) a wrong anatomic location or
position of a finding; (d) a wrong severity of a finding; (e) a mention of a comparison the
reference does not have; (f) an omitted comparison describing a change from a prior study.

Hospitals run such models on-premises behind OpenAI-compatible servers (vLLM, TGI, llama.cpp
server…), so the client speaks ``POST {url}/chat/completions`` with the standard library only.
The prompt asks for a JSON answer; :func:`parse_response` reads it back and
:func:`aggregate` turns the counts into per-report means with bootstrap intervals.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from workers.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Estimate,
    bootstrap_many,
    resample_indices,
)


class ErrorKind(StrEnum):
    """The six kinds of report error CheXprompt counts; values are the prompt's letters."""

    FALSE_FINDING = "a"
    MISSING_FINDING = "b"
    WRONG_LOCATION = "c"
    WRONG_SEVERITY = "d"
    FALSE_COMPARISON = "e"
    MISSING_COMPARISON = "f"


ERROR_DESCRIPTIONS: dict[ErrorKind, str] = {
    ErrorKind.FALSE_FINDING: "False report of a finding in the candidate",
    ErrorKind.MISSING_FINDING: "Missing a finding present in the reference",
    ErrorKind.WRONG_LOCATION: "Misidentification of a finding's anatomic location/position",
    ErrorKind.WRONG_SEVERITY: "Misassessment of the severity of a finding",
    ErrorKind.FALSE_COMPARISON: "Mentioning a comparison that isn't in the reference",
    ErrorKind.MISSING_COMPARISON: "Omitting a comparison detailing a change from a prior study",
}

SYSTEM_PROMPT = (
    "You are an expert radiologist evaluating the accuracy of a candidate chest X-ray report "
    "against a reference report written by a radiologist. You answer only with JSON."
)


class Significance(StrEnum):
    """Whether an error would change the patient's care."""

    SIGNIFICANT = "clinically_significant"
    INSIGNIFICANT = "clinically_insignificant"


class ChexpromptError(RuntimeError):
    """The chat endpoint failed or answered something that is not a valid judgement."""


def build_messages(reference: str, candidate: str) -> list[dict[str, str]]:
    """The chat messages asking the judge to count the errors of ``candidate``."""
    kinds = "\n".join(f"({k.value}) {d};" for k, d in ERROR_DESCRIPTIONS.items())
    example = {s.value: {k.value: 0 for k in ErrorKind} for s in Significance}
    user = (
        "Compare the candidate report with the reference report. Count the errors of the "
        "candidate in each of these six categories:\n"
        f"{kinds}\n"
        "Count each error once, either as clinically significant (it could change the "
        "patient's management) or as clinically insignificant. Answer with a JSON object "
        "of exactly this shape, with non-negative integer counts, and nothing else:\n"
        f"{json.dumps(example)}\n\n"
        f"Reference report:\n{reference.strip()}\n\n"
        f"Candidate report:\n{candidate.strip()}\n"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Judgement:
    """Error counts of one candidate report, by significance and kind."""

    counts: dict[Significance, dict[ErrorKind, int]]

    def total(self, significance: Significance) -> int:
        """All errors of one significance."""
        return sum(self.counts[significance].values())


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_object(content: str) -> dict[str, Any]:
    fenced = _FENCE.search(content)
    text = fenced.group(1) if fenced else content
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        raise ChexpromptError("judge answer holds no JSON object")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ChexpromptError(f"judge answer is not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ChexpromptError("judge answer is not a JSON object")
    return data


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ChexpromptError(f"{where}: count must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise ChexpromptError(f"{where}: count must be a number, got {value!r}") from exc
    if number < 0 or number != int(number):
        raise ChexpromptError(f"{where}: count must be a non-negative integer, got {value!r}")
    return int(number)


def parse_response(content: str) -> Judgement:
    """Read the judge's answer (a JSON object, optionally inside a code fence or prose).

    Keys may be the category letters or ``"(a)"``-style labels; missing categories count 0.

    Raises
    ------
    ChexpromptError
        If there is no JSON object, a significance group is missing, a category is unknown
        or a count is not a non-negative integer.
    """
    data = _json_object(content)
    counts: dict[Significance, dict[ErrorKind, int]] = {}
    for significance in Significance:
        group = data.get(significance.value)
        if not isinstance(group, dict):
            raise ChexpromptError(f"judge answer lacks {significance.value!r}")
        parsed = {kind: 0 for kind in ErrorKind}
        for key, value in group.items():
            letter = str(key).strip().strip("()").lower()[:1]
            try:
                kind = ErrorKind(letter)
            except ValueError as exc:
                raise ChexpromptError(f"unknown error category {key!r}") from exc
            parsed[kind] = _count(value, f"{significance.value}.{key}")
        counts[significance] = parsed
    return Judgement(counts)


@dataclass(frozen=True)
class ChatEndpoint:
    """An OpenAI-compatible chat server.

    Attributes
    ----------
    url
        Base URL up to and including the API version, e.g. ``http://host:8000/v1``.
    model
        Model name the server knows.
    api_key
        Bearer token; ``None`` sends no ``Authorization`` header.
    timeout_s
        Seconds to wait for one answer.
    """

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, url: str, model: str, api_key_env: str,
                      timeout_s: float) -> ChatEndpoint:
        """Build from the ``[evaluation]`` settings (the key is read from ``api_key_env``)."""
        key = os.environ.get(api_key_env) if api_key_env else None
        return cls(url.rstrip("/"), model, key or None, timeout_s)

    def complete(self, messages: list[dict[str, str]]) -> str:
        """Send one chat request (temperature 0) and return the answer's text.

        Raises
        ------
        ChexpromptError
            On connection errors, HTTP errors or an answer without a message.
        """
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": 512}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}/chat/completions", data=body,
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise ChexpromptError(f"chat endpoint answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ChexpromptError(f"chat endpoint unreachable: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ChexpromptError("chat endpoint answered something that is not JSON") from exc
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ChexpromptError("chat endpoint answer has no choices[0].message") from exc
        if not isinstance(content, str):
            raise ChexpromptError("chat endpoint answer content is not text")
        return content


@dataclass(frozen=True)
class ChexpromptResult:
    """CheXprompt over a set: per-report means with intervals, and unparsable answers.

    ``metrics`` holds ``significant_errors`` and ``insignificant_errors`` (mean per report),
    ``no_significant_error`` (share of reports without one) and ``significant/<kind>`` /
    ``insignificant/<kind>`` means per error kind.
    """

    judged: int
    failed: list[tuple[str, str]]
    metrics: dict[str, Estimate]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"judged": self.judged,
                "failed": [{"id": i, "error": e} for i, e in self.failed],
                "metrics": {n: e.as_dict() for n, e in self.metrics.items()}}


def aggregate(judgements: Sequence[Judgement], *, resamples: int = DEFAULT_RESAMPLES,
              seed: int = DEFAULT_SEED) -> dict[str, Estimate]:
    """Per-report means of the error counts with bootstrap intervals.

    Raises
    ------
    ValueError
        If there are no judgements.
    """
    if not judgements:
        raise ValueError("no judgements to aggregate")
    names: list[str] = []
    rows: list[list[float]] = []
    for judgement in judgements:
        row = [float(judgement.total(Significance.SIGNIFICANT)),
               float(judgement.total(Significance.INSIGNIFICANT)),
               float(judgement.total(Significance.SIGNIFICANT) == 0)]
        for significance in Significance:
            row += [float(judgement.counts[significance][k]) for k in ErrorKind]
        rows.append(row)
    names = ["significant_errors", "insignificant_errors", "no_significant_error"]
    for significance in Significance:
        short = "significant" if significance is Significance.SIGNIFICANT else "insignificant"
        names += [f"{short}/{kind.name.lower()}" for kind in ErrorKind]
    matrix: NDArray[np.float64] = np.asarray(rows, dtype=np.float64)

    def means(indices: NDArray[np.int64]) -> dict[str, float]:
        return dict(zip(names, (float(v) for v in matrix[indices].mean(axis=0)), strict=True))

    return bootstrap_many(means, resample_indices(len(judgements), resamples, seed))


def run_chexprompt(pairs: Sequence[tuple[str, str, str]], endpoint: ChatEndpoint, *,
                   progress: Callable[[str, float], None] | None = None,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
                   ) -> ChexpromptResult:
    """Judge every ``(id, reference, candidate)`` and aggregate.

    A report whose answer cannot be read is listed in ``failed`` and left out of the means.

    Raises
    ------
    ChexpromptError
        If the endpoint cannot be reached, or no answer at all could be read.
    """
    judgements: list[Judgement] = []
    failed: list[tuple[str, str]] = []
    for number, (record_id, reference, candidate) in enumerate(pairs, start=1):
        content = endpoint.complete(build_messages(reference, candidate))
        try:
            judgements.append(parse_response(content))
        except ChexpromptError as exc:
            failed.append((record_id, str(exc)))
        if progress is not None:
            progress(f"judging {number}/{len(pairs)}", number / len(pairs))
    if not judgements:
        raise ChexpromptError(f"no judge answer could be read ({len(failed)} failed)")
    return ChexpromptResult(len(judgements), failed,
                            aggregate(judgements, resamples=resamples, seed=seed))


__all__ = ["ChatEndpoint", "ChexpromptError", "ChexpromptResult", "ERROR_DESCRIPTIONS",
           "ErrorKind", "Judgement", "SYSTEM_PROMPT", "Significance", "aggregate",
           "build_messages", "parse_response", "run_chexprompt"]
