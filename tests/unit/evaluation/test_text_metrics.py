"""ROUGE-L and BLEU against values computed by hand."""

from __future__ import annotations

import math

import pytest

from workers.evaluation.text_metrics import (
    bleu_stats,
    corpus_bleu,
    lcs_length,
    rouge_l,
    rouge_tokenize,
    tokenize_13a,
)


def test_rouge_tokenizer_lowercases_and_drops_punctuation() -> None:
    """rouge-score's default tokenizer: lower case, non-alphanumerics split."""
    assert rouge_tokenize("Heart-size: NORMAL.") == ["heart", "size", "normal"]


def test_lcs_length() -> None:
    """Longest common subsequence, not substring."""
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_by_hand() -> None:
    """LCS 3 of 4 and 4 tokens: P = R = 0.75, F = 0.75."""
    assert rouge_l("The heart is enlarged.", "Heart is not enlarged.") == pytest.approx(0.75)


def test_rouge_l_unequal_lengths() -> None:
    """LCS 2; P = 2/6, R = 2/3; F = 2PR / (P + R) = 4/9."""
    value = rouge_l("No pleural effusion.", "Small pleural effusion on the left.")
    assert value == pytest.approx(4 / 9)


def test_rouge_l_empty_is_zero() -> None:
    """An empty prediction scores 0."""
    assert rouge_l("No effusion.", "") == 0.0


def test_13a_tokenizer_splits_punctuation_but_not_decimals() -> None:
    """mteval 13a: commas and periods split off words, kept inside numbers."""
    assert tokenize_13a("Heart size 1.5 cm, stable.") == [
        "Heart", "size", "1.5", "cm", ",", "stable", "."]


def test_bleu_identical_is_one() -> None:
    """A prediction equal to its reference scores 1."""
    assert corpus_bleu(["The cat sat on the mat."], ["The cat sat on the mat."]) == 1.0


def test_bleu_1_clips_repeated_words() -> None:
    """"the" occurs once in the reference: 1 clipped match of 4; no brevity penalty."""
    assert corpus_bleu(["the cat"], ["the the the the"], max_order=1) == pytest.approx(0.25)


def test_bleu_4_by_hand() -> None:
    """Precisions 4/4, 2/3, 1/2 and 0/1 smoothed to 1/2; brevity penalty exp(1 - 6/4)."""
    stats = bleu_stats("No pleural effusion is seen.", "No pleural effusion.")
    assert stats.matches == (4, 2, 1, 0)
    assert stats.totals == (4, 3, 2, 1)
    expected = math.exp(1 - 6 / 4) * (1 * (2 / 3) * (1 / 2) * (1 / 2)) ** 0.25
    assert corpus_bleu(["No pleural effusion is seen."], ["No pleural effusion."]) == (
        pytest.approx(expected))


def test_bleu_is_corpus_level() -> None:
    """Counts are summed over the corpus (3 of 6 unigrams), not sentence scores averaged."""
    value = corpus_bleu(["the cat", "a dog barks"], ["the the the the", "a dog"], max_order=1)
    assert value == pytest.approx(0.5)


def test_bleu_refuses_mismatched_lists() -> None:
    """References and predictions must pair up."""
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        corpus_bleu(["a", "b"], ["a"])
