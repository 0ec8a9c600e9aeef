"""Quarantine triage (admin only, CSRF-checked, audited) and the evidence behind a signed
report (recorded at sign-off, checked when serving and amending), on both databases."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import Instance, QuarantinedInstance, Report, Study
from node.dicom.ingest import InstanceIngestor, ReceivedInstance
from node.dicom.quarantine import discard
from node.dicom.statuses import StoreStatus
from node.states import QuarantineReason, QuarantineState, ReportState, Role, StudyState
from tests.dicom_factory import make_cxr_dataset
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    seed_drafted_study,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


def _receive(web: WebEnv, ds: Dataset, calling_ae: str = "MODALITY") -> int | None:
    """Hand ``ds`` to the node's ingestor as the SCP would; return its quarantine id."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    outcome = InstanceIngestor(web.store, web.database.sessions).ingest(ReceivedInstance(
        buffer.getvalue(), str(ds.SOPClassUID), str(ds.SOPInstanceUID), calling_ae))
    assert outcome.status == StoreStatus.SUCCESS, outcome.reason
    return outcome.quarantine_id


def _quarantine_both_kinds(web: WebEnv) -> tuple[str, int, int]:
    """A study with one instance, an identity conflict and a content conflict against it."""
    study_uid = str(generate_uid())
    first = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid, patient_id="P-1",
                             patient_name="ONE^PATIENT")
    assert _receive(web, first) is None
    stranger = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid,
                                patient_id="P-2", patient_name="TWO^PATIENT", instance_number=2)
    identity = _receive(web, stranger, "OTHER_AE")
    rewritten = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid,
                                 series_uid=str(first.SeriesInstanceUID),
                                 sop_uid=str(first.SOPInstanceUID), patient_id="P-1",
                                 patient_name="ONE^PATIENT", seed=7)
    content = _receive(web, rewritten, "OTHER_AE")
    assert identity is not None and content is not None
    return study_uid, identity, content


def _item(web: WebEnv, quarantine_id: int) -> QuarantinedInstance:
    with web.database.sessions() as session:
        return session.get_one(QuarantinedInstance, quarantine_id)


def test_triage_lists_and_resolves_quarantined_instances(web: WebEnv) -> None:
    """The admin sees reason, AE and time; accepts the identity conflict into its study and
    discards the content conflict (whose acceptance is refused); all audited."""
    study_uid, identity, content = _quarantine_both_kinds(web)
    admin_id = seed_user(web.database, "root", Role.ADMIN)
    csrf = web.login("root")
    page = web.client.get("/admin/triage", headers=HTML)
    assert page.status_code == 200
    assert f'id="quarantine-{identity}"' in page.text and f'id="quarantine-{content}"' in page.text
    assert "patient identity conflict" in page.text and "OTHER_AE" in page.text
    assert "PatientID, PatientName" in page.text
    assert f"/admin/quarantine/{identity}/accept" in page.text
    assert f"/admin/quarantine/{content}/accept" not in page.text  # only discard offered

    refused = web.client.post(f"/admin/quarantine/{content}/accept", data={"csrf_token": csrf})
    assert refused.status_code == 409 and "never replaced" in refused.text
    held = _item(web, content)
    assert held.state == QuarantineState.QUARANTINED and held.path is not None

    accepted = web.client.post(f"/admin/quarantine/{identity}/accept", data={"csrf_token": csrf})
    assert accepted.status_code == 303
    item = _item(web, identity)
    assert (item.state, item.path, item.resolved_by_id) == (QuarantineState.ACCEPTED, None,
                                                            admin_id)
    with web.database.sessions() as session:
        study = session.scalars(select(Study).where(
            Study.study_instance_uid == study_uid)).one()
        joined = session.scalars(select(Instance).where(
            Instance.sop_instance_uid == item.sop_instance_uid)).one()
        assert joined.study_id == study.id and study.patient_id == "P-1"
    assert web.store.absolute(joined.path).is_file()
    assert not list((web.store.root / "quarantine").rglob(f"{item.sop_instance_uid}_*"))
    again = web.client.post(f"/admin/quarantine/{identity}/accept", data={"csrf_token": csrf})
    assert again.status_code == 409

    path = web.store.absolute(held.path)
    discarded = web.client.post(f"/admin/quarantine/{content}/discard",
                                data={"csrf_token": csrf})
    assert discarded.status_code == 303
    assert _item(web, content).state == QuarantineState.DISCARDED and not path.exists()
    assert [e.user_id for e in audit_events(web.database, "quarantine_accepted")] == [admin_id]
    assert [e.user_id for e in audit_events(web.database, "quarantine_discarded")] == [admin_id]
    assert web.client.post("/admin/quarantine/99999/discard",
                           data={"csrf_token": csrf}).status_code == 404


def test_triage_actions_need_an_admin_and_a_csrf_token(web: WebEnv) -> None:
    """A radiologist gets 403; an admin without the CSRF token gets 403; nothing changes."""
    _, identity, content = _quarantine_both_kinds(web)
    seed_user(web.database, "mcurie", Role.RADIOLOGIST)
    seed_user(web.database, "root", Role.ADMIN)
    csrf = web.login("mcurie")
    assert web.client.get("/admin/triage", headers=HTML).status_code == 403
    for quarantine_id, action in ((identity, "accept"), (content, "discard")):
        response = web.client.post(f"/admin/quarantine/{quarantine_id}/{action}",
                                   data={"csrf_token": csrf})
        assert response.status_code == 403
    web.client.cookies.clear()
    web.login("root")
    for quarantine_id, action in ((identity, "accept"), (content, "discard")):
        assert web.client.post(f"/admin/quarantine/{quarantine_id}/{action}",
                               data={}).status_code == 403
        assert web.client.post(f"/admin/quarantine/{quarantine_id}/{action}",
                               data={"csrf_token": "0" * 64}).status_code == 403
    assert {_item(web, i).state for i in (identity, content)} == {QuarantineState.QUARANTINED}
    assert audit_events(web.database, "quarantine_accepted") == []


def _sign(web: WebEnv, study_id: int, report_id: int, csrf: str) -> Report:
    response = web.client.post(f"/studies/{study_id}/sign", data={
        "csrf_token": csrf, "report_id": report_id, "findings": "F one.",
        "impression": "I one."})
    assert response.status_code == 303, response.text
    with web.database.sessions() as session:
        return session.scalars(select(Report).where(Report.state == ReportState.FINAL)).one()


def test_signed_report_records_the_digests_it_was_signed_on(web: WebEnv) -> None:
    """Sign-off stores the SHA-256 of every image of the study with the final report."""
    seeded = seed_drafted_study(web.database, web.store, images=2, rows=64)
    seed_user(web.database, "mcurie")
    final = _sign(web, seeded.study_id, seeded.report_id, web.login("mcurie"))
    with web.database.sessions() as session:
        instances = session.scalars(select(Instance).where(
            Instance.study_id == seeded.study_id)).all()
    assert final.signed_evidence == {i.sop_instance_uid: i.sha256 for i in instances}
    assert len(final.signed_evidence) == 2


def test_tampered_evidence_is_refused_when_serving_and_amending(web: WebEnv) -> None:
    """Other bytes written into a stored file behind a signed report: the study page, the
    image and an amendment are refused with 409 and a clear message, each audited."""
    seeded = seed_drafted_study(web.database, web.store, images=2, rows=64)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    final = _sign(web, seeded.study_id, seeded.report_id, csrf)
    assert web.client.get(f"/studies/{seeded.study_id}", headers=HTML).status_code == 200
    with web.database.sessions() as session:
        victim = session.get_one(Instance, seeded.instance_ids[0])
        untouched = session.get_one(Instance, seeded.instance_ids[1])
    path = web.store.absolute(victim.path)
    data = bytearray(path.read_bytes())
    data[-10:] = bytes(10)  # other pixel bytes, same length
    path.write_bytes(bytes(data))

    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    assert page.status_code == 409
    assert "have changed since it was signed" in page.text
    image = web.client.get(f"/studies/{seeded.study_id}/image/{victim.id}.png")
    assert image.status_code == 409
    other = web.client.get(f"/studies/{seeded.study_id}/image/{untouched.id}.png")
    assert other.status_code == 200  # only the changed image is refused
    amend = web.client.post(f"/studies/{seeded.study_id}/amend", data={
        "csrf_token": csrf, "report_id": final.id, "findings": "F one.",
        "impression": "I two.", "reason": "Second look."})
    assert amend.status_code == 409
    with web.database.sessions() as session:
        assert session.get_one(Report, final.id).state == ReportState.FINAL
        assert session.get_one(Study, seeded.study_id).state == StudyState.SIGNED
    events = audit_events(web.database, "signed_evidence_mismatch")
    assert [e.details["during"] for e in events if e.details] == ["study_page", "image", "amend"]
    assert all(e.details and e.details["sop_instance_uids"] == [victim.sop_instance_uid]
               for e in events)


def test_quarantined_copy_never_reaches_the_signed_study(web: WebEnv) -> None:
    """A conflicting re-send after sign-off leaves the signed evidence intact (the page
    serves) and is listed for the admin."""
    seeded = seed_drafted_study(web.database, web.store, rows=64)
    seed_user(web.database, "mcurie")
    _sign(web, seeded.study_id, seeded.report_id, web.login("mcurie"))
    with web.database.sessions() as session:
        original = session.get_one(Instance, seeded.instance_ids[0])
        study = session.get_one(Study, seeded.study_id)
    ds = make_cxr_dataset(rows=64, cols=64, study_uid=study.study_instance_uid,
                          series_uid=original.series_instance_uid,
                          sop_uid=original.sop_instance_uid, patient_id=study.patient_id or "",
                          patient_name=study.patient_name or "", seed=42)
    quarantine_id = _receive(web, ds, "LATE_AE")
    assert quarantine_id is not None
    assert _item(web, quarantine_id).reason == QuarantineReason.CONTENT_CONFLICT
    assert web.client.get(f"/studies/{seeded.study_id}", headers=HTML).status_code == 200
    assert web.client.get(
        f"/studies/{seeded.study_id}/image/{original.id}.png").status_code == 200
    assert audit_events(web.database, "signed_evidence_mismatch") == []


def test_discarding_one_of_two_identical_copies_keeps_the_shared_file(web: WebEnv) -> None:
    """Two rows for one identical conflicting copy (concurrent senders) share its file:
    discarding the first keeps the file for the second; discarding both removes it."""
    _, _, content = _quarantine_both_kinds(web)
    admin_id = seed_user(web.database, "root", Role.ADMIN)
    with web.database.sessions.begin() as session:
        first = session.get_one(QuarantinedInstance, content)
        twin = QuarantinedInstance(**{
            column.key: getattr(first, column.key)
            for column in QuarantinedInstance.__table__.columns if column.key != "id"})
        session.add(twin)
        session.flush()
        twin_id, path = twin.id, web.store.absolute(first.path or "")
    discard(web.database.sessions, web.store, content, actor="root", user_id=admin_id)
    assert path.is_file()
    discard(web.database.sessions, web.store, twin_id, actor="root", user_id=admin_id)
    assert not path.exists()
