"""IHE IOCM rejection notes: a draft rejected or superseded after a destination received
it is withdrawn there by a Key Object Selection Document, tracked as an export of its own.

Against a real Orthanc; the note Orthanc stored is read back and checked with dciodvfy.
Each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage
from sqlalchemy import select

from node.config import Destination, ExportSettings
from node.db.models import AuditEvent, Export, Report, User
from node.db.types import utcnow
from node.dicom.export import Sendable, SendResult, send_instances
from node.exports import ExportService, queue_exports
from node.reports.signoff import reject_draft, sign_report
from node.states import ExportKind, ExportState, Role
from tests.conftest import free_port
from tests.integration.web_seed import HTML, WebEnv, seed_drafted_study, seed_user
from tests.orthanc import OrthancServer, requires_orthanc, running_orthanc

pytestmark = requires_orthanc

EXPORTS = ExportSettings(timeout_seconds=3, base_delay_seconds=30, max_age_seconds=3600)


def review_destination(orthanc: OrthancServer) -> Destination:
    return Destination(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port,
                       exports="drafts_and_finals")


def queue_draft(web: WebEnv, report_id: int, destinations: Sequence[Destination]) -> None:
    with web.database.sessions.begin() as session:
        queue_exports(session, session.get_one(Report, report_id), destinations)


def exports_of(web: WebEnv, report_id: int) -> dict[tuple[str, ExportKind], Export]:
    with web.database.sessions() as session:
        rows = session.scalars(select(Export).where(Export.report_id == report_id))
        return {(row.destination_ae, row.kind): row for row in rows}


def radiologist(web: WebEnv) -> User:
    user_id = seed_user(web.database, "mcurie")
    with web.database.sessions() as session:
        return session.get_one(User, user_id)


def check_rejection_note(orthanc: OrthancServer, note_uid: str, draft_uid: str,
                         tmp_path: Path, description: str) -> Dataset:
    """The note Orthanc holds is a valid IOCM rejection note of the draft."""
    data = orthanc.instance_file(note_uid)
    note = dcmread(BytesIO(data))
    draft = dcmread(BytesIO(orthanc.instance_file(draft_uid)))
    assert note.SOPClassUID == KeyObjectSelectionDocumentStorage and note.Modality == "KO"
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001", "DCM", "Rejected for Quality Reasons")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert note.get(keyword) == draft.get(keyword), keyword
    assert note.SeriesInstanceUID != draft.SeriesInstanceUID
    [study] = note.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    [instance] = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (
        draft.StudyInstanceUID, draft.SeriesInstanceUID)
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
        draft.SOPClassUID, draft.SOPInstanceUID)
    references = [item for item in note.ContentSequence if item.ValueType == "COMPOSITE"]
    assert [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for item in references] == [draft_uid]
    texts = [item.TextValue for item in note.ContentSequence if item.ValueType == "TEXT"]
    assert texts == [description]
    path = tmp_path / "note.dcm"
    path.write_bytes(data)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                             timeout=60)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines()
              if line.startswith("Error")]
    assert errors == [], checked.stderr
    return note


def test_rejected_draft_gets_a_rejection_note_retried_through_an_outage(
        tmp_path: Path, web: WebEnv) -> None:
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        review = review_destination(orthanc)
        pacs = Destination(ae_title="PACS", host="127.0.0.1", port=free_port())
        service = ExportService(EXPORTS, [review, pacs], web.database.sessions, web.store,
                                calling_ae="RADNODE")
        seeded = seed_drafted_study(web.database, web.store)
        queue_draft(web, seeded.report_id, [review, pacs])  # PACS takes finals only
        service.deliver_due()
        draft_export = exports_of(web, seeded.report_id)[(orthanc.aet, ExportKind.REPORT)]
        assert draft_export.state == ExportState.SENT
        assert list(exports_of(web, seeded.report_id)) == [(orthanc.aet, ExportKind.REPORT)]
        with web.database.sessions() as session:
            draft_uid = str(session.get_one(Report, seeded.report_id).sop_instance_uid)
        assert draft_uid in orthanc.sop_instance_uids()

        with web.database.sessions.begin() as session:
            reject_draft(session, seeded.report_id, radiologist(web), "Wrong side",
                         store=web.store)
        note_row = exports_of(web, seeded.report_id)[(orthanc.aet, ExportKind.REJECTION_NOTE)]
        assert note_row.state == ExportState.PENDING and note_row.object_path is not None
        note_uid = str(note_row.object_sop_instance_uid)

        orthanc.stop()  # the archive is down when the note is due
        now = utcnow()
        assert service.deliver_due(now=now) == [note_row.id]
        retrying = exports_of(web, seeded.report_id)[(orthanc.aet, ExportKind.REJECTION_NOTE)]
        assert retrying.state == ExportState.RETRYING and retrying.last_error
        seed_user(web.database, "root", Role.ADMIN)
        web.login("root")
        page = web.client.get("/admin/triage", headers=HTML).text
        row = page[page.index(f'id="export-{note_row.id}"'):]
        assert "Rejection note of draft" in row[:row.index("</tr>")]

        orthanc.start()
        assert retrying.next_attempt_at is not None
        assert service.deliver_due(now=retrying.next_attempt_at) == [note_row.id]
        sent = exports_of(web, seeded.report_id)[(orthanc.aet, ExportKind.REJECTION_NOTE)]
        assert sent.state == ExportState.SENT and sent.attempts == 2
        check_rejection_note(orthanc, note_uid, draft_uid, tmp_path,
                             "Unverified draft report rejected by a radiologist")
        assert orthanc.sop_instance_uids().count(note_uid) == 1
        study_page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML).text
        delivery = study_page[study_page.index("Delivery"):]
        assert delivery.count(orthanc.aet) == 2 and "rejection note" in delivery
        assert delivery.count('class="badge ex-sent">Sent<') == 2


def test_signing_withdraws_the_draft_everywhere(tmp_path: Path, web: WebEnv) -> None:
    """Signed: the destination that holds the draft gets a note (once, however often the
    draft is withdrawn); the one that never received it gets no draft and no note."""
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        review = review_destination(orthanc)
        down = Destination(ae_title="DOWN", host="127.0.0.1", port=free_port(),
                           exports="drafts_and_finals")
        sent: list[tuple[str, str]] = []

        def recording(destination: Destination, items: Sequence[Sendable], **kw: Any
                      ) -> list[SendResult]:
            sent.extend((destination.ae_title, Path(str(i)).name.split("_")[0])
                        for i in items)
            return send_instances(destination, items, **kw)

        service = ExportService(EXPORTS, [review, down], web.database.sessions, web.store,
                                calling_ae="RADNODE", sender=recording)
        seeded = seed_drafted_study(web.database, web.store)
        queue_draft(web, seeded.report_id, [review, down])
        service.deliver_due()
        rows = exports_of(web, seeded.report_id)
        assert rows[("DOWN", ExportKind.REPORT)].state == ExportState.RETRYING
        with web.database.sessions.begin() as session:
            final = sign_report(session, web.store, seeded.report_id, radiologist(web),
                                "Edited findings.", "Edited impression.",
                                destinations=[review, down])
            final_id = final.id
        rows = exports_of(web, seeded.report_id)
        assert rows[("DOWN", ExportKind.REPORT)].state == ExportState.WITHDRAWN
        assert ("DOWN", ExportKind.REJECTION_NOTE) not in rows
        note = rows[(orthanc.aet, ExportKind.REJECTION_NOTE)]
        with web.database.sessions() as session:
            withdrawn = session.scalars(select(AuditEvent).where(
                AuditEvent.action == "export_withdrawn")).all()
            draft_uid = str(session.get_one(Report, seeded.report_id).sop_instance_uid)
            final_uid = str(session.get_one(Report, final_id).sop_instance_uid)
        assert [(e.details or {}).get("cause") for e in withdrawn] == ["SUPERSEDED"]

        sent.clear()
        later = utcnow() + dt.timedelta(hours=1)
        service.deliver_due(now=later)
        assert (orthanc.aet, str(note.object_sop_instance_uid)) in sent
        assert (orthanc.aet, final_uid) in sent
        assert ("DOWN", draft_uid) not in sent  # the withdrawn draft is not sent again
        check_rejection_note(orthanc, str(note.object_sop_instance_uid), draft_uid, tmp_path,
                             "Unverified draft report superseded by the signed report")


def test_draft_withdrawn_while_it_is_being_sent_still_gets_its_note(
        tmp_path: Path, web: WebEnv) -> None:
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        review = review_destination(orthanc)
        seeded = seed_drafted_study(web.database, web.store)
        user = radiologist(web)

        def rejected_meanwhile(destination: Destination, items: Sequence[Sendable],
                               **kw: Any) -> list[SendResult]:
            with web.database.sessions.begin() as session:
                reject_draft(session, seeded.report_id, user, "Not usable", store=web.store)
            return send_instances(destination, items, **kw)

        service = ExportService(EXPORTS, [review], web.database.sessions, web.store,
                                calling_ae="RADNODE", sender=rejected_meanwhile)
        queue_draft(web, seeded.report_id, [review])
        service.deliver_due()
        rows = exports_of(web, seeded.report_id)
        assert rows[(orthanc.aet, ExportKind.REPORT)].state == ExportState.SENT
        note = rows[(orthanc.aet, ExportKind.REJECTION_NOTE)]
        assert note.state == ExportState.PENDING
        service.sender = send_instances
        service.deliver_due()
        assert str(note.object_sop_instance_uid) in orthanc.sop_instance_uids()


def test_failed_draft_exports_are_withdrawn_and_noted_where_they_may_have_arrived(
        web: WebEnv) -> None:
    """A draft export FAILED after a refused commitment had its C-STORE accepted: the
    archive may hold the draft, so it gets a note; one that never got through does not.
    Neither can be retried from triage any more."""
    refused = Destination(ae_title="REFUSER", host="127.0.0.1", port=free_port(),
                          exports="drafts_and_finals", storage_commitment=True)
    down = Destination(ae_title="DOWN", host="127.0.0.1", port=free_port(),
                       exports="drafts_and_finals")
    seeded = seed_drafted_study(web.database, web.store)
    queue_draft(web, seeded.report_id, [refused, down])
    failed_at = utcnow()
    with web.database.sessions.begin() as session:
        for export in session.scalars(select(Export).where(
                Export.report_id == seeded.report_id)):
            export.state, export.attempts = ExportState.FAILED, 5
            export.last_error = "given up"
            export.sent_at = failed_at if export.destination_ae == "REFUSER" else None
    with web.database.sessions.begin() as session:
        reject_draft(session, seeded.report_id, radiologist(web), "Unusable", store=web.store)
    rows = exports_of(web, seeded.report_id)
    assert {key: row.state for key, row in rows.items()} == {
        ("REFUSER", ExportKind.REPORT): ExportState.WITHDRAWN,
        ("DOWN", ExportKind.REPORT): ExportState.WITHDRAWN,
        ("REFUSER", ExportKind.REJECTION_NOTE): ExportState.PENDING,
    }
    seed_user(web.database, "root", Role.ADMIN)
    token = web.login("root")
    withdrawn = rows[("DOWN", ExportKind.REPORT)].id
    response = web.client.post(f"/admin/exports/{withdrawn}/retry",
                               data={"csrf_token": token})
    assert response.status_code == 409
    page = web.client.get("/admin/triage", headers=HTML).text
    assert f'id="export-{withdrawn}"' not in page
