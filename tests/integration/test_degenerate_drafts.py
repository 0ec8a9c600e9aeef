"""A degenerate draft is stored as such and shown as such: the report row, the draft SR, the
study page's banner and the worklist marker, with its urgent flags marked as read from it.

The demo model drafts a sample study through the real job path with a generation limit of
a few tokens, so the text stops before the end token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from node.db.models import Study
from node.states import Role
from tests.conftest import REPO_ROOT
from tests.integration.drafted_studies import draft_studies
from tests.integration.web_seed import HTML, WebEnv, build_web_env, seed_user
from workers.inference.synth.studies import SAMPLE_CASES, write_sample_studies

DEMO_BUNDLE = REPO_ROOT / "var" / "models" / "demo"


@pytest.fixture
def demo_web(tmp_path: Path, database_url: str, fast_hashing: None,
             demo_bundle_built: None) -> WebEnv:
    env = build_web_env(tmp_path, database_url, model={"bundle": str(DEMO_BUNDLE)})
    yield env  # type: ignore[misc]
    env.close()


def _sr_comments(path: Path) -> list[str]:
    ds = dcmread(path)
    return [str(item.TextValue) for item in ds.ContentSequence
            if getattr(item, "ValueType", "") == "TEXT"]


def test_a_draft_cut_at_the_token_limit_is_stored_and_shown_as_degenerate(
        demo_web: WebEnv, tmp_path: Path) -> None:
    urgent = next(i for i, c in enumerate(SAMPLE_CASES) if c.labels.pneumothorax)
    normal = 0
    studies = write_sample_studies(tmp_path / "samples", run=77)
    cut, whole = studies[urgent], studies[normal]
    # The pneumothorax is named early in the draft: a cut after its sentence keeps the flag.
    reports = draft_studies(demo_web, DEMO_BUNDLE, [cut], generation={"max_new_tokens": 40})
    reports |= draft_studies(demo_web, DEMO_BUNDLE, [whole])
    degenerate, ordinary = reports[cut.accession], reports[whole.accession]

    assert degenerate.degenerate and degenerate.degeneracy_reasons
    assert "no_end_token" in degenerate.degeneracy_reasons
    assert not ordinary.degenerate and ordinary.degeneracy_reasons is None
    assert degenerate.sr_path is not None and ordinary.sr_path is not None
    notices = _sr_comments(demo_web.store.absolute(degenerate.sr_path))
    assert any(n.startswith("Degenerate draft: the model stopped at its length limit")
               for n in notices), notices
    assert not any("Degenerate" in n for n in
                   _sr_comments(demo_web.store.absolute(ordinary.sr_path)))

    seed_user(demo_web.database, "rad", Role.RADIOLOGIST)
    demo_web.login("rad")
    with demo_web.database.sessions() as session:
        ids = {s.accession_number: s.id for s in session.scalars(select(Study))}
        urgent_flag = session.scalars(select(Study.urgent).where(
            Study.accession_number == cut.accession)).one()
    page = demo_web.client.get(f"/studies/{ids[cut.accession]}", headers=HTML).text
    assert 'id="degenerate-draft"' in page
    assert "Degenerate draft — not an ordinary draft." in page
    assert "stopped at its length limit without ending the report" in page
    # Its flag is kept (the study still leads the worklist) but marked as read from it.
    assert urgent_flag
    assert "from a degenerate draft" in page
    clean = demo_web.client.get(f"/studies/{ids[whole.accession]}", headers=HTML).text
    assert 'id="degenerate-draft"' not in clean and "Degenerate draft" not in clean

    worklist = demo_web.client.get("/", headers=HTML).text
    rows = {row.split('class="mono">')[1].split("<")[0]: row
            for row in worklist.split("<tr data-href=")[1:]}
    assert "Degenerate draft" in rows[cut.accession]
    assert "pneumothorax (from a degenerate draft)" in rows[cut.accession]
    assert "Degenerate draft" not in rows[whole.accession]


def test_the_demo_model_on_a_noise_image_drafts_a_text_flagged_degenerate(
        demo_bundle_built: None, tmp_path: Path) -> None:
    """Pure noise is unlike every training phantom: the demo model loops on it, and the
    draft says so (the looping words and the missing end token)."""
    from datetime import datetime

    import numpy as np

    from workers.inference.bundle import load_bundle
    from workers.inference.drafting import draft_study
    from workers.inference.synth.studies import phantom_dataset

    pixels = np.random.default_rng(0).integers(0, 4096, size=(256, 256), dtype=np.uint16)
    ds = phantom_dataset(pixels, 12, study_uid="2.25.1001", series_uid="2.25.1002",
                         sop_uid="2.25.1003", view_position="PA", patient_id="NOISE",
                         patient_name="NOISE^IMAGE", accession="NOISE1",
                         study_time=datetime(2024, 1, 8), indication=None)
    path = tmp_path / "noise.dcm"
    ds.save_as(path, enforce_file_format=True)
    draft = draft_study([path], load_bundle(DEMO_BUNDLE), seed=0)
    assert draft.degenerate, draft.raw_text
    assert "word_loop" in draft.quality.reason_values(), draft.raw_text
    assert draft.to_json_dict()["quality"]["degenerate"] is True
