"""Server side of the reading flow: worklist order for "Sign and next", amendment reasons,
the report history, and the live worklist's stream and its bounds, on SQLite and PostgreSQL.

The browser behaviour is in ``tests/browser/test_reading_flow.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from node.db.models import Report, WebSession
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


def _seed(web: WebEnv, name: str, minutes_ago: int, **kwargs: object) -> int:
    seeded = seed_drafted_study(web.database, web.store, patient_name=name,
                                patient_id=f"PID-{name}", accession=f"A-{name[:10]}",
                                received_at=utcnow() - dt.timedelta(minutes=minutes_ago),
                                **kwargs)  # type: ignore[arg-type]
    return seeded.study_id


def _draft_id(web: WebEnv, study_id: int) -> int:
    with web.database.sessions() as session:
        return session.scalars(select(Report.id).where(
            Report.study_id == study_id, Report.state == ReportState.DRAFT)).one()


def _sign_next(web: WebEnv, csrf: str, study_id: int, wl: str = "") -> str:
    response = web.client.post(f"/studies/{study_id}/sign", headers=JSON, data={
        "csrf_token": csrf, "report_id": _draft_id(web, study_id), "findings": "Edited.",
        "impression": "Signed in a row.", "next": "1", "wl": wl})
    assert response.status_code == 200, response.text
    target: str = response.json()["redirect"]
    return target


def test_sign_and_next_walks_the_worklist_in_its_order(web: WebEnv) -> None:
    """Urgent first, then oldest; the signed study's place decides the next; the filters
    carried from the worklist hold; after the last study the worklist opens."""
    old = _seed(web, "OLD^ROUTINE", 90)
    new = _seed(web, "NEW^ROUTINE", 10)
    urgent_new = _seed(web, "NEW^URGENT", 5, urgent=True, urgent_findings=["pneumothorax"])
    urgent_old = _seed(web, "OLD^URGENT", 60, urgent=True, urgent_findings=["pneumothorax"])
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")

    page = web.client.get(f"/studies/{urgent_new}", headers=HTML).text
    assert f'data-previous-url="/studies/{urgent_old}"' in page
    assert f'data-next-url="/studies/{old}"' in page

    assert _sign_next(web, csrf, urgent_old) == f"/studies/{urgent_new}?done=signed-next"
    assert _sign_next(web, csrf, urgent_new) == f"/studies/{old}?done=signed-next"
    # The signed studies left the list; "previous" of the oldest routine study is now none.
    page = web.client.get(f"/studies/{old}?done=signed-next", headers=HTML).text
    assert 'data-previous-url=""' in page and "Previous report signed" in page
    assert _sign_next(web, csrf, old) == f"/studies/{new}?done=signed-next"
    assert _sign_next(web, csrf, new) == "/?done=signed"
    assert "That was the last study" in web.client.get("/?done=signed", headers=HTML).text


def test_sign_and_next_keeps_the_worklist_filters(web: WebEnv) -> None:
    """With the urgent filter, the next study is the next urgent one, never a routine one;
    the filters travel to the next page and to its Back link."""
    first = _seed(web, "FIRST^URGENT", 50, urgent=True, urgent_findings=["pneumothorax"])
    _seed(web, "IN^BETWEEN", 40)
    second = _seed(web, "SECOND^URGENT", 30, urgent=True, urgent_findings=["pneumothorax"])
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    target = _sign_next(web, csrf, first, wl="state=DRAFTED&flag=urgent")
    parts = urlsplit(target)
    assert parts.path == f"/studies/{second}"
    assert parse_qs(parts.query) == {"wl": ["flag=urgent"], "done": ["signed-next"]}
    page = web.client.get(target, headers=HTML).text
    assert 'href="/?flag=urgent"' in page  # Back keeps the filter
    assert _sign_next(web, csrf, second, wl="flag=urgent") == "/?flag=urgent&done=signed"


def test_unedited_urgent_sign_and_next_still_asks(web: WebEnv) -> None:
    """"Sign and next" of an unedited urgent draft answers 428 and signs nothing; with the
    confirmation it signs and leads on."""
    urgent = _seed(web, "URGENT^ONE", 20, urgent=True, urgent_findings=["pneumothorax"])
    routine = _seed(web, "ROUTINE^ONE", 10)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    with web.database.sessions() as session:
        draft = session.get_one(Report, _draft_id(web, urgent))
        text = {"findings": draft.findings, "impression": draft.impression}
    form = {"csrf_token": csrf, "report_id": draft.id, **text, "next": "1"}
    refused = web.client.post(f"/studies/{urgent}/sign", headers=JSON, data=form)
    assert refused.status_code == 428 and refused.json()["confirm"] is True
    with web.database.sessions() as session:
        assert session.scalars(select(Report).where(Report.state == ReportState.FINAL)).all() \
            == []
    confirmed = web.client.post(f"/studies/{urgent}/sign", headers=JSON,
                                data={**form, "confirm_urgent": "1"})
    assert confirmed.json()["redirect"] == f"/studies/{routine}?done=signed-next"
    assert len(audit_events(web.database, "unedited_urgent_confirmed")) == 1


def test_amendment_needs_a_reason_which_the_history_shows(web: WebEnv) -> None:
    """No reason: 400 and nothing amended. With one: stored, audited, and the history shows
    draft → signed → amendment as word diffs with who, when and why."""
    study = _seed(web, "AMEND^ME", 30)
    seed_user(web.database, "mcurie", display_name="Curie^Marie")
    csrf = web.login("mcurie")
    web.client.post(f"/studies/{study}/sign", data={
        "csrf_token": csrf, "report_id": _draft_id(web, study),
        "findings": "Heart size is normal. Small left pleural effusion.",
        "impression": "Small left pleural effusion."})
    with web.database.sessions() as session:
        final_id = session.scalars(select(Report.id).where(
            Report.state == ReportState.FINAL)).one()
    form = {"csrf_token": csrf, "report_id": final_id,
            "findings": "Heart size is normal. Moderate left pleural effusion.",
            "impression": "Moderate left pleural effusion."}
    for reason in ("", "   ", "x" * 1001):
        refused = web.client.post(f"/studies/{study}/amend", headers=JSON,
                                  data={**form, "reason": reason})
        assert refused.status_code == 400, reason
    page = web.client.post(f"/studies/{study}/amend", headers=HTML,
                           data={**form, "reason": ""})
    assert page.status_code == 400 and "give a reason for the amendment" in page.text
    assert "Moderate left pleural effusion." in page.text  # the typed text is kept
    assert audit_events(web.database, "report_amended") == []

    reason = "Effusion re-measured on the lateral view <b>bold</b>."
    done = web.client.post(f"/studies/{study}/amend", headers=JSON,
                           data={**form, "reason": reason})
    assert done.status_code == 200
    [event] = audit_events(web.database, "report_amended")
    assert event.details is not None and event.details["reason"] == reason
    with web.database.sessions() as session:
        newest = session.scalars(select(Report).where(Report.state == ReportState.FINAL)).one()
        assert newest.amendment_reason == reason

    page = web.client.get(f"/studies/{study}", headers=HTML).text
    history = page[page.index('id="history"'):]
    titles = re.findall(r'class="history-title">([^<]+)<', history)
    assert titles == ["AI draft", "Signed report", "Amendment 1"]
    amendment = history[history.index(f'id="history-{newest.id}"'):]
    assert "<del>Small</del><ins>Moderate</ins>" in amendment
    assert "Curie, Marie" in amendment or "Marie Curie" in amendment
    assert "&lt;b&gt;bold&lt;/b&gt;" in amendment and "<b>bold</b>" not in amendment


@pytest.fixture
def one_stream(tmp_path: Path, database_url: str, fast_hashing: None) -> Iterator[WebEnv]:
    """A web app allowing one live stream per user, polling fast."""
    env = build_web_env(tmp_path, database_url,
                        web={"secret_key_file": str(tmp_path / "web-secret.key"),
                             "live_streams_per_user": 1, "live_poll_seconds": 0.1,
                             "live_stream_max_seconds": 5.0,
                             "live_login_check_seconds": 0.2})
    yield env
    env.close()


def _first_event(lines: Iterator[str]) -> tuple[str, dict[str, object]]:
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name:
            return name, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended without an event")


def test_live_stream_needs_a_login_and_carries_no_patient_data(one_stream: WebEnv) -> None:
    """401 without a login; with one, the events hold a digest and counts, never names."""
    web = one_stream
    _seed(web, "SECRET^PATIENT", 10)
    assert web.client.get("/api/worklist/events").status_code == 401
    assert web.client.get("/api/worklist/state").status_code == 401
    assert web.client.get("/worklist/rows").status_code == 401
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    with web.client.stream("GET", "/api/worklist/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        lines = stream.iter_lines()
        name, data = _first_event(lines)
        assert name == "worklist"
        assert set(data) == {"version", "counts"}
        assert "SECRET" not in json.dumps(data) and "PID-" not in json.dumps(data)
        state = web.client.get("/api/worklist/state").json()
        assert state["version"] == data["version"]
        # One stream per user here: a second is refused (the page then polls).
        assert web.client.get("/api/worklist/events").status_code == 429
    rows = web.client.get("/worklist/rows", headers=HTML)
    assert "SECRET, PATIENT" in rows.text and "<html" not in rows.text
    assert len(audit_events(web.database, "worklist_viewed")) >= 2  # login page + rows


def test_live_digest_changes_when_a_study_is_drafted(one_stream: WebEnv) -> None:
    """The digest of a filtered worklist changes when a study it shows arrives, and not
    when a study it does not show does."""
    web = one_stream
    _seed(web, "FIRST^ONE", 10)
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    urgent_before = web.client.get("/api/worklist/state?flag=urgent").json()["version"]
    before = web.client.get("/api/worklist/state").json()
    _seed(web, "SECOND^ONE", 5)
    after = web.client.get("/api/worklist/state").json()
    assert after["version"] != before["version"]
    assert after["counts"]["DRAFTED"] == before["counts"]["DRAFTED"] + 1
    # The counts changed, so the urgent worklist's digest changes too (its chips show them);
    # its rows are the same.
    urgent_after = web.client.get("/api/worklist/state?flag=urgent").json()["version"]
    assert urgent_after != urgent_before
    assert "SECOND, ONE" not in web.client.get("/worklist/rows?flag=urgent").text


def test_live_stream_ends_with_the_login(one_stream: WebEnv) -> None:
    """An ended login ends an open stream with a ``logout`` event (checked every
    ``live_login_check_seconds``)."""
    web = one_stream
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    with web.client.stream("GET", "/api/worklist/events") as stream:
        lines = stream.iter_lines()
        assert _first_event(lines)[0] == "worklist"
        with web.database.sessions.begin() as session:
            for row in session.scalars(select(WebSession)):
                row.ended_at = utcnow()
        assert _first_event(lines)[0] == "logout"


def test_live_refreshes_never_keep_an_idle_login_alive(web: WebEnv) -> None:
    """The stream, the digest and the rows a page fetches by itself leave the login's last
    activity where it was; a page the user opens moves it."""
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    idle_since = utcnow() - dt.timedelta(minutes=5)

    def set_last_seen() -> None:
        with web.database.sessions.begin() as session:
            for row in session.scalars(select(WebSession).where(WebSession.ended_at.is_(None))):
                row.last_seen_at = idle_since

    def last_seen() -> dt.datetime:
        with web.database.sessions() as session:
            return session.scalars(select(WebSession.last_seen_at).where(
                WebSession.ended_at.is_(None))).one()

    set_last_seen()
    for path in ("/api/worklist/state", "/worklist/rows", "/api/worklist/counts"):
        assert web.client.get(path).status_code == 200, path
    with web.client.stream("GET", "/api/worklist/events") as stream:
        assert stream.status_code == 200
    assert abs((last_seen() - idle_since).total_seconds()) < 1
    assert web.client.get("/", headers=HTML).status_code == 200
    assert last_seen() > idle_since + dt.timedelta(minutes=4)
