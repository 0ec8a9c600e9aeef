"""A site's own labeler rule files: added phrases, replaced lists, malformed files, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_settings
from node.observations import Mention, Observation
from node.quality.labels import default_labeler
from workers.evaluation.labeler import label_report
from workers.evaluation.labeler_rules import RULES_DIR, RulesError, load_rules

Obs, M = Observation, Mention


def _site(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "site-rules"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    return folder


def test_site_file_adds_mentions_and_cues(tmp_path: Path) -> None:
    """A local abbreviation becomes a mention and a local hedge an uncertainty cue."""
    folder = _site(tmp_path, local="""
[observations."Pneumothorax"]
mentions = ['\\bptxs?\\b', '\\bapical air\\b']

[cues]
pre_uncertainty = ['\\bnot sure about\\b']
""")
    rules = load_rules(RULES_DIR, folder)
    assert label_report("Small apical air on the right.")[Obs.PNEUMOTHORAX] is M.NOT_MENTIONED
    assert label_report("Small apical air on the right.", rules)[Obs.PNEUMOTHORAX] is M.POSITIVE
    assert label_report("Not sure about apical air.", rules)[Obs.PNEUMOTHORAX] is M.UNCERTAIN
    # Shipped phrases still work next to the site's.
    assert label_report("No pneumothorax.", rules)[Obs.PNEUMOTHORAX] is M.NEGATIVE


def test_site_file_replaces_a_list(tmp_path: Path) -> None:
    """A list named in ``replace`` substitutes the shipped one instead of extending it."""
    folder = _site(tmp_path, a_first="""
[observations."Support Devices"]
replace = ["mentions"]
mentions = ['\\bpacemaker\\b']
""", b_second="""
[observations."Support Devices"]
mentions = ['\\bloop recorder\\b']
""")
    rules = load_rules(RULES_DIR, folder)
    assert label_report("Right chest tube.", rules)[Obs.SUPPORT_DEVICES] is M.NOT_MENTIONED
    assert label_report("Left pacemaker.", rules)[Obs.SUPPORT_DEVICES] is M.POSITIVE
    # Files are read in name order: the second file extends the replaced list.
    assert label_report("Loop recorder.", rules)[Obs.SUPPORT_DEVICES] is M.POSITIVE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[observations."Spleen"]\nmentions = ["spleen"]', "unknown observation"),
        ('[observations."Edema"]\nmention = ["x"]', "unknown keys"),
        ('[observations."Edema"]\nmentions = "edema"', "list of regular expressions"),
        ('[observations."Edema"]\nmentions = ["(unclosed"]', "bad pattern"),
        ('[cues]\npre_negations = ["x"]', "unknown keys"),
        ('[cues]\nreplace = ["everything"]', "cannot replace"),
        ('[vocabulary]\nx = 1', "unknown sections"),
        ('[cues\n', "site-rules"),
    ],
)
def test_malformed_site_file_is_refused_with_its_name(tmp_path: Path, text: str,
                                                      message: str) -> None:
    """Every malformed file is refused with an error naming the file and the problem."""
    folder = _site(tmp_path, broken=text)
    with pytest.raises(RulesError, match=message) as caught:
        load_rules(RULES_DIR, folder)
    assert "broken.toml" in str(caught.value)


def test_missing_site_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(RULES_DIR, tmp_path / "nowhere")


def test_configured_folder_drives_the_node_labeler(tmp_path: Path) -> None:
    """``[quality] labeler_rules_dir`` is checked at load and used by the node's labeler."""
    folder = _site(tmp_path, local="""
[observations."Pneumothorax"]
mentions = ['\\bapical air\\b']
""")
    settings = load_settings(quality={"labeler_rules_dir": str(folder)})
    assert settings.quality.labeler_rules_dir == folder
    labeler = default_labeler(settings.quality.labeler_rules_dir)
    assert labeler("Apical air on the left.")[Obs.PNEUMOTHORAX] is M.POSITIVE
    assert default_labeler()("Apical air on the left.")[Obs.PNEUMOTHORAX] is M.NOT_MENTIONED
    broken = _site(tmp_path / "other", bad='[observations."Spleen"]\nmentions = ["x"]')
    with pytest.raises(ConfigError, match="unknown observation"):
        load_settings(quality={"labeler_rules_dir": str(broken)})
