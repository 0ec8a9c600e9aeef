"""Text overlap metrics of generated reports: ROUGE-L and corpus BLEU-1 / BLEU-4.

Both follow the reference implementations the radiology report generation literature uses,
so figures are comparable with published ones:

* ROUGE-L as ``rouge-score`` computes it without a stemmer: text is lower-cased, every
  character outside ``[a-z0-9]`` becomes a space, tokens are whitespace-separated; per pair
  precision = LCS / prediction length, recall = LCS / reference length, F = 2PR / (P + R);
  the corpus score is the mean F over pairs.
* BLEU as ``sacrebleu``'s ``corpus_bleu`` with its defaults: the ``13a`` tokenizer (case
  kept), n-gram counts clipped per sentence and summed over the corpus, geometric mean of the
  n-gram precisions up to the maximum order, ``exp`` smoothing of zero counts, and a brevity
  penalty from the summed lengths. Scores are fractions (sacrebleu prints them × 100).

Each metric is split into per-pair statistics (:class:`BleuStats`, ROUGE-L F) that sum or
average over any subset, which is what the bootstrap resamples.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

_ROUGE_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# sacrebleu's 13a tokenizer (mteval-v13a.pl), in order.
_13A_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def rouge_tokenize(text: str) -> list[str]:
    """Tokens as ``rouge-score``'s default tokenizer makes them (no stemming)."""
    return _ROUGE_NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not first or not second:
        return 0
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second, start=1):
            current.append(previous[j - 1] + 1 if token == other
                           else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure of one prediction against its reference (0 when either is empty)."""
    ref_tokens, pred_tokens = rouge_tokenize(reference), rouge_tokenize(prediction)
    lcs = lcs_length(ref_tokens, pred_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def tokenize_13a(text: str) -> list[str]:
    """Tokens as sacrebleu's default ``13a`` tokenizer makes them."""
    line = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&")
                .replace("&lt;", "<").replace("&gt;", ">"))
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


@dataclass(frozen=True)
class BleuStats:
    """Sufficient statistics of BLEU for one or more sentence pairs.

    Attributes
    ----------
    matches, totals
        Clipped n-gram matches and prediction n-gram counts, for n = 1 … max order.
    prediction_length, reference_length
        Token counts.
    """

    matches: tuple[int, ...]
    totals: tuple[int, ...]
    prediction_length: int
    reference_length: int


def bleu_stats(reference: str, prediction: str, max_order: int = 4) -> BleuStats:
    """BLEU statistics of one pair (13a tokens, n-grams clipped by the reference counts)."""
    ref_tokens, pred_tokens = tokenize_13a(reference), tokenize_13a(prediction)
    matches, totals = [], []
    for n in range(1, max_order + 1):
        pred_ngrams = Counter(tuple(pred_tokens[i:i + n]) for i in range(len(pred_tokens) - n + 1))
        ref_ngrams = Counter(tuple(ref_tokens[i:i + n]) for i in range(len(ref_tokens) - n + 1))
        matches.append(sum(min(count, ref_ngrams[g]) for g, count in pred_ngrams.items()))
        totals.append(max(0, len(pred_tokens) - n + 1))
    return BleuStats(tuple(matches), tuple(totals), len(pred_tokens), len(ref_tokens))


def bleu_from_counts(matches: Sequence[int] | NDArray[np.int64],
                     totals: Sequence[int] | NDArray[np.int64],
                     prediction_length: int, reference_length: int) -> float:
    """Corpus BLEU (0–1) from summed statistics, with sacrebleu's ``exp`` smoothing."""
    max_order = len(matches)
    if prediction_length == 0:
        return 0.0
    smooth = 1.0
    log_precisions = 0.0
    for n in range(max_order):
        if totals[n] == 0:
            return 0.0
        if matches[n] == 0:
            smooth *= 2
            precision = 1.0 / (smooth * totals[n])
        else:
            precision = matches[n] / totals[n]
        log_precisions += math.log(precision)
    brevity = (1.0 if prediction_length >= reference_length
               else math.exp(1 - reference_length / prediction_length))
    return brevity * math.exp(log_precisions / max_order)


def corpus_bleu(references: Sequence[str], predictions: Sequence[str],
                max_order: int = 4) -> float:
    """Corpus BLEU (0–1) of predictions against one reference each.

    Raises
    ------
    ValueError
        If the two lists differ in length or ``max_order`` is below 1.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if max_order < 1:
        raise ValueError("max_order must be at least 1")
    stats = [bleu_stats(r, p, max_order) for r, p in zip(references, predictions, strict=True)]
    matches = [sum(s.matches[n] for s in stats) for n in range(max_order)]
    totals = [sum(s.totals[n] for s in stats) for n in range(max_order)]
    return bleu_from_counts(matches, totals, sum(s.prediction_length for s in stats),
                            sum(s.reference_length for s in stats))


__all__ = ["BleuStats", "bleu_from_counts", "bleu_stats", "corpus_bleu", "lcs_length",
           "rouge_l", "rouge_tokenize", "tokenize_13a"]
