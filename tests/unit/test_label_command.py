"""``radnode label``: text, standard input and JSONL in; labels and mention spans out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli.main import main


def test_text_argument_gives_labels_and_spans(capsys: pytest.CaptureFixture[str]) -> None:
    text = "No effusion or pneumothorax is identified.  Small LEFT apical pneumothorax."
    assert main(["label", text]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["labels"]) == 14
    assert result["labels"]["Pneumothorax"] == "positive"
    assert result["labels"]["Pleural Effusion"] == "negative"
    statuses = [(m["observation"], m["status"]) for m in result["mentions"]]
    assert statuses == [("Pleural Effusion", "negative"), ("Pneumothorax", "negative"),
                        ("Pneumothorax", "positive")]
    for mention in result["mentions"]:
        assert text[mention["start"]:mention["end"]] == mention["text"]


def test_standard_input_is_read_when_no_text_is_given(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tortuous aorta.\nLungs are clear.\n"))
    assert main(["label"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels"]["No Finding"] == "not_mentioned"
    assert result["mentions"] == [{"observation": "No Finding", "status": "negative",
                                   "start": 0, "end": 8, "text": "Tortuous"}]


def test_jsonl_keeps_ids_reads_the_chosen_field_and_reports_bad_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "reports.jsonl"
    source.write_text("\n".join([
        json.dumps({"id": "a", "impression": "Moderate right-sided pleural effusion noted."}),
        "{not json",
        json.dumps({"id": "c", "text": "no impression field"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": 4, "impression": "No pneumothorax."}),
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--jsonl", str(source), "--field", "impression",
                 "--output", str(out)]) == 1
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert rows[0]["id"] == "a" and rows[0]["labels"]["Pleural Effusion"] == "positive"
    assert rows[1] == {"line": 2, "error": rows[1]["error"]}
    assert rows[2] == {"line": 3, "error": "no text in field 'impression'"}
    assert rows[3] == {"line": 4, "error": "not a JSON object"}
    assert rows[4]["id"] == 4 and rows[4]["labels"]["Pneumothorax"] == "negative"
    assert len(rows) == 5
    assert "3 line(s) could not be labelled" in capsys.readouterr().err


def test_long_file_shows_progress_on_stderr_only(tmp_path: Path) -> None:
    """The console script on a long file: JSONL on stdout, the progress bar on stderr."""
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": "Mild cardiomegaly."}) + "\n"
                              for i in range(250)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "node.cli.main", "label", "--jsonl",
                           str(source)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == list(range(250))
    assert all(r["labels"]["Cardiomegaly"] == "positive" for r in rows)
    assert "labelling" in done.stderr and "250/250" in done.stderr


def test_malformed_site_rules_exit_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "site.toml").write_text('[observations."Spleen"]\nmentions = ["x"]\n', "utf-8")
    assert main(["label", "--rules-dir", str(folder), "Effusion."]) == 2
    assert "unknown observation" in capsys.readouterr().err


def test_unreadable_input_exits_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label", "--jsonl", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00not utf-8\n")
    assert main(["label", "--jsonl", str(binary)]) == 2
    assert "codec" in capsys.readouterr().err
