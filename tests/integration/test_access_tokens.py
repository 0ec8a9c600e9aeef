"""Personal bearer tokens on DICOMweb, the account page, the CLI, and CORS for viewers.

Every test runs the real app (test client) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text, update

from node.cli.main import main
from node.db.models import AccessToken, AuditEvent, User
from node.db.types import utcnow
from node.states import Role, TokenScope
from node.users import UserError
from node.web.access_tokens import IssuedToken, hash_access_token, issue_access_token
from tests.integration.test_database import _migrate
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    build_web_env,
    seed_drafted_study,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")

VIEWER_ORIGIN = "https://viewer.example"
QIDO = {"Accept": "application/dicom+json"}


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[WebEnv]:
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "web-secret.key"),
        "login_max_failures_per_address": 4, "login_max_failures": 3,
        "token_max_days": 30, "cors_origins": [VIEWER_ORIGIN]})
    yield env
    env.close()


def issue(web: WebEnv, username: str, *, days: float = 7,
          scopes: frozenset[TokenScope] | None = None, max_days: int = 30) -> IssuedToken:
    with web.database.sessions.begin() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        return issue_access_token(session, user, lifetime=dt.timedelta(days=days),
                                  max_days=max_days, scopes=scopes, actor="test",
                                  now=utcnow())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **QIDO}


def test_a_radiologists_token_reads_dicomweb_audited_and_stored_only_as_a_hash(
        web: WebEnv) -> None:
    seeded = seed_drafted_study(web.database, web.store)
    user_id = seed_user(web.database, "mcurie")
    issued = issue(web, "mcurie")
    assert issued.token.startswith("rnp_") and len(issued.token) > 40

    found = web.client.get("/dicomweb/studies", headers=bearer(issued.token))
    assert found.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [seeded.study_uid]
    study = web.client.get(f"/dicomweb/studies/{seeded.study_uid}",
                           headers={"Authorization": f"Bearer {issued.token}"})
    assert study.status_code == 200
    assert study.headers["content-type"].startswith("multipart/related")

    reads = audit_events(web.database, "dicomweb_read")
    assert [(e.actor, e.user_id, e.object_id) for e in reads] == [
        ("mcurie", user_id, None), ("mcurie", user_id, seeded.study_uid)]
    assert {e.details["via"] for e in reads} == {"token"}  # type: ignore[index]
    assert {e.details["token_id"] for e in reads} == {issued.token_id}  # type: ignore[index]
    with web.database.sessions() as session:
        row = session.get_one(AccessToken, issued.token_id)
        assert row.token_hash == hash_access_token(issued.token)
        assert issued.token not in row.token_hash
        assert row.last_used_at is not None
        assert row.scopes == ["dicomweb-read"]


def test_a_token_is_no_login_for_the_pages(web: WebEnv) -> None:
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "root", Role.ADMIN, display_name="Admin^Ada")
    token = issue(web, "root").token
    for path in ("/", f"/studies/{seeded.study_id}", "/admin/triage", "/account",
                 "/api/worklist/counts"):
        response = web.client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, path
    # The cookie-less POST of a page is refused the same way.
    response = web.client.post("/account/tokens", data={"days": 1},
                               headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_revoked_expired_and_deactivated_tokens_stop_at_once(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    user_id = seed_user(web.database, "mdoe", display_name="Doe^Mary")
    revoked, expired, holder_off = (issue(web, "mcurie"), issue(web, "mcurie"),
                                    issue(web, "mdoe"))
    for issued in (revoked, expired, holder_off):
        assert web.client.get("/dicomweb/studies",
                              headers=bearer(issued.token)).status_code == 204

    assert main_revoke(web, revoked.token_id)
    with web.database.sessions.begin() as session:
        session.execute(update(AccessToken).where(AccessToken.id == expired.token_id)
                        .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        session.execute(update(User).where(User.id == user_id).values(active=False))
    for issued in (revoked, expired, holder_off):
        response = web.client.get("/dicomweb/studies", headers=bearer(issued.token))
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    refused = audit_events(web.database, "access_token_refused")
    assert [(e.object_id, e.details["reason"]) for e in refused] == [  # type: ignore[index]
        (str(revoked.token_id), "revoked"), (str(expired.token_id), "expired"),
        (str(holder_off.token_id), "inactive")]


def main_revoke(web: WebEnv, token_id: int) -> bool:
    from node.web.access_tokens import revoke_access_token

    with web.database.sessions.begin() as session:
        return revoke_access_token(session, token_id, actor="test", now=utcnow())


def test_tokens_follow_a_lowered_role_and_never_exceed_it(web: WebEnv) -> None:
    user_id = seed_user(web.database, "mcurie")
    with pytest.raises(UserError, match="may not hold a token for dicomweb-store"):
        issue(web, "mcurie", scopes=frozenset({TokenScope.DICOMWEB_STORE}))
    token = issue(web, "mcurie").token
    assert web.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 204

    with web.database.sessions.begin() as session:  # now an uploader: reads nothing
        session.execute(update(User).where(User.id == user_id).values(role=Role.UPLOADER))
    response = web.client.get("/dicomweb/studies", headers=bearer(token))
    assert response.status_code == 403
    assert [e.details["scope"] for e in  # type: ignore[index]
            audit_events(web.database, "access_token_out_of_scope")] == ["dicomweb-read"]
    with web.database.sessions.begin() as session:  # raised again: the token reads again
        session.execute(update(User).where(User.id == user_id).values(role=Role.RADIOLOGIST))
    assert web.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 204


def test_every_token_expires_within_the_site_maximum(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    seed_user(web.database, "gpu", Role.WORKER, display_name="Worker^Gpu")
    with pytest.raises(UserError, match="at most 30 days"):
        issue(web, "mcurie", days=31)
    with pytest.raises(UserError, match="at most 30 days"):
        issue(web, "mcurie", days=0)
    with pytest.raises(UserError, match="no personal tokens"):
        issue(web, "gpu")
    issued = issue(web, "mcurie", days=30)
    assert dt.timedelta(days=29, hours=23) < issued.expires_at - utcnow() \
        <= dt.timedelta(days=30)


def test_refused_tokens_are_throttled_per_address_like_logins(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    good = issue(web, "mcurie").token
    for number in range(4):
        response = web.client.get("/dicomweb/studies", headers=bearer(f"rnp_guess{number}"))
        assert response.status_code == 401
    for token in ("rnp_guess-more", good, "rnw_worker-guess"):
        response = web.client.get("/dicomweb/studies", headers=bearer(token))
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= 300
    assert len(audit_events(web.database, "access_token_refused")) == 4
    assert len(audit_events(web.database, "bearer_throttled")) == 1
    # The login cookie is another door: a signed-in radiologist still reads.
    web.login("mcurie")
    assert web.client.get("/dicomweb/studies", headers=QIDO).status_code == 204


def test_session_reads_of_dicomweb_are_audited_too(web: WebEnv) -> None:
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    assert web.client.get(f"/dicomweb/studies/{seeded.study_uid}/metadata",
                          headers=QIDO).status_code == 200
    assert web.client.get("/dicomweb/studies", headers=QIDO).status_code == 200
    metadata, search = audit_events(web.database, "dicomweb_read")
    assert (metadata.actor, metadata.object_id) == ("mcurie", seeded.study_uid)
    assert metadata.details == {"resource": "metadata", "instances": 2,  # image and draft SR
                                "client": "testclient", "via": "session"}
    assert (search.actor, search.object_id) == ("mcurie", None)
    assert search.details == {"client": "testclient", "route": "dicomweb_search_studies",
                              "via": "session"}


def _token_in(html: str) -> str:
    match = re.search(r'value="(rnp_[A-Za-z0-9_-]+)"', html)
    assert match, "no token on the page"
    return match.group(1)


def test_account_page_creates_lists_and_revokes_the_users_own_tokens(web: WebEnv) -> None:
    seed_user(web.database, "other", display_name="Other^Olga")
    foreign = issue(web, "other")
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")

    page = web.client.get("/account", headers=HTML)
    assert page.status_code == 200 and "No tokens yet" in page.text
    created = web.client.post("/account/tokens", data={
        "csrf_token": csrf, "days": 7, "label": "viewer laptop", "scope": "dicomweb-read"})
    assert created.status_code == 201
    token = _token_in(created.text)
    assert web.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 204
    listing = web.client.get("/account", headers=HTML).text
    assert "viewer laptop" in listing and token not in listing  # shown once only

    too_long = web.client.post("/account/tokens", data={"csrf_token": csrf, "days": 31})
    assert too_long.status_code == 400 and "at most 30 days" in too_long.text
    wrong_scope = web.client.post("/account/tokens", data={
        "csrf_token": csrf, "days": 1, "scope": "dicomweb-store"})
    assert wrong_scope.status_code == 400
    no_csrf = web.client.post("/account/tokens", data={"days": 1})
    assert no_csrf.status_code == 403

    [mine] = [t for t in web_tokens(web) if t.label == "viewer laptop"]
    assert web.client.post(f"/account/tokens/{foreign.token_id}/revoke",
                           data={"csrf_token": csrf}).status_code == 404
    revoked = web.client.post(f"/account/tokens/{mine.id}/revoke", data={"csrf_token": csrf})
    assert revoked.status_code == 303
    assert web.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 401
    assert web.client.get("/dicomweb/studies",
                          headers=bearer(foreign.token)).status_code == 204
    assert [e.actor for e in audit_events(web.database, "access_token_issued")] == [
        "test", "mcurie"]
    assert [e.object_id for e in audit_events(web.database, "access_token_revoked")] == [
        str(mine.id)]


def web_tokens(web: WebEnv) -> list[AccessToken]:
    with web.database.sessions() as session:
        return list(session.scalars(select(AccessToken)))


def test_an_uploader_signs_in_to_the_account_page_only(web: WebEnv) -> None:
    seed_drafted_study(web.database, web.store, patient_name="SECRET^NAME")
    seed_user(web.database, "import", Role.UPLOADER, display_name="Import^Station")
    page = web.client.get("/login")
    from tests.integration.web_seed import PASSWORD, form_csrf

    response = web.client.post("/login", data={
        "username": "import", "password": PASSWORD, "csrf_token": form_csrf(page.text),
        "next": "/"})
    assert response.headers["location"] == "/account"
    assert web.client.get("/account", headers=HTML).status_code == 200
    for path in ("/", "/admin/triage", "/dicomweb/studies"):
        response = web.client.get(path, headers=HTML)
        assert response.status_code == 403, path
        assert "SECRET" not in response.text


def test_cli_issues_lists_and_revokes_tokens(web: WebEnv, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("RADNODE_DATABASE__URL", web.settings.database.url)
    monkeypatch.setenv("RADNODE_WEB__TOKEN_MAX_DAYS", "14")
    seed_user(web.database, "mcurie")
    assert main(["token", "issue", "--user", "mcurie", "--expires", "15d"]) == 2
    assert "at most 14 days" in capsys.readouterr().err
    assert main(["token", "issue", "--user", "mcurie", "--expires", "forever"]) == 2
    assert main(["token", "issue", "--user", "mcurie", "--expires", "2w",
                 "--name", "desk", "--output", str(tmp_path / "t")]) == 0
    token = (tmp_path / "t").read_text().strip()
    assert token.startswith("rnp_") and token not in capsys.readouterr().out
    assert web.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 204

    assert main(["token", "list"]) == 0
    listed = capsys.readouterr().out
    assert "mcurie" in listed and "desk" in listed and token not in listed
    [row] = web_tokens(web)
    assert main(["token", "revoke", str(row.id)]) == 0
    assert main(["token", "revoke", str(row.id)]) == 2
    assert web.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 401

    assert main(["user", "role", "mcurie", "uploader"]) == 0
    with web.database.sessions() as session:
        assert session.scalars(select(User.role).where(User.username == "mcurie")).one() \
            is Role.UPLOADER
        assert session.scalars(select(AuditEvent.action)
                               .where(AuditEvent.action == "user_role_changed")).all()


# -- CORS -------------------------------------------------------------------------------------


def test_cors_preflight_allows_the_configured_viewer_origin_on_dicomweb_only(
        web: WebEnv) -> None:
    preflight = {"Origin": VIEWER_ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization, accept"}
    answer = web.client.options("/dicomweb/studies", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in answer.headers
    wado_uri = web.client.options("/dicomweb/wado", headers=preflight)
    assert wado_uri.headers["access-control-allow-origin"] == VIEWER_ORIGIN

    other = web.client.options("/dicomweb/studies",
                               headers={**preflight, "Origin": "https://evil.example"})
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    for path in ("/login", "/account", "/api/worklist/counts", "/viewer/"):
        page = web.client.options(path, headers=preflight)
        assert "access-control-allow-origin" not in page.headers, path


def test_cors_answers_expose_what_a_viewer_reads(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    token = issue(web, "mcurie").token
    answer = web.client.get("/dicomweb/studies",
                            headers={**bearer(token), "Origin": VIEWER_ORIGIN})
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    assert "warning" in answer.headers["access-control-expose-headers"].lower()
    refused = web.client.get("/dicomweb/studies",
                             headers={**bearer("rnp_nope"), "Origin": VIEWER_ORIGIN})
    assert refused.status_code == 401  # the viewer can read why
    assert refused.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    evil = web.client.get("/dicomweb/studies",
                          headers={**bearer(token), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


def test_no_cors_headers_without_configured_origins(tmp_path: Path, database_url: str) -> None:
    env = build_web_env(tmp_path, database_url)
    try:
        answer = env.client.options("/dicomweb/studies", headers={
            "Origin": VIEWER_ORIGIN, "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in answer.headers
        answer = env.client.get("/dicomweb/studies", headers={"Origin": VIEWER_ORIGIN})
        assert answer.status_code == 401
        assert "access-control-allow-origin" not in answer.headers
    finally:
        env.close()


def test_downgrade_below_tokens_leaves_uploaders_deactivated_radiologists(
        web: WebEnv) -> None:
    """Revision 0014 down: the tokens go, an uploader cannot load as a role the older
    schema lacks, and does not gain the worklist either (deactivated)."""
    seed_user(web.database, "mcurie")
    uploader_id = seed_user(web.database, "import", Role.UPLOADER, display_name="Imp^Ort")
    issue(web, "import")
    _migrate(web.database, "0013", down=True)
    with web.database.engine.connect() as connection:
        assert "access_tokens" not in inspect(connection).get_table_names()
        rows = connection.execute(text("SELECT username, role, active FROM users "
                                       "ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [("mcurie", "RADIOLOGIST", True),
                                            ("import", "RADIOLOGIST", False)]
    _migrate(web.database, "head", down=False)
    with web.database.sessions() as session:
        assert session.get_one(User, uploader_id).role is Role.RADIOLOGIST


def test_a_token_reads_pixels_and_wado_uri_audited_per_study(web: WebEnv) -> None:
    from tests.integration.test_dicomweb_web_app import _resources

    _, paths = _resources(web)
    seed_user(web.database, "mcurie")
    issued = issue(web, "mcurie")
    for path in paths:
        response = web.client.get(path, headers={"Authorization": f"Bearer {issued.token}"})
        assert response.status_code == 200, path
    events = audit_events(web.database, "dicomweb_read")
    assert len(events) == len(paths)
    assert {(e.actor, e.details["via"], e.details["token_id"])  # type: ignore[index]
            for e in events} == {("mcurie", "token", issued.token_id)}


def test_the_configuration_page_shows_the_viewer_origins_and_token_limit(web: WebEnv) -> None:
    seed_user(web.database, "root", Role.ADMIN, display_name="Admin^Ada")
    web.login("root")
    page = web.client.get("/admin/config", headers=HTML)
    assert page.status_code == 200
    assert VIEWER_ORIGIN in page.text and "expire within 30 days" in page.text
