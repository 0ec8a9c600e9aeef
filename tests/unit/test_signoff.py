"""Sign-off service: sign, amend and reject, on SQLite and PostgreSQL, without the web app."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from node.config import Destination, Settings
from node.db.models import AuditEvent, Export, Instance, Report, Study, User
from node.reports import read_amendment_reason, read_report_content
from node.reports.drafts import write_draft_sr
from node.reports.handover import store_handed_over_srs
from node.reports.signoff import (
    FINAL_SERIES_NUMBER,
    MAX_REASON_LENGTH,
    AlreadySigned,
    NotPermitted,
    SignoffError,
    amend_report,
    final_series_uid,
    reject_draft,
    sign_report,
)
from node.reports.sr_content import ReportContent
from node.runtime import Database
from node.states import ExportState, ReportState, Role, StudyState
from node.storage import InstanceStore
from tests.integration.web_seed import (
    MODEL,
    fast_password_hashing,
    seed_drafted_study,
    seed_user,
)

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=4242)
SIGNED_AT = dt.datetime(2030, 3, 4, 10, 15, 30, tzinfo=dt.UTC)



@pytest.fixture(autouse=True)
def _fast_hashing() -> Iterator[None]:
    with fast_password_hashing():
        yield

@pytest.fixture
def store(settings: Settings) -> InstanceStore:
    return InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)


def _sign(database: Database, store: InstanceStore, report_id: int, user_id: int,
          findings: str = "Edited findings.", impression: str = "Edited impression.",
          now: dt.datetime = SIGNED_AT) -> int:
    with database.sessions.begin() as session:
        user = session.get_one(User, user_id)
        final = sign_report(session, store, report_id, user, findings, impression, now=now,
                            destinations=[PACS])
        return final.id


def test_sign_writes_a_verified_final_sr_and_queues_its_export(
        database: Database, store: InstanceStore) -> None:
    """The final SR is COMPLETE/VERIFIED/FINAL, names the radiologist, points at the draft."""
    seeded = seed_drafted_study(database, store, images=2)
    radiologist = seed_user(database, "mcurie", display_name="Curie^Marie",
                            organization="St Elsewhere")
    final_id = _sign(database, store, seeded.report_id, radiologist)

    with database.sessions() as session:
        final = session.get_one(Report, final_id)
        draft = session.get_one(Report, seeded.report_id)
        study = session.get_one(Study, seeded.study_id)
        assert final.state == ReportState.FINAL and draft.state == ReportState.DRAFT
        assert final.predecessor_id == draft.id
        assert final.signed_by_id == radiologist and final.signed_at == SIGNED_AT
        assert study.state == StudyState.SIGNED
        assert final.series_instance_uid == final_series_uid(seeded.study_uid)
        exports = session.scalars(select(Export).where(Export.report_id == final.id)).all()
        assert [(e.destination_ae, e.state) for e in exports] == [("PACS", ExportState.PENDING)]
        audit = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "report_signed")).one()
        assert audit.user_id == radiologist and audit.object_id == str(final.id)
        assert audit.details is not None and audit.details["edited"] is True
        sr_path = store.absolute(final.sr_path or "")
        draft_uid = draft.sop_instance_uid

    sr = hd.sr.srread(sr_path)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "VERIFIED", "FINAL")
    assert sr.SeriesNumber == FINAL_SERIES_NUMBER
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Curie^Marie"
    assert observer.VerifyingOrganization == "St Elsewhere"
    assert observer.VerifyingObserverIdentificationCodeSequence[0].CodeValue == "mcurie"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == draft_uid
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert len(evidence.ReferencedSOPSequence) == 2
    content = read_report_content(sr)
    assert (content.findings, content.impression) == ("Edited findings.", "Edited impression.")
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True,
                                timeout=60, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert not errors, errors


def test_signing_twice_makes_one_final(database: Database, store: InstanceStore) -> None:
    """A second sign-off of the same draft is refused; one final, one SR file."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    _sign(database, store, seeded.report_id, radiologist)
    with pytest.raises(AlreadySigned):
        _sign(database, store, seeded.report_id, radiologist)
    with database.sessions() as session:
        finals = session.scalar(select(func.count(Report.id)).where(
            Report.state == ReportState.FINAL))
    assert finals == 1
    final_series = Path(store.root, seeded.study_uid, final_series_uid(seeded.study_uid))
    assert len(list(final_series.glob("*.dcm"))) == 1


def test_concurrent_sign_offs_make_one_final(database: Database, store: InstanceStore) -> None:
    """Two radiologists signing the same draft at once: exactly one wins."""
    seeded = seed_drafted_study(database, store)
    users = [seed_user(database, f"rad{i}") for i in range(2)]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def sign(user_id: int) -> None:
        barrier.wait()
        try:
            _sign(database, store, seeded.report_id, user_id)
            outcomes.append("signed")
        except AlreadySigned:
            outcomes.append("refused")

    threads = [threading.Thread(target=sign, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["refused", "signed"]
    final_series = Path(store.root, seeded.study_uid, final_series_uid(seeded.study_uid))
    assert len(list(final_series.glob("*.dcm"))) == 1


def test_only_active_radiologists_sign(database: Database, store: InstanceStore) -> None:
    """Admins and deactivated radiologists are refused; nothing is written."""
    seeded = seed_drafted_study(database, store)
    admin = seed_user(database, "admin", Role.ADMIN, display_name="Admin^Ada")
    gone = seed_user(database, "gone", active=False)
    for user_id in (admin, gone):
        with pytest.raises(NotPermitted):
            _sign(database, store, seeded.report_id, user_id)
    with database.sessions() as session:
        assert session.get_one(Study, seeded.study_id).state == StudyState.DRAFTED
        assert session.scalar(select(func.count(Report.id))) == 1


def test_empty_report_is_refused(database: Database, store: InstanceStore) -> None:
    """Signing needs findings or an impression."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    with pytest.raises(SignoffError, match="findings or an impression"):
        _sign(database, store, seeded.report_id, radiologist, "  ", "")


def test_amend_supersedes_the_final(database: Database, store: InstanceStore) -> None:
    """The amendment is the new FINAL; the old final becomes AMENDED; both chain back."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    first = _sign(database, store, seeded.report_id, radiologist)
    later = SIGNED_AT + dt.timedelta(hours=2)
    with database.sessions.begin() as session:
        user = session.get_one(User, radiologist)
        amended = amend_report(session, store, first, user, "Edited findings.",
                               "Moderate left pleural effusion.", now=later,
                               destinations=[PACS], reason="Effusion size understated.")
        amended_id = amended.id
    with database.sessions() as session:
        old = session.get_one(Report, first)
        new = session.get_one(Report, amended_id)
        assert (old.state, new.state) == (ReportState.AMENDED, ReportState.FINAL)
        assert new.predecessor_id == old.id
        assert session.scalar(select(func.count(Export.id)).where(
            Export.report_id == new.id)) == 1
        assert session.scalars(select(AuditEvent.action).where(
            AuditEvent.action == "report_amended")).all() == ["report_amended"]
        sr = hd.sr.srread(store.absolute(new.sr_path or ""))
        old_uid = old.sop_instance_uid
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.InstanceNumber == 2
    reference = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_uid
    with database.sessions.begin() as session, pytest.raises(AlreadySigned):
        user = session.get_one(User, radiologist)
        amend_report(session, store, first, user, "x", "y", now=later, reason="Typo.")
    with database.sessions.begin() as session, pytest.raises(SignoffError, match="nothing"):
        user = session.get_one(User, radiologist)
        amend_report(session, store, amended_id, user, "Edited findings.",
                     "Moderate left pleural effusion.", now=later + dt.timedelta(hours=1),
                     reason="Again.")


def test_amendment_reason_is_required_stored_in_the_sr_and_audited(
        database: Database, store: InstanceStore) -> None:
    """No amendment without a reason (empty, blank, too long, control characters refused,
    nothing written); the reason is kept on the row, in the SR (dciodvfy-clean) and in the
    audit event."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    first = _sign(database, store, seeded.report_id, radiologist)
    later = SIGNED_AT + dt.timedelta(hours=2)
    for reason, message in (("", "reason"), ("   \n ", "reason"),
                            ("x" * (MAX_REASON_LENGTH + 1), "longer"),
                            ("bell\x07", "control character")):
        with database.sessions.begin() as session, pytest.raises(SignoffError, match=message):
            amend_report(session, store, first, session.get_one(User, radiologist),
                         "Edited findings.", "Moderate effusion.", now=later, reason=reason)
    with database.sessions() as session:
        assert session.scalar(select(func.count(Report.id))) == 2  # draft and final only
    reason = "Effusion is moderate, not small — measured on the lateral view."
    with database.sessions.begin() as session:
        amended = amend_report(session, store, first, session.get_one(User, radiologist),
                               "Edited findings.", "Moderate effusion.", now=later,
                               reason=f"  {reason}\t")
        amended_id, sr_path = amended.id, store.absolute(amended.sr_path or "")
    with database.sessions() as session:
        assert session.get_one(Report, amended_id).amendment_reason == reason
        assert session.get_one(Report, first).amendment_reason is None
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "report_amended")).one()
        assert event.details is not None and event.details["reason"] == reason
    sr = hd.sr.srread(sr_path)
    assert read_amendment_reason(sr) == reason
    items = [(i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue)
             for i in sr.ContentSequence if i.ValueType == "TEXT"
             and i.ConceptNameCodeSequence[0].CodeValue == "AMENDREASON"]
    assert items == [("Reason for amendment", reason)]
    assert shutil.which("dciodvfy"), "dciodvfy missing: run `make system-deps`"
    result = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if line.startswith("Error")]
    assert not errors, errors


def test_reject_keeps_the_study_drafted(database: Database, store: InstanceStore) -> None:
    """A rejected draft records who and why; the study stays DRAFTED and can still be signed."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    with database.sessions.begin() as session:
        user = session.get_one(User, radiologist)
        with pytest.raises(SignoffError, match="reason"):
            reject_draft(session, seeded.report_id, user, "   ")
        reject_draft(session, seeded.report_id, user, "Laterality wrong", now=SIGNED_AT)
    with database.sessions() as session:
        draft = session.get_one(Report, seeded.report_id)
        assert draft.rejected_by_id == radiologist
        assert draft.rejection_reason == "Laterality wrong"
        assert session.get_one(Study, seeded.study_id).state == StudyState.DRAFTED
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "draft_rejected")).one()
        assert event.details == {"reason": "Laterality wrong"}
    with database.sessions.begin() as session, pytest.raises(AlreadySigned):
        reject_draft(session, seeded.report_id, session.get_one(User, radiologist), "again")
    _sign(database, store, seeded.report_id, radiologist)


def _evidence_uids(sr: Dataset) -> set[str]:
    return {str(sop.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence}


def test_a_draft_is_signed_before_its_handed_over_sr_is_stored(
        database: Database, store: InstanceStore) -> None:
    """A remote worker's draft SR still waiting in the report row is the predecessor."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    with database.sessions.begin() as session:
        draft = session.get_one(Report, seeded.report_id)
        path = store.absolute(draft.sr_path or "")
        draft.pending_sr_data, draft.sr_path = path.read_bytes(), None
        path.unlink()
        draft_uid = draft.sop_instance_uid

    final_id = _sign(database, store, seeded.report_id, radiologist)

    with database.sessions() as session:
        final = session.get_one(Report, final_id)
        sr = hd.sr.srread(store.absolute(final.sr_path or ""))
    reference = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == draft_uid
    assert store_handed_over_srs(database.sessions, store) == 1  # stored afterwards


def test_a_report_is_amended_after_its_images_were_removed(
        database: Database, store: InstanceStore) -> None:
    """Once retention removed the images, the amendment references what its predecessor
    referenced, with the patient and study of the predecessor."""
    seeded = seed_drafted_study(database, store, images=2)
    radiologist = seed_user(database, "mcurie")
    first = _sign(database, store, seeded.report_id, radiologist)
    with database.sessions.begin() as session:
        for instance in session.scalars(select(Instance).where(
                Instance.id.in_(seeded.instance_ids))):
            store.remove(instance.path)
            instance.purged_at = SIGNED_AT
        signed = hd.sr.srread(store.absolute(session.get_one(Report, first).sr_path or ""))

    with database.sessions.begin() as session:
        amended = amend_report(session, store, first, session.get_one(User, radiologist),
                               "Edited findings.", "Moderate left pleural effusion.",
                               now=SIGNED_AT + dt.timedelta(hours=2),
                               reason="Effusion size understated.")
        sr = hd.sr.srread(store.absolute(amended.sr_path or ""))

    assert len(_evidence_uids(sr)) == 2 and _evidence_uids(sr) == _evidence_uids(signed)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime"):
        assert sr.get(keyword) == signed.get(keyword), keyword
    assert sr.VerificationFlag == "VERIFIED"


def _language(sr: Dataset) -> tuple[str, str, str]:
    """The SR's Language of Content Item and Descendants: (value, scheme, meaning)."""
    [item] = [i for i in sr.ContentSequence
              if i.ConceptNameCodeSequence[0].CodeValue == "121049"]
    code = item.ConceptCodeSequence[0]
    return (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning)


def test_signed_and_amended_srs_declare_the_configured_language(
    database: Database, store: InstanceStore
) -> None:
    """The final SR and its amendment carry the ``[reports] language`` they were built in."""
    seeded = seed_drafted_study(database, store)
    radiologist = seed_user(database, "mcurie")
    with database.sessions.begin() as session:
        draft = session.get_one(Report, seeded.report_id)
        draft_sr = Dataset(hd.sr.srread(store.absolute(draft.sr_path or "")))
        user = session.get_one(User, radiologist)
        final_id = sign_report(session, store, seeded.report_id, user, "Befund.",
                               "Beurteilung.", now=SIGNED_AT, language="de-DE").id
    assert _language(draft_sr) == ("en-US", "RFC5646", "English (United States)")
    with database.sessions.begin() as session:
        user = session.get_one(User, radiologist)
        amended_id = amend_report(session, store, final_id, user, "Constat.", "Conclusion.",
                                  now=SIGNED_AT + dt.timedelta(hours=1), language="fr-FR",
                                  reason="Traduction.").id
    with database.sessions() as session:
        final = hd.sr.srread(store.absolute(session.get_one(Report, final_id).sr_path or ""))
        amended = hd.sr.srread(
            store.absolute(session.get_one(Report, amended_id).sr_path or ""))
    assert _language(final) == ("de-DE", "RFC5646", "German (Germany)")
    assert _language(amended) == ("fr-FR", "RFC5646", "French (France)")
    with database.sessions.begin() as session, pytest.raises(ValueError, match="language"):
        user = session.get_one(User, radiologist)
        amend_report(session, store, amended_id, user, "x.", "y.",
                     now=SIGNED_AT + dt.timedelta(hours=2), language="xx-YY", reason="z.")


def test_the_signers_language_wins_over_the_sites(database: Database,
                                                  store: InstanceStore) -> None:
    """A radiologist with a language of their own signs in it; one without, in the site's."""
    from node.users import UserError, set_user_language

    polyglot = seed_user(database, "mrossi", display_name="Rossi^Maria")
    plain = seed_user(database, "mcurie")
    with database.sessions.begin() as session:
        user = session.get_one(User, polyglot)
        with pytest.raises(UserError, match="unsupported report language"):
            set_user_language(session, user, "xx-YY")
        set_user_language(session, user, "IT-ch")
    with database.sessions() as session:
        assert session.get_one(User, polyglot).language == "it-CH"
        [event] = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "user_language_set")).all()
        assert event.details == {"language": "it-CH", "previous": None}
    languages = []
    for seed, user_id in ((1, polyglot), (2, plain)):
        seeded = seed_drafted_study(database, store, seed=seed, patient_id=f"PID-L{seed}",
                                    accession=f"ACC-L{seed}")
        with database.sessions.begin() as session:
            final = sign_report(session, store, seeded.report_id,
                                session.get_one(User, user_id), "Reperto.", "Conclusione.",
                                now=SIGNED_AT, language="de-CH")
            languages.append(_language(hd.sr.srread(store.absolute(final.sr_path or ""))))
    assert languages == [("it-CH", "RFC5646", "Italian (Switzerland)"),
                         ("de-CH", "RFC5646", "German (Switzerland)")]


def test_a_draft_declares_the_configured_language(database: Database,
                                                  store: InstanceStore) -> None:
    """A draft built with ``language`` says so in its content tree (and still parses)."""
    seeded = seed_drafted_study(database, store)
    with database.sessions() as session:
        paths = [store.absolute(i.path) for i in session.scalars(
            select(Instance).where(Instance.study_id == seeded.study_id))]
    stored = write_draft_sr(None, paths, ReportContent(findings="Befund.",
                                                      impression="Beurteilung."),
                            MODEL, language="de-DE")
    assert stored.data is not None
    sr = dcmread(BytesIO(stored.data))
    assert _language(sr) == ("de-DE", "RFC5646", "German (Germany)")
    assert read_report_content(sr).findings == "Befund."
