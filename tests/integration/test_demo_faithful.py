"""The demo's sample studies are drafted faithfully by the demo model that ``make
demo-model`` builds, and the urgent one leads the worklist as urgent.

Faithful: the CheXpert labeler finds every finding of the phantom's truth in the draft and
nothing the truth does not imply (:mod:`workers.evaluation.phantom_faithfulness`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.states import Role
from tests.conftest import REPO_ROOT
from tests.integration.drafted_studies import draft_studies
from tests.integration.web_seed import HTML, WebEnv, build_web_env, seed_user
from workers.evaluation.phantom_faithfulness import check_draft
from workers.inference.bundle import LoadedBundle, load_bundle
from workers.inference.drafting import draft_study
from workers.inference.synth.studies import SAMPLE_CASES, DemoStudy, write_sample_studies

DEMO_BUNDLE = REPO_ROOT / "var" / "models" / "demo"
URGENT_CASE = next(i for i, c in enumerate(SAMPLE_CASES) if c.labels.pneumothorax)


@pytest.fixture(scope="module")
def bundle(demo_bundle_built: None) -> LoadedBundle:
    """The demo bundle, loaded once."""
    return load_bundle(DEMO_BUNDLE)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[DemoStudy]:
    """The sample set exactly as ``radnode demo`` writes it (one run's UIDs)."""
    return write_sample_studies(tmp_path_factory.mktemp("samples"), run=4242)


def test_the_sample_set_covers_normal_and_urgent_cases() -> None:
    labels = [case.labels for case in SAMPLE_CASES]
    assert len(labels) == 6
    assert any(label.is_normal and not label.devices for label in labels)
    assert sum(1 for label in labels if label.pneumothorax) == 1
    assert SAMPLE_CASES[URGENT_CASE].labels.pneumothorax.size == "large"  # type: ignore[union-attr]


@pytest.mark.parametrize("case", range(len(SAMPLE_CASES)),
                         ids=[c.title.split(" (")[0].replace(" ", "-") for c in SAMPLE_CASES])
def test_each_sample_study_is_drafted_faithfully(bundle: LoadedBundle,
                                                 samples: list[DemoStudy], case: int) -> None:
    study = samples[case]
    draft = draft_study(list(study.files), bundle, seed=0)
    verdict = check_draft(study.labels, draft.raw_text)
    assert not verdict.missing, f"missing {sorted(verdict.missing)} in: {draft.raw_text}"
    assert not verdict.invented, f"invented {sorted(verdict.invented)} in: {draft.raw_text}"
    assert not draft.degenerate, draft.quality


@pytest.fixture
def demo_web(tmp_path: Path, database_url: str, fast_hashing: None,
             demo_bundle_built: None) -> WebEnv:
    env = build_web_env(tmp_path, database_url, model={"bundle": str(DEMO_BUNDLE)})
    yield env  # type: ignore[misc]
    env.close()


def test_the_pneumothorax_sample_is_urgent_on_the_worklist_and_no_other(
        demo_web: WebEnv, samples: list[DemoStudy]) -> None:
    reports = draft_studies(demo_web, DEMO_BUNDLE, samples)
    for study in samples:
        report = reports[study.accession]
        text = f"{report.findings} {report.impression}"
        assert check_draft(study.labels, text).faithful, text
        assert not report.degenerate
    seed_user(demo_web.database, "rad", Role.RADIOLOGIST)
    demo_web.login("rad")
    page = demo_web.client.get("/", headers=HTML).text
    rows = {row.split('class="mono">')[1].split("<")[0]: row
            for row in re.findall(r"<tr data-href=.*?</tr>", page, re.S)}
    assert set(rows) == {s.accession for s in samples}
    urgent = {accession for accession, row in rows.items() if 'badge urgent' in row}
    assert urgent == {samples[URGENT_CASE].accession}
    assert "pneumothorax" in rows[samples[URGENT_CASE].accession]
    assert "Degenerate draft" not in page
    # Urgent studies lead the worklist.
    assert next(iter(rows)) == samples[URGENT_CASE].accession
