"""What a hostile client sends the web app: numbers out of range, wildcards, a NUL byte;
and what a shared cache may keep of the answers (nothing but the static files)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from node.states import StudyState
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    page_csrf,
    seed_drafted_study,
    seed_study,
    seed_user,
)

HUGE = str(10**30)


@pytest.fixture
def signed_in(web: WebEnv) -> WebEnv:
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    return web


def test_every_response_but_static_files_is_no_store(signed_in: WebEnv) -> None:
    """Pages, images, the worklist API, QIDO-RS, WADO-RS (files and metadata) and errors
    all carry ``Cache-Control: no-store``; the stylesheet may be cached."""
    web = signed_in
    seeded = seed_drafted_study(web.database, web.store)
    uid = seeded.study_uid
    paths = [
        "/", f"/studies/{seeded.study_id}",
        f"/studies/{seeded.study_id}/image/{seeded.instance_ids[0]}.png",
        "/api/worklist/counts", "/dicomweb/studies", f"/dicomweb/studies/{uid}/series",
        f"/dicomweb/studies/{uid}/instances", f"/dicomweb/studies/{uid}/metadata",
        f"/dicomweb/studies/{uid}", "/dicomweb/studies/1.2.3.4.5", "/studies/999999",
        "/readyz",
    ]
    for path in paths:
        response = web.client.get(path)
        assert response.status_code < 500, path
        assert "no-store" in response.headers.get("cache-control", ""), path
    static = web.client.get("/static/app.css")
    assert static.status_code == 200
    assert "no-store" not in static.headers.get("cache-control", "")


@pytest.mark.parametrize("path", [
    f"/dicomweb/studies?offset={HUGE}", f"/dicomweb/studies?limit={HUGE}",
    f"/dicomweb/instances?offset={HUGE}", f"/studies/{HUGE}", "/studies/0",
    f"/studies/1/image/{HUGE}.png", "/studies/1/image/1.png?wc=1e400&ww=1",
    "/studies/1/image/1.png?wc=nan&ww=400",
    f"/admin/jobs/{HUGE}/retry",
])
def test_out_of_range_numbers_answer_400(signed_in: WebEnv, path: str) -> None:
    """Integers beyond 64 bits and non-finite window values are refused with 400, never
    a server error, and the answer does not echo the value."""
    seed_drafted_study(signed_in.database, signed_in.store)
    method = signed_in.client.post if path.startswith("/admin") else signed_in.client.get
    response = method(path)
    assert response.status_code in (400, 403) if path.startswith("/admin") \
        else response.status_code == 400, (path, response.status_code)
    assert HUGE not in response.text


def test_sign_with_an_out_of_range_report_id_answers_400(signed_in: WebEnv) -> None:
    """A forged form field beyond 64 bits is refused with a page, not a server error."""
    web = signed_in
    seeded = seed_drafted_study(web.database, web.store)
    page = web.client.get(f"/studies/{seeded.study_id}", headers=HTML)
    response = web.client.post(f"/studies/{seeded.study_id}/sign", headers=HTML, data={
        "report_id": HUGE, "findings": "x", "impression": "y",
        "csrf_token": page_csrf(page.text)})
    assert response.status_code == 400 and "report_id" in response.text


def test_search_wildcards_match_themselves(signed_in: WebEnv) -> None:
    """``%`` and ``_`` typed in the worklist search match only those characters."""
    web = signed_in
    for name, accession in [("DOE^JANE", "A100"), ("PER%CENT^ANN", "A200"),
                            ("UNDER_SCORE^BOB", "A300")]:
        seed_study(web.database, patient_name=name, patient_id=f"P-{accession}",
                   accession=accession, state=StudyState.DRAFTED)

    def names(query: str) -> set[str]:
        page = web.client.get("/", params={"q": query}, headers=HTML).text
        return {n for n in ("DOE", "PER%CENT", "UNDER_SCORE") if n in page}

    assert names("%") == {"PER%CENT"}
    assert names("_") == {"UNDER_SCORE"}
    assert names("a_0") == set()
    assert names("doe") == {"DOE"}


def test_a_database_error_is_answered_cleanly_and_logs_no_search_text(
        signed_in: WebEnv, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A NUL byte in the worklist search (PostgreSQL refuses it) answers 400 with a page,
    so does QIDO-RS; no log record carries the typed patient name."""
    caplog.set_level(logging.DEBUG)
    typed = "SMITH\x00SECRETNAME"
    response = signed_in.client.get("/", params={"q": typed}, headers=HTML)
    dicomweb = signed_in.client.get("/dicomweb/studies", params={"PatientName": typed})
    if database_url.startswith("postgresql"):
        assert response.status_code == 400
        assert "cannot store or search" in response.text
        assert "SECRETNAME" not in response.text
        assert any(r.getMessage() == "database_error" for r in caplog.records)
    else:  # SQLite stores and compares NUL bytes: an ordinary empty result
        assert response.status_code == 200
    assert dicomweb.status_code in (204, 400) if database_url.startswith("postgresql") \
        else dicomweb.status_code == 204
    for record in caplog.records:
        if record.name.startswith(("httpx", "httpcore")):  # the test's own client
            continue
        text = record.getMessage() + repr(record.__dict__)
        assert "SECRETNAME" not in text and "SMITH" not in text, record.getMessage()


def test_database_errors_never_carry_statement_parameters(web: WebEnv) -> None:
    """Every engine hides its parameters: a failing statement's error names the SQL only."""
    with pytest.raises(DBAPIError) as raised, web.database.engine.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table WHERE name = :name"),
                           {"name": "DOE^SECRETNAME"})
    assert "SECRETNAME" not in str(raised.value)
    assert "parameters hidden" in str(raised.value)
