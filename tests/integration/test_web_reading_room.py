"""Server side of the reading room: working copies, presence, conflicts, urgent confirmation.

The browser behaviour is in ``tests/browser/test_reading_room.py``; these check the rules
the node enforces whatever the page's script does, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from node.db.models import Report, StudyPresence, WorkingCopy
from node.db.types import utcnow
from node.states import ReportState
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    build_web_env,
    seed_drafted_study,
    seed_user,
)

JSON = {"Accept": "application/json"}


@pytest.fixture
def lenient_web(tmp_path: Path, database_url: str, fast_hashing: None) -> Iterator[WebEnv]:
    """The web app of a site that turned the urgent confirmation off."""
    env = build_web_env(tmp_path, database_url,
                        web={"secret_key_file": str(tmp_path / "web-secret.key"),
                             "confirm_unedited_urgent": False})
    yield env
    env.close()


def test_working_copy_needs_csrf_and_is_audited_once(web: WebEnv) -> None:
    """Saves without the CSRF token are refused; the first save is audited, no text in it."""
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    url = f"/studies/{seeded.study_id}/working-copy"
    body = {"report_id": seeded.report_id, "findings": "Secret text", "impression": "x"}
    assert web.client.post(url, json=body, headers=JSON).status_code == 403
    for text in ("first", "second"):
        response = web.client.post(url, json={**body, "impression": text},
                                   headers={**JSON, "X-CSRF-Token": csrf})
        assert response.status_code == 200 and "saved_at" in response.json()
    with web.database.sessions() as session:
        copy = session.scalars(select(WorkingCopy)).one()
        assert (copy.findings, copy.impression) == ("Secret text", "second")
    events = audit_events(web.database, "working_copy_started")
    assert len(events) == 1 and "Secret" not in str(events[0].details)
    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    assert "Secret text" in page.text and "saved " in page.text


def test_conflicting_sign_keeps_the_text_and_shows_both(web: WebEnv) -> None:
    """The second signer gets 409; their text becomes a working copy shown beside the
    signed report until they amend or discard it."""
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "first", display_name="First^Ann")
    seed_user(web.database, "second", display_name="Second^Bob")
    csrf = web.login("first")
    form = {"csrf_token": csrf, "report_id": seeded.report_id, "findings": "Signed first.",
            "impression": "One."}
    assert web.client.post(f"/studies/{seeded.study_id}/sign", data=form,
                           headers=JSON).json()["redirect"].endswith("done=signed")
    web.client.cookies.clear()
    csrf = web.login("second")
    response = web.client.post(f"/studies/{seeded.study_id}/sign", headers=JSON, data={
        **form, "csrf_token": csrf, "findings": "Mine, not lost.", "impression": "Two."})
    assert response.status_code == 409
    page = web.client.get(response.json()["redirect"], headers=HTML)
    assert 'id="conflict"' in page.text
    assert "Signed first." in page.text and "Mine, not lost." in page.text
    with web.database.sessions() as session:
        final_id = session.scalars(select(Report.id).where(
            Report.state == ReportState.FINAL)).one()
    amended = web.client.post(f"/studies/{seeded.study_id}/amend", headers=JSON, data={
        "csrf_token": csrf, "report_id": final_id, "findings": "Mine, not lost.",
        "impression": "Two.", "reason": "My reading differs."})
    assert amended.status_code == 200
    with web.database.sessions() as session:
        assert session.scalars(select(WorkingCopy)).all() == []
    assert 'id="conflict"' not in web.client.get(f"/studies/{seeded.study_id}",
                                                  headers=HTML).text


def test_repeated_sign_by_the_signer_is_no_conflict(web: WebEnv) -> None:
    """A double submit of the same text by the signer leaves no working copy behind."""
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    form = {"csrf_token": csrf, "report_id": seeded.report_id, "findings": "Same.",
            "impression": "Same."}
    web.client.post(f"/studies/{seeded.study_id}/sign", data=form, headers=JSON)
    assert web.client.post(f"/studies/{seeded.study_id}/sign", data=form,
                           headers=JSON).status_code == 409
    late = web.client.post(f"/studies/{seeded.study_id}/working-copy", headers={
        **JSON, "X-CSRF-Token": csrf}, json={"report_id": seeded.report_id,
                                              "findings": "late", "impression": ""})
    assert late.status_code == 409
    with web.database.sessions() as session:
        assert session.scalars(select(WorkingCopy)).all() == []


def test_presence_names_colleagues_only_while_alive(web: WebEnv) -> None:
    """The heartbeat answer and the worklist name colleagues, never yourself, until expiry."""
    seeded = seed_drafted_study(web.database, web.store, patient_name="ROE^RICHARD")
    seed_user(web.database, "first", display_name="First^Ann")
    seed_user(web.database, "second", display_name="Second^Bob")
    csrf = web.login("first")
    url = f"/studies/{seeded.study_id}/presence"
    assert web.client.post(url, headers={**JSON, "X-CSRF-Token": csrf}).json() == {
        "readers": []}
    assert web.client.post("/studies/999999/presence",
                           headers={**JSON, "X-CSRF-Token": csrf}).status_code == 404
    web.client.cookies.clear()
    csrf = web.login("second")
    assert web.client.post(url, headers={**JSON, "X-CSRF-Token": csrf}).json() == {
        "readers": ["Dr First"]}
    assert "Open by Dr First" in web.client.get("/", headers=HTML).text
    expiry = web.settings.web.presence_expiry_seconds
    with web.database.sessions.begin() as session:
        for row in session.scalars(select(StudyPresence)):
            row.seen_at = utcnow() - dt.timedelta(seconds=expiry + 1)
    assert "Open by" not in web.client.get("/", headers=HTML).text


def test_unedited_urgent_draft_needs_confirmation(web: WebEnv) -> None:
    """428 without the confirmation; with it the draft is signed and the confirmation audited."""
    seeded = seed_drafted_study(web.database, web.store, urgent=True,
                                urgent_findings=["pneumothorax"])
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    with web.database.sessions() as session:
        draft = session.get_one(Report, seeded.report_id)
        form = {"csrf_token": csrf, "report_id": seeded.report_id,
                "findings": draft.findings, "impression": draft.impression + "  "}
    url = f"/studies/{seeded.study_id}/sign"
    refused = web.client.post(url, data=form, headers=JSON)
    assert refused.status_code == 428 and refused.json()["confirm"] is True
    page = web.client.post(url, data=form)
    assert page.status_code == 428 and 'name="confirm_urgent"' in page.text
    assert web.client.post(url, data={**form, "confirm_urgent": "1"}).status_code == 303
    events = audit_events(web.database, "unedited_urgent_confirmed")
    assert len(events) == 1 and events[0].details == {"urgent_findings": ["pneumothorax"]}


def test_confirmation_can_be_turned_off(lenient_web: WebEnv) -> None:
    """``[web] confirm_unedited_urgent = false`` signs unedited urgent drafts directly."""
    web = lenient_web
    seeded = seed_drafted_study(web.database, web.store, urgent=True,
                                urgent_findings=["pneumothorax"])
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    with web.database.sessions() as session:
        draft = session.get_one(Report, seeded.report_id)
        form = {"csrf_token": csrf, "report_id": seeded.report_id,
                "findings": draft.findings, "impression": draft.impression}
    assert web.client.post(f"/studies/{seeded.study_id}/sign", data=form).status_code == 303
    assert audit_events(web.database, "unedited_urgent_confirmed") == []
