"""``radnode eval``: scoring a predictions file, and drafting a folder of studies first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.cli.main import main
from node.observations import Mention, Observation
from tests.conftest import DEMO_BUNDLE_DIR
from workers.evaluation.labeler import label_report
from workers.inference.synth.studies import write_demo_studies

Obs, M = Observation, Mention

SIX = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
       "Pneumothorax")
CLINICAL_KEYS = {f"f1/{name}" for name in SIX} | {
    "micro_f1/14", "macro_f1/14", "micro_f1/5", "macro_f1/5"}

# Four studies whose labels are checked below; the expected F1 figures follow from them.
#   s1 Cardiomegaly FN (negated in the prediction), Pleural Effusion TP
#   s2 Cardiomegaly TP, Edema TP, Pneumothorax FP (negated in the reference)
#   s3 Atelectasis uncertain in the reference, positive in the prediction:
#      FP when uncertain counts negative, TP when it counts positive
#   s4 Pleural Effusion FP; No Finding positive in the reference only: FN
HAND_RECORDS = [
    {"id": "s1", "reference": "Cardiomegaly. Small left pleural effusion.",
     "prediction": "Small left pleural effusion. Heart size is normal."},
    {"id": "s2", "reference": "Cardiomegaly with mild pulmonary edema. No pneumothorax.",
     "prediction": "Cardiomegaly. Mild pulmonary edema. Small right pneumothorax."},
    {"id": "s3", "reference": "Possible left lower lobe atelectasis.",
     "prediction": "Left lower lobe atelectasis."},
    {"id": "s4", "reference": "The lungs are clear. No pleural effusion.",
     "prediction": "Right pleural effusion."},
]

HAND_LABELS = {
    "Cardiomegaly. Small left pleural effusion.":
        {Obs.CARDIOMEGALY: M.POSITIVE, Obs.PLEURAL_EFFUSION: M.POSITIVE},
    "Small left pleural effusion. Heart size is normal.":
        {Obs.CARDIOMEGALY: M.NEGATIVE, Obs.PLEURAL_EFFUSION: M.POSITIVE},
    "Cardiomegaly with mild pulmonary edema. No pneumothorax.":
        {Obs.CARDIOMEGALY: M.POSITIVE, Obs.EDEMA: M.POSITIVE, Obs.PNEUMOTHORAX: M.NEGATIVE},
    "Cardiomegaly. Mild pulmonary edema. Small right pneumothorax.":
        {Obs.CARDIOMEGALY: M.POSITIVE, Obs.EDEMA: M.POSITIVE, Obs.PNEUMOTHORAX: M.POSITIVE},
    "Possible left lower lobe atelectasis.": {Obs.ATELECTASIS: M.UNCERTAIN},
    "Left lower lobe atelectasis.": {Obs.ATELECTASIS: M.POSITIVE},
    "The lungs are clear. No pleural effusion.":
        {Obs.NO_FINDING: M.POSITIVE, Obs.PLEURAL_EFFUSION: M.NEGATIVE},
    "Right pleural effusion.": {Obs.PLEURAL_EFFUSION: M.POSITIVE},
}

# Uncertain counted negative: per observation (TP, FP, FN)
#   Atelectasis (0, 1, 0) → 0; Cardiomegaly (1, 0, 1) → 2/3; Edema (1, 0, 0) → 1;
#   Pleural Effusion (1, 1, 0) → 2/3; Pneumothorax (0, 1, 0) → 0; No Finding (0, 0, 1) → 0.
#   Over 14: TP 3, FP 3, FN 2 → micro 6/11, macro (2/3 + 1 + 2/3) / 14 = 1/6.
#   Over 5 (no Pneumothorax, no No Finding): TP 3, FP 2, FN 1 → micro 6/9, macro 7/15.
EXPECTED_NEGATIVE = {
    "f1/Atelectasis": 0.0, "f1/Cardiomegaly": 2 / 3, "f1/Consolidation": 0.0,
    "f1/Edema": 1.0, "f1/Pleural Effusion": 2 / 3, "f1/Pneumothorax": 0.0,
    "micro_f1/14": 6 / 11, "macro_f1/14": 1 / 6, "micro_f1/5": 2 / 3, "macro_f1/5": 7 / 15,
}
# Uncertain counted positive: Atelectasis becomes (1, 0, 0) → 1.
#   Over 14: TP 4, FP 2, FN 2 → 8/12; macro (1 + 2/3 + 1 + 2/3) / 14 = 5/21.
#   Over 5: TP 4, FP 1, FN 1 → 8/10; macro (10/3) / 5 = 2/3.
EXPECTED_POSITIVE = {
    **EXPECTED_NEGATIVE, "f1/Atelectasis": 1.0,
    "micro_f1/14": 2 / 3, "macro_f1/14": 5 / 21, "micro_f1/5": 0.8, "macro_f1/5": 2 / 3,
}

IDENTICAL_RECORDS = [
    {"id": "a", "reference": "Moderate cardiomegaly with a small right pleural effusion.",
     "prediction": "Moderate cardiomegaly with a small right pleural effusion."},
    {"id": "b", "reference": "No acute cardiopulmonary process. The lungs are clear.",
     "prediction": "No acute cardiopulmonary process. The lungs are clear."},
    {"id": "c", "reference": "Endotracheal tube in place. No pneumothorax is seen.",
     "prediction": "Endotracheal tube in place. No pneumothorax is seen."},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_eval(*args: str | Path) -> int:
    return main(["eval", *(str(a) for a in args)])


def scored(tmp_path: Path, rows: list[dict[str, Any]], *extra: str) -> dict[str, Any]:
    """Run ``radnode eval`` on ``rows`` and return the JSON it writes."""
    pred = write_jsonl(tmp_path / "pred.jsonl", rows)
    out = tmp_path / "out.json"
    assert run_eval(pred, "--json", out, "--resamples", "200", *extra) == 0
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize("text", list(HAND_LABELS))
def test_hand_case_texts_label_as_assumed(text: str) -> None:
    """The labels the hand computation rests on are what the labeler gives."""
    mentioned = label_report(text).mentioned()
    assert mentioned == HAND_LABELS[text]


def test_clinical_f1_matches_the_hand_computation(tmp_path: Path) -> None:
    """Per-observation, micro and macro F1 under both uncertain policies equal hand values."""
    result = scored(tmp_path, HAND_RECORDS)
    assert result["count"] == 4
    for variant, expected in (("uncertain_as_negative", EXPECTED_NEGATIVE),
                              ("uncertain_as_positive", EXPECTED_POSITIVE)):
        values = {name: figure["value"] for name, figure in result["clinical"][variant].items()}
        assert values == pytest.approx(expected, abs=5e-5), variant


def test_json_holds_every_metric_with_an_interval(tmp_path: Path) -> None:
    """Both uncertain variants hold the six findings and micro / macro over 14 and 5."""
    result = scored(tmp_path, HAND_RECORDS)
    assert set(result["clinical"]) == {"uncertain_as_negative", "uncertain_as_positive"}
    for metrics in result["clinical"].values():
        assert set(metrics) == CLINICAL_KEYS
    assert set(result["text"]) == {"rouge_l", "bleu_1", "bleu_4"}
    for figure in [*result["text"].values(),
                   *(f for m in result["clinical"].values() for f in m.values())]:
        assert set(figure) == {"value", "ci_low", "ci_high"}
    assert result["uncertain_as"] == "negative"
    assert result["bootstrap"] == {"resamples": 200, "seed": 0, "confidence": 0.95}
    assert "chexprompt" not in result


def test_every_interval_contains_its_point_estimate(tmp_path: Path) -> None:
    """For each figure ci_low ≤ value ≤ ci_high, and the intervals are not all degenerate."""
    result = scored(tmp_path, HAND_RECORDS)
    figures = {**{f"text/{n}": f for n, f in result["text"].items()},
               **{f"{v}/{n}": f for v, m in result["clinical"].items() for n, f in m.items()}}
    for name, figure in figures.items():
        assert figure["ci_low"] <= figure["value"] <= figure["ci_high"], name
    assert result["text"]["rouge_l"]["ci_low"] < result["text"]["rouge_l"]["ci_high"]
    micro = result["clinical"]["uncertain_as_negative"]["micro_f1/14"]
    assert micro["ci_low"] < micro["value"] < micro["ci_high"]


def test_text_metrics_lie_in_range(tmp_path: Path) -> None:
    """ROUGE-L, BLEU-1 and BLEU-4 are fractions, below 1 when the texts differ."""
    result = scored(tmp_path, HAND_RECORDS)
    for name in ("rouge_l", "bleu_1", "bleu_4"):
        assert 0.0 < result["text"][name]["value"] < 1.0, name
    assert result["text"]["bleu_4"]["value"] <= result["text"]["bleu_1"]["value"]


def test_identical_reports_score_exactly_one(tmp_path: Path) -> None:
    """Prediction == reference: ROUGE-L and BLEU are 1 in every resample, as is F1 of what
    either side mentions."""
    result = scored(tmp_path, IDENTICAL_RECORDS)
    for name in ("rouge_l", "bleu_1", "bleu_4"):
        assert result["text"][name] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}, name
    negative = result["clinical"]["uncertain_as_negative"]
    assert negative["f1/Cardiomegaly"]["value"] == 1.0
    assert negative["f1/Pleural Effusion"]["value"] == 1.0
    assert negative["micro_f1/14"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert negative["f1/Edema"]["value"] == 0.0  # absent from both sides everywhere


def test_printed_table_follows_uncertain_as(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The table shows the chosen variant, in percent; the JSON records the choice."""
    result = scored(tmp_path, HAND_RECORDS, "--uncertain-as", "positive")
    table = capsys.readouterr().out
    assert result["uncertain_as"] == "positive"
    assert table.splitlines()[0] == ("4 studies; uncertain counted positive; 95% bootstrap "
                                     "interval over 200 resamples")
    row = next(line for line in table.splitlines() if line.startswith("F1 Atelectasis"))
    assert row.split()[2] == "100.0"
    row = next(line for line in table.splitlines() if line.startswith("micro f1/5"))
    assert row.split()[2] == "80.0"


def test_bootstrap_seed_is_recorded_and_reproducible(tmp_path: Path) -> None:
    """The same seed gives the same intervals; another seed other intervals, same values."""
    first = scored(tmp_path, HAND_RECORDS, "--bootstrap-seed", "7")
    again = scored(tmp_path, HAND_RECORDS, "--bootstrap-seed", "7")
    other = scored(tmp_path, HAND_RECORDS, "--bootstrap-seed", "8")
    assert first == again
    assert first["bootstrap"]["seed"] == 7 and other["bootstrap"]["seed"] == 8

    def values(result: dict[str, Any]) -> dict[str, float]:
        return {n: f["value"] for n, f in result["text"].items()}

    assert values(first) == values(other)
    assert first["text"] != other["text"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "x", "reference": "A.", "prediction": "A."}', "{not json"],
         ":2: not JSON (Expecting property name enclosed in double quotes)"),
        (['["x", "A.", "A."]'], ":1: expected a JSON object"),
        (['{"id": "x", "reference": "A."}'], ":1: missing prediction"),
        (['{"id": "x", "reference": "A.", "prediction": null}'],
         ":1: prediction must be a string"),
        (['{"id": "x", "reference": "A.", "prediction": "A."}', "",
          '{"id": "x", "reference": "B.", "prediction": "B."}'],
         ":3: id 'x' appears twice"),
        (["", "  "], ": no records"),
    ],
    ids=["not-json", "not-object", "missing-key", "non-string", "repeated-id", "empty"],
)
def test_malformed_predictions_stop_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], message: str,
) -> None:
    """A malformed line is named (file and line) on stderr; nothing is written."""
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.json"
    assert run_eval(pred, "--json", out) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"radnode eval: {pred}{message}"
    assert captured.out == ""
    assert not out.exists()


def test_missing_predictions_file_is_an_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable input file gives status 2 and names the file."""
    assert run_eval(tmp_path / "absent.jsonl") == 2
    assert f"cannot read {tmp_path / 'absent.jsonl'}" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["p.jsonl", "--draft-from", "studies"]],
                         ids=["neither", "both"])
def test_exactly_one_input_is_required(args: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Neither or both of PRED.jsonl and --draft-from: status 2 with the usage hint."""
    assert run_eval(*args) == 2
    assert "give either PRED.jsonl or --draft-from FOLDER" in capsys.readouterr().err


# --draft-from: drafting synthetic studies with the demo bundle ---------------------------


@pytest.fixture
def studies(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Two synthetic studies (frontal only) and their references as jsonl."""
    written = write_demo_studies(tmp_path / "studies", count=2, seed=5, with_lateral=False)
    references = {s.accession: s.reference_report for s in written}
    refs = write_jsonl(tmp_path / "refs.jsonl",
                       [{"id": i, "reference": r} for i, r in references.items()])
    return tmp_path / "studies", refs, references


def draft(folder: Path, refs: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    """Draft and score with the demo bundle; return the predictions written."""
    assert run_eval("--draft-from", folder, "--references", refs, "--bundle", DEMO_BUNDLE_DIR,
                    "--device", "cpu", "--resamples", "50", "--json", out, *extra) == 0
    predictions = out.with_name(out.stem + ".predictions.jsonl")
    return [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]


@pytest.mark.usefixtures("demo_bundle_built")
def test_draft_from_writes_predictions_and_metrics(
    tmp_path: Path, studies: tuple[Path, Path, dict[str, str]],
) -> None:
    """Each study is drafted, paired with its reference, written next to the JSON, scored;
    the predictions file re-scores to the same figures."""
    folder, refs, references = studies
    out = tmp_path / "drafted.json"
    records = draft(folder, refs, out)
    assert [r["id"] for r in records] == sorted(references)
    for record in records:
        assert set(record) == {"id", "reference", "prediction"}
        assert record["reference"] == references[record["id"]]
        assert record["prediction"].strip()
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["count"] == 2
    assert set(result["clinical"]["uncertain_as_negative"]) == CLINICAL_KEYS
    assert 0.0 <= result["text"]["rouge_l"]["value"] <= 1.0

    rescored = tmp_path / "rescored.json"
    assert run_eval(out.with_name("drafted.predictions.jsonl"), "--resamples", "50",
                    "--json", rescored) == 0
    assert json.loads(rescored.read_text(encoding="utf-8")) == result


@pytest.mark.usefixtures("demo_bundle_built")
def test_predictions_out_names_the_predictions_file(
    tmp_path: Path, studies: tuple[Path, Path, dict[str, str]],
) -> None:
    """--predictions-out overrides the file next to --json."""
    folder, refs, references = studies
    target = tmp_path / "elsewhere.jsonl"
    assert run_eval("--draft-from", folder, "--references", refs, "--bundle", DEMO_BUNDLE_DIR,
                    "--device", "cpu", "--resamples", "20", "--predictions-out", target) == 0
    assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == \
        sorted(references)


@pytest.mark.usefixtures("demo_bundle_built")
def test_reference_without_a_study_folder_is_an_error(
    tmp_path: Path, studies: tuple[Path, Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reference id with no folder stops the run with status 2 before anything is drafted."""
    folder, refs, _ = studies
    with refs.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "NOSUCHSTUDY", "reference": "Normal chest."}) + "\n")
    out = tmp_path / "out.json"
    assert run_eval("--draft-from", folder, "--references", refs, "--bundle", DEMO_BUNDLE_DIR,
                    "--device", "cpu", "--json", out) == 2
    err = capsys.readouterr().err
    assert f"radnode eval: no study folder under {folder} for reference ids NOSUCHSTUDY" in err
    assert not out.exists()
    assert not out.with_name("out.predictions.jsonl").exists()


@pytest.mark.usefixtures("demo_bundle_built")
def test_generation_settings_are_reproducible_for_a_fixed_seed(
    tmp_path: Path, studies: tuple[Path, Path, dict[str, str]],
) -> None:
    """Greedy and sampled drafting of the same folder: the same settings and seed give the
    same drafts; greedy ignores the seed; sampling at a high temperature changes the drafts."""
    folder, refs, _ = studies

    def texts(name: str, *extra: str) -> list[str]:
        return [r["prediction"] for r in draft(folder, refs, tmp_path / f"{name}.json", *extra)]

    greedy = texts("greedy", "--generation", "temperature=0", "--seed", "1")
    assert texts("greedy-again", "--generation", "temperature=0", "--seed", "1") == greedy
    assert texts("greedy-seed2", "--generation", "temperature=0", "--seed", "2") == greedy

    sampled = texts("t15", "--generation", "temperature=1.5,top_p=1.0", "--seed", "1")
    assert texts("t15-again", "--generation", "temperature=1.5,top_p=1.0", "--seed", "1") == \
        sampled
    assert sampled != greedy
