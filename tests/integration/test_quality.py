"""Draft labels, urgent flags, coded observations and live agreement (both databases).

Drafting runs the node's job function with a drafter that writes a fixed text (the model's
words are what the labeler reads; the demo model cannot be told what to say); everything
after it is the node's own: the CheXpert labeler, the SR writer, the database, sign-off,
``/metrics`` and the monitoring page.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from node.config import Settings
from node.db.models import Job, ObservationAgreement, Report, Study
from node.db.types import utcnow
from node.observations import Mention, Observation, ReportLabels
from node.quality.agreement import AgreementCounts
from node.quality.records import ModelKey, daily_agreement, record_agreement, window_stats
from node.reports.signoff import sign_report
from node.reports.sr_content import read_report_content
from node.runtime import Database
from node.states import JobState, ReportState, Role, StudyState
from node.storage import InstanceStore
from tests.conftest import make_settings
from tests.integration.web_seed import (
    HTML,
    MODEL,
    WebEnv,
    build_web_env,
    fast_password_hashing,
    seed_drafted_study,
    seed_study,
    seed_user,
    store_instances,
    user_by_name,
)
from workers.jobs import JobContext, run_draft_job

P, N, M = Mention.POSITIVE, Mention.NEGATIVE, Mention.NOT_MENTIONED
MODEL_KEY = ModelKey(MODEL.name, MODEL.version)


@pytest.fixture(autouse=True)
def _fast_hashing() -> Iterator[None]:
    with fast_password_hashing():
        yield


@dataclass(frozen=True)
class FixedTextDraft:
    """A draft with a given text, shaped like the engine's result."""

    findings: str
    impression: str

    @property
    def raw_text(self) -> str:
        return f"{self.findings}\n{self.impression}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"findings": self.findings, "impression": self.impression}


@dataclass
class DraftingEnv:
    """Settings, database and store of a node that drafts with fixed texts."""

    settings: Settings
    database: Database
    store: InstanceStore

    def draft(self, findings: str, impression: str, *, seed: int) -> tuple[int, int]:
        """Store a one-image study, queue its job and run it; return (study id, job id)."""
        study = seed_study(self.database, patient_name="DOE^JANE", patient_id="PID-0042",
                           accession=f"ACC{seed:04d}", state=StudyState.QUEUED)
        store_instances(self.database, self.store, study, 1, seed=seed, rows=128)
        with self.database.sessions.begin() as session:
            job = Job(study_id=study.id, model_version=MODEL.device_uid,
                      state=JobState.QUEUED, enqueued_at=utcnow())
            session.add(job)
            session.flush()
            job_id = job.id

        def drafter(paths: Sequence[Path], indication: str | None) -> FixedTextDraft:
            return FixedTextDraft(findings, impression)

        context = JobContext(sessions=self.database.sessions, store=self.store,
                             drafter=drafter, model=MODEL, policy=self.settings.jobs,
                             destinations=[], quality=self.settings.quality)
        assert run_draft_job(context, job_id) is None
        return study.id, job_id


@pytest.fixture
def drafting(tmp_path: Path, database_url: str) -> Iterator[DraftingEnv]:
    settings = make_settings(tmp_path, database_url, quality={
        "urgent_observations": ["Pneumothorax", "Pleural Effusion"], "urgent_uncertain": True})
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    yield DraftingEnv(settings, database, store)
    database.engine.dispose()


def test_urgent_draft_is_labelled_flagged_and_coded_in_its_sr(drafting: DraftingEnv) -> None:
    """A pneumothorax draft: labels stored, study urgent, SR with coded items and flags."""
    study_id, job_id = drafting.draft(
        "Large right pneumothorax. Heart size is normal.",
        "Right pneumothorax. Possible small left pleural effusion.", seed=1)
    with drafting.database.sessions() as session:
        study = session.get_one(Study, study_id)
        report = session.scalars(select(Report).where(Report.job_id == job_id)).one()
        assert study.state == StudyState.DRAFTED
        assert study.urgent is True
        assert study.urgent_findings == ["pneumothorax", "possible pleural effusion"]
        assert report.labels is not None and len(report.labels) == 14
        assert report.labels["Pneumothorax"] == "positive"
        assert report.labels["Cardiomegaly"] == "negative"
        assert report.labels["Pleural Effusion"] == "uncertain"
        assert report.labels["Edema"] == "not_mentioned"
        stored = dict(report.labels)
        sr_path = drafting.store.absolute(report.sr_path or "")
    content = read_report_content(dcmread(sr_path))
    assert content.observations == {"Cardiomegaly": "absent", "Pneumothorax": "present",
                                    "Pleural Effusion": "uncertain"}
    presence = {"positive": "present", "negative": "absent", "uncertain": "uncertain"}
    assert dict(content.observations) == {
        name: presence[mention] for name, mention in stored.items() if mention in presence}
    assert content.urgent is True
    assert content.flags == ("pneumothorax", "possible pleural effusion")


def test_routine_draft_is_coded_but_not_flagged(drafting: DraftingEnv) -> None:
    """No urgent observation present: routine priority, observations still coded."""
    study_id, job_id = drafting.draft("Heart size is normal. No pneumothorax.",
                                      "No acute cardiopulmonary process.", seed=2)
    with drafting.database.sessions() as session:
        study = session.get_one(Study, study_id)
        assert study.urgent is False and study.urgent_findings is None
        report = session.scalars(select(Report).where(Report.job_id == job_id)).one()
        sr_path = drafting.store.absolute(report.sr_path or "")
    content = read_report_content(dcmread(sr_path))
    assert content.urgent is False and content.flags == ()
    assert content.observations["Pneumothorax"] == "absent"
    assert content.observations["No Finding"] == "present"


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[WebEnv]:
    env = build_web_env(tmp_path, database_url, quality={
        "agreement_min_reports": 3, "agreement_threshold": 0.8})
    yield env
    env.close()


def test_signing_from_the_page_records_agreement_per_observation(web: WebEnv) -> None:
    """One row per observation with both mentions; the signed report keeps its labels."""
    seeded = seed_drafted_study(web.database, web.store,
                                findings="Small left pleural effusion. No pneumothorax.",
                                impression="Small left effusion.")
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    response = web.client.post(f"/studies/{seeded.study_id}/sign", data={
        "csrf_token": csrf, "report_id": seeded.report_id,
        "findings": "Small left pleural effusion. Small right apical pneumothorax.",
        "impression": "Right pneumothorax."})
    assert response.status_code == 303
    with web.database.sessions() as session:
        final = session.scalars(select(Report).where(Report.state == ReportState.FINAL)).one()
        draft = session.get_one(Report, seeded.report_id)
        rows = {r.observation: r for r in session.scalars(select(ObservationAgreement))}
        assert draft.labels is not None and draft.labels["Pneumothorax"] == "negative"
        assert final.labels is not None and final.labels["Pneumothorax"] == "positive"
    assert set(rows) == set(Observation)
    pneumothorax = rows[Observation.PNEUMOTHORAX]
    assert (pneumothorax.draft_mention, pneumothorax.final_mention) == (N, P)
    assert (pneumothorax.draft_report_id, pneumothorax.final_report_id) == (draft.id, final.id)
    assert (pneumothorax.model_name, pneumothorax.model_version) == (MODEL.name, MODEL.version)
    assert pneumothorax.signed_at == final.signed_at
    effusion = rows[Observation.PLEURAL_EFFUSION]
    assert (effusion.draft_mention, effusion.final_mention) == (P, P)


def _sign(web: WebEnv, report_id: int, findings: str, when: dt.datetime) -> None:
    with web.database.sessions.begin() as session:
        sign_report(session, web.store, report_id, user_by_name(web.database, "mcurie"),
                    findings, "", now=when, quality=web.settings.quality)


def test_low_agreement_alerts_in_the_log_metrics_and_page(
        web: WebEnv, caplog: pytest.LogCaptureFixture) -> None:
    """Three missed pneumothoraces: one warning, gauges at 0 and alert 1, page marks it."""
    now = utcnow()
    drafts = [seed_drafted_study(web.database, web.store, patient_name=f"MISSED^{i}",
                                 accession=f"M{i}", findings="Heart size is normal. "
                                 "No pneumothorax.", impression="", seed=10 + i,
                                 received_at=now - dt.timedelta(hours=2))
              for i in range(3)]
    seed_user(web.database, "mcurie")
    caplog.set_level(logging.INFO, logger="node.quality.monitor")
    for index, seeded in enumerate(drafts[:2]):
        _sign(web, seeded.report_id, "Heart size is normal. Large left pneumothorax.",
              now - dt.timedelta(minutes=30 - index))
    assert not [r for r in caplog.records if r.getMessage() == "observation_agreement_low"]
    _sign(web, drafts[2].report_id, "Heart size is normal. Large left pneumothorax.",
          now - dt.timedelta(minutes=10))
    alerts = [r for r in caplog.records if r.getMessage() == "observation_agreement_low"]
    # the drafts also said "No Finding", which the signed reports did not
    by_observation = {r.__dict__["observation"]: r for r in alerts}
    assert sorted(by_observation) == ["No Finding", "Pneumothorax"] and len(alerts) == 2
    fields = by_observation["Pneumothorax"].__dict__
    assert by_observation["Pneumothorax"].levelno == logging.WARNING
    assert fields["agreement"] == 0.0 and fields["reports"] == 3
    assert fields["model_version"] == MODEL.version and fields["threshold"] == 0.8
    assert "MISSED" not in str(fields) and "PID-" not in str(fields)

    text = web.client.get("/metrics").text
    labels = f'model="{MODEL.name}",model_version="{MODEL.version}"'
    assert f'radnode_observation_agreement{{observation="Pneumothorax",{labels}}} 0\n' in text
    assert f'radnode_observation_agreement_alert{{observation="Pneumothorax",{labels}}} 1' in text
    assert f'radnode_observation_recall{{observation="Pneumothorax",{labels}}} 0\n' in text
    assert f'radnode_observation_precision{{observation="Pneumothorax",{labels}}} NaN' in text
    assert f'radnode_observation_agreement{{observation="Cardiomegaly",{labels}}} 1\n' in text
    assert f'radnode_observation_agreement_alert{{observation="Cardiomegaly",{labels}}} 0' in text
    assert f'radnode_observation_agreement_reports{{observation="Edema",{labels}}} 3' in text
    assert "radnode_observation_agreement_threshold 0.8" in text
    assert len(re.findall(r"^radnode_observation_agreement_alert\{", text, re.M)) == 14
    assert "MISSED" not in text

    seed_user(web.database, "root", Role.ADMIN, display_name="Admin^Ada")
    web.login("root")
    page = web.client.get("/admin/monitoring", headers=HTML).text
    row = re.search(r'<tr data-observation="Pneumothorax">(.*?)</tr>', page, re.S)
    assert row and "below threshold" in row.group(1) and "0 %" in row.group(1)
    cardio = re.search(r'<tr data-observation="Cardiomegaly">(.*?)</tr>', page, re.S)
    assert cardio and "100 %" in cardio.group(1) and "below threshold" not in cardio.group(1)
    assert "Agreement is below the threshold for 2 observations." in page
    assert '<svg class="chart agreement"' in page
    assert re.search(r'class="series s\d" [^>]*><title>Pneumothorax', page)


def _signed_pair(database: Database, signed_at: dt.datetime, model: ModelKey,
                 accession: str) -> tuple[Report, Report]:
    study = seed_study(database, patient_name="ROE^RICHARD", patient_id="PID-0700",
                       accession=accession, state=StudyState.SIGNED)
    with database.sessions.begin() as session:
        draft = Report(study_id=study.id, state=ReportState.DRAFT, findings="d",
                       model_name=model.name, model_version=model.version,
                       created_at=signed_at - dt.timedelta(hours=1))
        session.add(draft)
        session.flush()
        final = Report(study_id=study.id, state=ReportState.FINAL, findings="f",
                       model_name=model.name, model_version=model.version,
                       predecessor_id=draft.id, signed_at=signed_at, created_at=signed_at)
        session.add(final)
        session.flush()
        session.expunge_all()
    return draft, final


def test_windows_separate_models_and_leave_out_old_signatures(database: Database) -> None:
    """Only reports signed in the window count, per model; days bucket by UTC date."""
    now = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    other = ModelKey("radnode-cxr-demo", "0.4.0")
    wrong = (ReportLabels({Observation.EDEMA: P}), ReportLabels({Observation.EDEMA: N}))
    right = (ReportLabels({Observation.EDEMA: P}), ReportLabels({Observation.EDEMA: P}))
    plan = [(now - dt.timedelta(days=40), MODEL_KEY, wrong),   # outside a 30-day window
            (now - dt.timedelta(days=2, hours=3), MODEL_KEY, right),
            (now - dt.timedelta(days=2, hours=1), MODEL_KEY, wrong),
            (now - dt.timedelta(hours=1), MODEL_KEY, right),
            (now - dt.timedelta(hours=2), other, wrong)]
    for index, (when, model, (draft_labels, final_labels)) in enumerate(plan):
        draft, final = _signed_pair(database, when, model, f"W{index}")
        with database.sessions.begin() as session:
            record_agreement(session, draft, final, draft_labels, final_labels)

    with database.sessions() as session:
        stats = window_stats(session, now - dt.timedelta(days=30), threshold=0.8,
                             min_reports=3)
        edema = {w.model: w for w in stats if w.observation is Observation.EDEMA}
        assert set(edema) == {MODEL_KEY, other}
        assert edema[MODEL_KEY].counts == AgreementCounts(3, 2, 2, 3, 2)
        assert edema[MODEL_KEY].low is True  # 2/3 < 0.8 over 3 reports
        assert edema[other].counts == AgreementCounts(1, 0, 0, 1, 0)
        assert edema[other].low is False  # too few reports
        fracture = [w for w in stats if w.observation is Observation.FRACTURE
                    and w.model == MODEL_KEY][0]
        assert fracture.counts.agreement == 1.0 and fracture.counts.reports == 3
        only_other = window_stats(session, now - dt.timedelta(days=30), threshold=0.8,
                                  min_reports=1, model=other)
        assert {w.model for w in only_other} == {other} and len(only_other) == 14

        days, series = daily_agreement(session, MODEL_KEY, 5, now)
    assert days[0] == dt.date(2026, 11, 16) and days[-1] == dt.date(2026, 11, 20)
    assert series[Observation.EDEMA] == [None, None, 0.5, None, 1.0]
    assert series[Observation.FRACTURE] == [None, None, 1.0, None, 1.0]
    assert set(series) == set(Observation)


def test_signature_stands_when_agreement_cannot_be_recorded(
        web: WebEnv, caplog: pytest.LogCaptureFixture) -> None:
    """A draft with unreadable stored labels is still signed; the miss is logged."""
    seeded = seed_drafted_study(web.database, web.store)
    with web.database.sessions.begin() as session:
        session.get_one(Report, seeded.report_id).labels = {"Pneumothorax": "maybe"}
    seed_user(web.database, "mcurie")
    caplog.set_level(logging.INFO, logger="node.quality.monitor")
    _sign(web, seeded.report_id, "Written anew.", utcnow())
    with web.database.sessions() as session:
        assert session.get_one(Study, seeded.study_id).state == StudyState.SIGNED
        assert session.scalars(select(ObservationAgreement)).all() == []
    missed = [r for r in caplog.records if r.getMessage() == "agreement_not_recorded"]
    assert len(missed) == 1 and missed[0].__dict__["error"] == "ValueError"
