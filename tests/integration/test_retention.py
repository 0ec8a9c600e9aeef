"""Image retention: removed only after sign-off and delivery, SRs and audit kept, idempotent.

Every test runs on SQLite and PostgreSQL. Studies are drafted by the seeding helpers and
signed through the web app; delivery is recorded on the export rows the way the exporter
records it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from node.cli.main import main
from node.config import RetentionSettings
from node.db.models import Export, Instance, Job, Report, Study
from node.db.types import utcnow
from node.retention import RetentionService
from node.states import ExportState, JobState
from tests.integration.web_seed import (
    HTML,
    SeededStudy,
    WebEnv,
    audit_events,
    seed_drafted_study,
    seed_user,
    store_instances,
)

DAY = dt.timedelta(days=1)


pytestmark = pytest.mark.usefixtures("fast_hashing")


@pytest.fixture
def web(web: WebEnv) -> WebEnv:
    seed_user(web.database, "mcurie")
    return web


def _service(web: WebEnv, keep_days: float = 7, **values: object) -> RetentionService:
    settings = RetentionSettings(keep_images_days=keep_days, **values)  # type: ignore[arg-type]
    return RetentionService(settings, web.database.sessions, web.store)


def _sign(web: WebEnv, seeded: SeededStudy) -> int:
    """Sign the draft through the web app; return the final report's id."""
    csrf = web.login("mcurie")
    response = web.client.post(f"/studies/{seeded.study_id}/sign", data={
        "csrf_token": csrf, "report_id": seeded.report_id,
        "findings": "No acute findings.", "impression": "Normal chest."})
    assert response.status_code == 303, response.text
    with web.database.sessions() as session:
        return session.scalars(select(Report.id).where(
            Report.study_id == seeded.study_id, Report.predecessor_id == seeded.report_id)).one()


def _deliver(web: WebEnv, report_id: int, at: dt.datetime) -> None:
    with web.database.sessions.begin() as session:
        for export in session.scalars(select(Export).where(Export.report_id == report_id)):
            export.state, export.sent_at, export.attempts = ExportState.SENT, at, 1


def _image_files(web: WebEnv, seeded: SeededStudy) -> list[Path]:
    with web.database.sessions() as session:
        paths = session.scalars(select(Instance.path).where(
            Instance.id.in_(seeded.instance_ids)).order_by(Instance.id)).all()
    return [web.store.absolute(p) for p in paths]


def _sr_files(web: WebEnv, seeded: SeededStudy) -> list[Path]:
    with web.database.sessions() as session:
        paths = session.scalars(select(Report.sr_path).where(
            Report.study_id == seeded.study_id).order_by(Report.id)).all()
    return [web.store.absolute(p or "") for p in paths]


def test_images_stay_until_signed_and_delivered_then_go_once(web: WebEnv) -> None:
    """Drafted, signed-but-undelivered and too-recent studies keep their images; a due
    study loses its image files (never its SRs) once, with one audit event."""
    seeded = seed_drafted_study(web.database, web.store, images=2)
    service = _service(web, keep_days=7)
    far_future = utcnow() + 365 * DAY
    assert service.run(now=far_future).studies == ()  # drafted, not signed

    final_id = _sign(web, seeded)
    assert service.run(now=far_future).studies == ()  # signed, export still PENDING

    delivered_at = utcnow()
    _deliver(web, final_id, delivered_at)
    assert service.run(now=delivered_at + 6 * DAY).studies == ()  # kept for 7 days

    images, srs = _image_files(web, seeded), _sr_files(web, seeded)
    assert len(srs) == 2 and all(p.is_file() for p in images + srs)
    due = delivered_at + 8 * DAY
    dry = service.run(now=due, dry_run=True)
    assert dry.dry_run and [s.study_id for s in dry.studies] == [seeded.study_id]
    assert dry.instances == 2 and dry.bytes == sum(p.stat().st_size for p in images)
    assert all(p.is_file() for p in images) and audit_events(web.database, "images_purged") == []

    done = service.run(now=due)
    assert [(s.study_id, s.instances) for s in done.studies] == [(seeded.study_id, 2)]
    assert not any(p.exists() for p in images)
    assert all(p.is_file() for p in srs)
    with web.database.sessions() as session:
        rows = session.scalars(select(Instance).where(Instance.id.in_(seeded.instance_ids)))
        assert {row.purged_at for row in rows} == {due}
    events = audit_events(web.database, "images_purged")
    assert [(e.study_id, e.actor, (e.details or {})["instances"]) for e in events] == [
        (seeded.study_id, "retention", 2)]

    assert service.run(now=due + DAY).studies == ()  # idempotent
    assert len(audit_events(web.database, "images_purged")) == 1
    assert len(audit_events(web.database, "report_signed")) == 1  # the trail is kept


def test_a_pending_job_or_a_failed_export_blocks_clean_up(web: WebEnv) -> None:
    """A study with a drafting job waiting, or an export not delivered, keeps its images."""
    seeded = seed_drafted_study(web.database, web.store)
    final_id = _sign(web, seeded)
    _deliver(web, final_id, utcnow())
    with web.database.sessions.begin() as session:
        session.add(Job(study_id=seeded.study_id, model_version="other-model",
                        state=JobState.RETRYING))
    service = _service(web, keep_days=1)
    later = utcnow() + 30 * DAY
    assert service.run(now=later).studies == ()
    with web.database.sessions.begin() as session:
        job = session.scalars(select(Job).where(Job.model_version == "other-model")).one()
        job.state = JobState.FAILED
        session.add(Export(report_id=final_id, destination_ae="ARCHIVE",
                           state=ExportState.FAILED, attempts=5))
    assert service.run(now=later).studies == ()
    assert all(p.is_file() for p in _image_files(web, seeded))
    with web.database.sessions.begin() as session:
        archive = session.scalars(select(Export).where(Export.destination_ae == "ARCHIVE")).one()
        archive.state, archive.sent_at = ExportState.SENT, utcnow()
    assert [s.study_id for s in service.run(now=later).studies] == [seeded.study_id]


def test_purged_images_are_not_offered_by_the_study_page_or_dicomweb(web: WebEnv) -> None:
    """After clean-up the study page says so, the image URL is gone (410), QIDO-RS lists
    only the SRs and WADO-RS answers 404 for a removed image."""
    seeded = seed_drafted_study(web.database, web.store)
    final_id = _sign(web, seeded)
    _deliver(web, final_id, utcnow())
    with web.database.sessions() as session:
        image = session.get_one(Instance, seeded.instance_ids[0])
        series_uid, sop_uid = image.series_instance_uid, image.sop_instance_uid
        sr_uids = set(session.scalars(select(Report.sop_instance_uid).where(
            Report.study_id == seeded.study_id)))
    before = web.client.get(f"/dicomweb/studies/{seeded.study_uid}/instances",
                            headers={"Accept": "application/dicom+json"})
    assert sop_uid in before.text
    assert [s.study_id for s in _service(web, keep_days=0).run().studies] == [seeded.study_id]

    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    assert page.status_code == 200
    assert "removed by the retention policy" in page.text
    assert f"/image/{seeded.instance_ids[0]}.png" not in page.text
    image_url = f"/studies/{seeded.study_id}/image/{seeded.instance_ids[0]}.png"
    assert web.client.get(image_url).status_code == 410

    listed = web.client.get(f"/dicomweb/studies/{seeded.study_uid}/instances",
                            headers={"Accept": "application/dicom+json"})
    assert listed.status_code == 200
    offered = {item["00080018"]["Value"][0] for item in listed.json()}
    assert offered == sr_uids
    wado = web.client.get(
        f"/dicomweb/studies/{seeded.study_uid}/series/{series_uid}/instances/{sop_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert wado.status_code == 404


def test_the_node_runs_clean_up_periodically_when_enabled(web: WebEnv) -> None:
    """With ``enabled``, the background pass removes due images without being asked."""
    seeded = seed_drafted_study(web.database, web.store)
    _deliver(web, _sign(web, seeded), utcnow())
    disabled = _service(web, keep_days=0, enabled=False, period_seconds=0.05)
    disabled.start()
    time.sleep(0.3)
    disabled.stop()
    assert all(p.is_file() for p in _image_files(web, seeded))
    service = _service(web, keep_days=0, enabled=True, period_seconds=0.05)
    service.start()
    try:
        deadline = time.monotonic() + 10
        while any(p.exists() for p in _image_files(web, seeded)):
            assert time.monotonic() < deadline, "the periodic pass did not run"
            time.sleep(0.05)
    finally:
        service.stop()
    assert len(audit_events(web.database, "images_purged")) == 1


def test_retention_command_dry_run_changes_nothing(
    web: WebEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``radnode retention run --dry-run --json`` lists the due study and keeps its files;
    without ``--dry-run`` it removes them."""
    seeded = seed_drafted_study(web.database, web.store)
    _deliver(web, _sign(web, seeded), utcnow())
    monkeypatch.setenv("RADNODE_DATABASE__URL", web.settings.database.url)
    monkeypatch.setenv("RADNODE_STORAGE__ROOT", str(web.settings.storage.root))
    monkeypatch.setenv("RADNODE_RETENTION__KEEP_IMAGES_DAYS", "0")
    capsys.readouterr()
    assert main(["retention", "run", "--dry-run", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["dry_run"] is True and listing["instances"] == 1
    assert [s["study_uid"] for s in listing["studies"]] == [seeded.study_uid]
    assert all(p.is_file() for p in _image_files(web, seeded))
    assert main(["retention", "run"]) == 0
    assert "removed 1 image(s) of 1 studies" in capsys.readouterr().out
    assert not any(p.exists() for p in _image_files(web, seeded))


def test_an_image_received_after_sign_off_is_kept_for_the_full_period(web: WebEnv) -> None:
    """An image that arrives for a signed study waits ``keep_images_days`` from its own
    arrival; the earlier images go on time."""
    seeded = seed_drafted_study(web.database, web.store)
    delivered_at = utcnow()
    _deliver(web, _sign(web, seeded), delivered_at)
    with web.database.sessions() as session:
        study = session.get_one(Study, seeded.study_id)
    [late_id] = store_instances(web.database, web.store, study, 1, seed=9, rows=64)
    with web.database.sessions.begin() as session:
        session.get_one(Instance, late_id).received_at = delivered_at + 5 * DAY
    service = _service(web, keep_days=7)

    done = service.run(now=delivered_at + 8 * DAY)

    assert [(s.study_id, s.instances) for s in done.studies] == [(seeded.study_id, 1)]
    with web.database.sessions() as session:
        late = session.get_one(Instance, late_id)
        assert late.purged_at is None and web.store.absolute(late.path).is_file()
    assert service.run(now=delivered_at + 11 * DAY).studies == ()
    later = service.run(now=delivered_at + 13 * DAY)
    assert [(s.study_id, s.instances) for s in later.studies] == [(seeded.study_id, 1)]
