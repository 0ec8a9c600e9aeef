"""The full-depth pixel endpoint of the viewer: values, login, audit, signed evidence,
size limits, caching; the prior-study listing of the study page."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.db.models import Instance, Report
from node.db.types import utcnow
from node.states import ReportState, StudyState
from tests.integration.web_seed import HTML, WebEnv, audit_events, seed_user
from tests.viewer_seed import (
    add_report,
    add_study,
    gradient_phantom,
    phantom_dataset,
    store_dataset,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


def _phantom(web: WebEnv, **attributes: object) -> tuple[int, int, np.ndarray]:
    study = add_study(web.database, patient_id="PID-P1")
    stored = gradient_phantom(20, 30)
    ds = phantom_dataset(study, stored, windows=[(3000.0, 6000.0)], **attributes)
    return study.id, store_dataset(web.database, web.store, study, ds), stored


def test_samples_are_the_modality_values_at_full_depth(web: WebEnv) -> None:
    """Rescale applied, 16 bits kept, gzip on request, no-store, audited read."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, stored = _phantom(web, PixelSpacing=["0.2", "0.1"])
    web.login("mcurie")
    description = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.json")
    assert description.status_code == 200
    assert "no-store" in description.headers["cache-control"]
    body = description.json()
    assert (body["rows"], body["columns"], body["scale"]) == (20, 30, 1.0)
    assert body["offset"] == stored.min() - 1024.0
    assert body["window"] == {"name": "DICOM window 1", "center": 3000.0, "width": 6000.0,
                              "function": "LINEAR"}
    assert body["spacing"]["row_mm"] == 0.2 and body["spacing"]["column_mm"] == 0.1
    assert body["orientation"]["right"] == "L" and body["orientation"]["bottom"] == "F"

    response = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.u16",
                              headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "no-store" in response.headers["cache-control"]
    samples = np.frombuffer(response.content, dtype="<u2").reshape(20, 30)
    modality = body["offset"] + body["scale"] * samples.astype(np.float64)
    np.testing.assert_array_equal(modality, stored.astype(np.float64) - 1024.0)
    events = audit_events(web.database, "image_pixels_viewed")
    assert [(e.study_id, e.object_id) for e in events] == [(study_id, str(instance_id))]


def test_fractional_rescale_is_quantised_within_half_a_step(web: WebEnv) -> None:
    """Values that are not integers are spread over 65536 levels of their range."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, stored = _phantom(web, RescaleSlope="0.37", RescaleIntercept="-5.5")
    web.login("mcurie")
    body = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.json").json()
    raw = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.u16").content
    samples = np.frombuffer(raw, dtype="<u2").reshape(20, 30).astype(np.float64)
    truth = stored * 0.37 - 5.5
    assert body["scale"] == pytest.approx((truth.max() - truth.min()) / 65535)
    error = np.abs(body["offset"] + body["scale"] * samples - truth).max()
    assert error <= body["scale"] / 2 * (1 + 1e-9)  # half a step (and float rounding)


def test_login_is_required(web: WebEnv) -> None:
    """No login, no values: 401 for the script's requests, nothing audited."""
    study_id, instance_id, _ = _phantom(web)
    for suffix in ("json", "u16"):
        response = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.{suffix}")
        assert response.status_code == 401
        assert b"\x00" not in response.content
    assert audit_events(web.database, "image_pixels_viewed") == []


def test_an_image_of_another_study_is_not_found(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    _, instance_id, _ = _phantom(web)
    other = add_study(web.database, patient_id="PID-P2")
    web.login("mcurie")
    assert web.client.get(f"/studies/{other.id}/pixels/{instance_id}.u16").status_code == 404


def test_changed_evidence_behind_a_signed_report_is_refused(web: WebEnv) -> None:
    """Other bytes in a signed image's file: 409 for both requests, each audited."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, _ = _phantom(web)
    with web.database.sessions.begin() as session:
        instance = session.get_one(Instance, instance_id)
        session.add(Report(study_id=study_id, state=ReportState.FINAL, findings="F.",
                           impression="I.", signed_at=utcnow(),
                           signed_evidence={instance.sop_instance_uid: instance.sha256}))
        path = web.store.absolute(instance.path)
    web.login("mcurie")
    assert web.client.get(f"/studies/{study_id}/pixels/{instance_id}.u16").status_code == 200
    data = bytearray(path.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    for suffix in ("json", "u16"):
        response = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.{suffix}")
        assert response.status_code == 409
        assert "changed since it was signed" in response.text
    events = audit_events(web.database, "signed_evidence_mismatch")
    assert [e.details["during"] for e in events if e.details] == ["pixels", "pixels"]
    assert len(audit_events(web.database, "image_pixels_viewed")) == 1


def test_an_image_over_the_size_limits_is_not_decoded(web: WebEnv) -> None:
    """A header declaring 10000 x 10000 pixels over a few bytes answers 422."""
    seed_user(web.database, "mcurie")
    study = add_study(web.database, patient_id="PID-P3")
    ds: Dataset = phantom_dataset(study, gradient_phantom(4, 4))
    ds.Rows = ds.Columns = 10000
    instance_id = store_dataset(web.database, web.store, study, ds)
    web.login("mcurie")
    for suffix in ("json", "u16"):
        response = web.client.get(f"/studies/{study.id}/pixels/{instance_id}.{suffix}")
        assert response.status_code == 422
    assert audit_events(web.database, "image_pixels_viewed") == []


def test_purged_image_is_gone(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    study_id, instance_id, _ = _phantom(web)
    with web.database.sessions.begin() as session:
        session.get_one(Instance, instance_id).purged_at = utcnow()
    web.login("mcurie")
    assert web.client.get(f"/studies/{study_id}/pixels/{instance_id}.u16").status_code == 410


def test_study_page_lists_priors_with_signed_text_only(web: WebEnv) -> None:
    """Same Patient ID and issuer, newest first; draft text never appears; audited."""
    seed_user(web.database, "mcurie")
    current = add_study(web.database, patient_id="PID-Q", issuer="HOSP", study_date="20250101")
    old = add_study(web.database, patient_id="PID-Q", issuer="HOSP", study_date="20230101",
                    state=StudyState.SIGNED)
    draft_id = add_report(web.database, old, ReportState.DRAFT, findings="Draft words.",
                          impression="Draft impression words.")
    first = add_report(web.database, old, ReportState.AMENDED, findings="First signed.",
                       impression="First.", signed_at=utcnow() - dt.timedelta(days=9),
                       predecessor_id=draft_id)
    add_report(web.database, old, ReportState.FINAL, findings="Amended findings text.",
               impression="Amended impression.", signed_at=utcnow(), predecessor_id=first)
    newer = add_study(web.database, patient_id="PID-Q", issuer="HOSP", study_date="20240601")
    add_report(web.database, newer, ReportState.DRAFT, findings="Newer draft words.",
               impression="Newer draft impression.")
    elsewhere = add_study(web.database, patient_id="PID-Q", study_date="20240901")
    web.login("mcurie")
    page = web.client.get(f"/studies/{current.id}", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert text.index(f'data-study-id="{newer.id}"') < text.index(f'data-study-id="{old.id}"')
    assert f'data-study-id="{elsewhere.id}"' not in text
    assert "Amended findings text." in text and "Amended report" in text
    for hidden in ("Draft words.", "Newer draft words.", "First signed."):
        assert hidden not in text
    assert "Unsigned AI draft" in text
    events = audit_events(web.database, "prior_studies_listed")
    assert len(events) == 1 and events[0].study_id == current.id
    assert events[0].details == {"prior_study_ids": [newer.id, old.id], "signed_texts_shown": 1}
    # a study without other studies of its patient records no listing
    assert web.client.get(f"/studies/{elsewhere.id}", headers=HTML).status_code == 200
    with web.database.sessions() as session:
        assert session.scalar(select(Report.id).where(Report.study_id == elsewhere.id)) is None
    assert len(audit_events(web.database, "prior_studies_listed")) == 1
