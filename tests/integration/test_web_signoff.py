"""Worklist, study view, image rendering and sign-off through the web app (both databases)."""

from __future__ import annotations

import datetime as dt
import io
import re

import highdicom as hd
import pytest
from PIL import Image
from sqlalchemy import func, select

from node.db.models import Export, Report, Study
from node.db.types import utcnow
from node.states import ExportState, ReportState, StudyState
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    seed_drafted_study,
    seed_study,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


def _rows(html: str) -> list[str]:
    """Patient names of the worklist rows, in order."""
    return re.findall(r'class="rowlink" href="/studies/\d+">([^<]+)</a>', html)


def test_worklist_puts_urgent_first_then_oldest(web: WebEnv) -> None:
    """DRAFTED studies only by default, urgent first, then by arrival; filters narrow it."""
    now = utcnow()
    seed_drafted_study(web.database, web.store, patient_name="OLD^ROUTINE", accession="A1",
                       received_at=now - dt.timedelta(hours=3), seed=1)
    seed_drafted_study(web.database, web.store, patient_name="NEW^ROUTINE", accession="A2",
                       received_at=now - dt.timedelta(hours=1), seed=2)
    seed_drafted_study(web.database, web.store, patient_name="NEW^URGENT", accession="A3",
                       received_at=now - dt.timedelta(minutes=5), urgent=True,
                       urgent_findings=["pneumothorax"], seed=3)
    seed_study(web.database, patient_name="WAITING^QUEUED", patient_id="Q1", accession="A4",
               state=StudyState.QUEUED)
    user_id = seed_user(web.database, "mcurie")
    web.login("mcurie")

    page = web.client.get("/", headers=HTML)
    assert _rows(page.text) == ["NEW, URGENT", "OLD, ROUTINE", "NEW, ROUTINE"]
    assert "pneumothorax" in page.text
    assert _rows(web.client.get("/?flag=urgent", headers=HTML).text) == ["NEW, URGENT"]
    assert _rows(web.client.get("/?flag=routine", headers=HTML).text) == [
        "OLD, ROUTINE", "NEW, ROUTINE"]
    assert _rows(web.client.get("/?state=QUEUED", headers=HTML).text) == ["WAITING, QUEUED"]
    assert _rows(web.client.get("/?state=ALL&q=a2", headers=HTML).text) == ["NEW, ROUTINE"]
    today = dt.datetime.now().astimezone().date()
    future = (today + dt.timedelta(days=2)).isoformat()
    assert _rows(web.client.get(f"/?from={future}", headers=HTML).text) == []
    assert _rows(web.client.get(f"/?to={future}&state=bogus", headers=HTML).text) == [
        "NEW, URGENT", "OLD, ROUTINE", "NEW, ROUTINE"]

    counts = web.client.get("/api/worklist/counts").json()["counts"]
    assert counts["DRAFTED"] == 3 and counts["QUEUED"] == 1 and counts["URGENT"] == 1
    assert counts["REJECTED"] == 0 and counts["SIGNED"] == 0
    viewed = audit_events(web.database, "worklist_viewed")
    assert viewed and all(e.user_id == user_id for e in viewed)


def test_study_view_shows_the_draft_and_is_audited(web: WebEnv) -> None:
    """Patient header, unverified banner, model licence and intended use; view audited."""
    seeded = seed_drafted_study(web.database, web.store, patient_name="DOE^JANE",
                                accession="ACC77", images=2)
    user_id = seed_user(web.database, "mcurie")
    web.login("mcurie")
    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "DOE, JANE" in text and "ACC77" in text
    assert "UNVERIFIED AI DRAFT" in text and "not for diagnostic use until signed" in text
    assert "radnode-cxr-demo" in text and "Apache-2.0" in text
    assert "Demonstration of the drafting pipeline only" in text
    assert "Small left pleural effusion." in text
    for instance_id in seeded.instance_ids:
        assert f"/studies/{seeded.study_id}/image/{instance_id}.png" in text
    events = audit_events(web.database, "study_viewed")
    assert [(e.user_id, e.study_id) for e in events] == [(user_id, seeded.study_id)]
    assert web.client.get("/studies/999999", headers=HTML).status_code == 404


def test_images_render_with_the_dicom_or_a_chosen_window(web: WebEnv) -> None:
    """PNG of the stored image; another window gives other pixels; bad requests refused."""
    seeded = seed_drafted_study(web.database, web.store, rows=128)
    other = seed_drafted_study(web.database, web.store, patient_name="OTHER^ONE", seed=5)
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    url = f"/studies/{seeded.study_id}/image/{seeded.instance_ids[0]}.png"
    default = web.client.get(url)
    assert default.status_code == 200 and default.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(default.content))
    assert image.size == (128, 128) and image.mode == "L"
    narrow = web.client.get(url, params={"wc": "1200", "ww": "400"})
    assert narrow.status_code == 200 and narrow.content != default.content
    same = web.client.get(url, params={"wc": "1800", "ww": "3000"})
    assert same.content == default.content  # the file's own window
    assert web.client.get(url, params={"wc": "abc", "ww": "1"}).status_code == 400
    wrong = f"/studies/{seeded.study_id}/image/{other.instance_ids[0]}.png"
    assert web.client.get(wrong).status_code == 404


def test_sign_writes_the_final_report_and_queues_its_export(web: WebEnv) -> None:
    """Signing from the page: FINAL SR with the edited text, predecessor, export, audit."""
    seeded = seed_drafted_study(web.database, web.store)
    user_id = seed_user(web.database, "mcurie", display_name="Curie^Marie")
    csrf = web.login("mcurie")
    form = {"csrf_token": csrf, "report_id": seeded.report_id,
            "findings": "Small left pleural effusion, unchanged.",
            "impression": "Small left effusion."}
    response = web.client.post(f"/studies/{seeded.study_id}/sign", data=form)
    assert response.status_code == 303
    assert response.headers["location"] == f"/studies/{seeded.study_id}?done=signed"
    assert web.exporter.notified == 1

    with web.database.sessions() as session:
        final = session.scalars(select(Report).where(Report.state == ReportState.FINAL)).one()
        assert final.predecessor_id == seeded.report_id and final.signed_by_id == user_id
        assert final.findings == "Small left pleural effusion, unchanged."
        assert session.get_one(Study, seeded.study_id).state == StudyState.SIGNED
        export = session.scalars(select(Export).where(Export.report_id == final.id)).one()
        assert (export.destination_ae, export.state) == ("PACS", ExportState.PENDING)
        sr_path = web.store.absolute(final.sr_path or "")
        draft_uid = session.get_one(Report, seeded.report_id).sop_instance_uid
        indexed = (final.sr_completion_flag, final.sr_verification_flag,
                   final.sr_series_number, final.sr_series_description,
                   final.sr_instance_number, final.sr_content_date, final.sr_content_time)
    sr = hd.sr.srread(sr_path)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "VERIFIED", "FINAL")
    assert indexed == ("COMPLETE", "VERIFIED", int(sr.SeriesNumber), sr.SeriesDescription,
                       1, sr.ContentDate, sr.ContentTime)
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Curie^Marie"
    reference = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == draft_uid
    assert [e.user_id for e in audit_events(web.database, "report_signed")] == [user_id]

    page = web.client.get(f"/studies/{seeded.study_id}?done=signed", headers=HTML)
    assert "VERIFIED REPORT" in page.text and "Report signed" in page.text
    assert "UNVERIFIED AI DRAFT" not in page.text

    again = web.client.post(f"/studies/{seeded.study_id}/sign", data=form)
    assert again.status_code == 409 and "already signed" in again.text
    with web.database.sessions() as session:
        assert session.scalar(select(func.count(Report.id)).where(
            Report.state == ReportState.FINAL)) == 1


def test_invalid_sign_off_keeps_the_typed_text(web: WebEnv) -> None:
    """An empty report is refused with the message, and what was typed stays in the form."""
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    response = web.client.post(f"/studies/{seeded.study_id}/sign", data={
        "csrf_token": csrf, "report_id": seeded.report_id, "findings": "",
        "impression": "   "})
    assert response.status_code == 400
    assert "a report needs findings or an impression" in response.text
    with web.database.sessions() as session:
        assert session.get_one(Study, seeded.study_id).state == StudyState.DRAFTED


def test_amend_supersedes_the_signed_report(web: WebEnv) -> None:
    """The amendment becomes the current FINAL; the previous one is AMENDED."""
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    web.client.post(f"/studies/{seeded.study_id}/sign", data={
        "csrf_token": csrf, "report_id": seeded.report_id, "findings": "F one.",
        "impression": "I one."})
    with web.database.sessions() as session:
        first = session.scalars(select(Report.id).where(
            Report.state == ReportState.FINAL)).one()
    response = web.client.post(f"/studies/{seeded.study_id}/amend", data={
        "csrf_token": csrf, "report_id": first, "findings": "F one.",
        "impression": "I two: moderate effusion.", "reason": "Effusion understated."})
    assert response.status_code == 303
    with web.database.sessions() as session:
        states = dict(session.execute(select(Report.id, Report.state)).all())
        newest = max(states)
    assert states[first] == ReportState.AMENDED and states[newest] == ReportState.FINAL
    with web.database.sessions() as session:
        amendment = session.get_one(Report, newest)
        assert (amendment.sr_verification_flag, amendment.sr_completion_flag,
                amendment.sr_instance_number) == ("VERIFIED", "COMPLETE", 2)
    assert len(audit_events(web.database, "report_amended")) == 1
    assert web.exporter.notified == 2
    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    assert "AMENDED REPORT" in page.text and "I two: moderate effusion." in page.text
    stale = web.client.post(f"/studies/{seeded.study_id}/amend", data={
        "csrf_token": csrf, "report_id": first, "findings": "x", "impression": "y",
        "reason": "Stale."})
    assert stale.status_code == 409


def test_reject_marks_the_draft_and_keeps_it_on_the_worklist(web: WebEnv) -> None:
    """A rejection needs a reason; the worklist flags the study; it can still be signed."""
    seeded = seed_drafted_study(web.database, web.store, patient_name="REJECTED^ONE")
    user_id = seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    path = f"/studies/{seeded.study_id}/reject"
    empty = web.client.post(path, data={"csrf_token": csrf, "report_id": seeded.report_id,
                                        "reason": " "})
    assert empty.status_code == 400
    response = web.client.post(path, data={"csrf_token": csrf, "report_id": seeded.report_id,
                                           "reason": "Describes the wrong side."})
    assert response.status_code == 303
    events = audit_events(web.database, "draft_rejected")
    assert [(e.user_id, e.details) for e in events] == [
        (user_id, {"reason": "Describes the wrong side."})]
    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    assert "Draft rejected" in page.text and "Describes the wrong side." in page.text
    worklist = web.client.get("/?flag=rejected", headers=HTML)
    assert _rows(worklist.text) == ["REJECTED, ONE"] and "Draft rejected" in worklist.text
    assert web.client.get("/api/worklist/counts").json()["counts"]["REJECTED"] == 1
    with web.database.sessions() as session:
        assert session.get_one(Study, seeded.study_id).state == StudyState.DRAFTED
    signed = web.client.post(f"/studies/{seeded.study_id}/sign", data={
        "csrf_token": csrf, "report_id": seeded.report_id, "findings": "Written anew.",
        "impression": "Normal chest."})
    assert signed.status_code == 303
