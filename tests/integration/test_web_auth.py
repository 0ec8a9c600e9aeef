"""Web app access control: login, logout, cookies, throttling, CSRF, roles, users.

Every test runs on SQLite and PostgreSQL against the real app through a test client.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from node.cli.main import main
from node.config import WebSettings
from node.db.models import User, WebSession
from node.states import Role
from node.users import authenticate
from node.web.auth import safe_next
from node.web.security import SESSION_COOKIE, resolve_secret_key
from tests.integration.web_seed import (
    HTML,
    PASSWORD,
    WebEnv,
    audit_events,
    build_web_env,
    form_csrf,
    seed_drafted_study,
    seed_failed_export,
    seed_failed_job,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")

@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[WebEnv]:
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "web-secret.key"), "login_max_failures": 3})
    yield env
    env.close()


def test_pages_and_api_refuse_anonymous_requests(web: WebEnv) -> None:
    """Browsers are sent to the login page; other clients get 401; no patient data leaks."""
    seeded = seed_drafted_study(web.database, web.store, patient_name="SECRET^NAME")
    for path in ("/", f"/studies/{seeded.study_id}", "/admin/triage", "/admin/monitoring"):
        response = web.client.get(path, headers=HTML)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
        assert "SECRET" not in response.text
    for path in ("/api/worklist/counts", "/dicomweb/studies", f"/studies/{seeded.study_id}/"
                 f"image/{seeded.instance_ids[0]}.png"):
        response = web.client.get(path)
        assert response.status_code == 401
    response = web.client.post(f"/studies/{seeded.study_id}/sign",
                               data={"report_id": seeded.report_id, "findings": "x"})
    assert response.status_code == 401
    assert web.client.get("/healthz").status_code == 200


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(web: WebEnv) -> None:
    """The cookie is HttpOnly and SameSite=Strict; after logout the same cookie is refused."""
    user_id = seed_user(web.database, "mcurie")
    page = web.client.get("/login?next=/admin/config")
    assert 'name="next" value="/admin/config"' in page.text
    response = web.client.post("/login", data={
        "username": "mcurie", "password": PASSWORD, "csrf_token": form_csrf(page.text),
        "next": "https://evil.example/"})
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie_header = next(v for k, v in response.headers.multi_items()
                         if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    flags = cookie_header.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags
    cookie = web.client.cookies.get(SESSION_COOKIE)
    home = web.client.get("/", headers=HTML)
    assert home.status_code == 200 and "Worklist" in home.text
    assert home.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in home.headers["content-security-policy"]
    assert home.headers["x-frame-options"] == "DENY"
    csrf = form_csrf(home.text)
    assert web.client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    web.client.cookies.set(SESSION_COOKIE, cookie or "")
    assert web.client.get("/", headers=HTML).status_code == 303
    with web.database.sessions() as session:
        row = session.scalars(select(WebSession)).one()
        assert row.user_id == user_id and row.ended_at is not None
        assert len(row.token_hash) == 64 and cookie is not None and row.token_hash not in cookie
    assert [e.user_id for e in audit_events(web.database, "login")] == [user_id]
    assert [e.user_id for e in audit_events(web.database, "logout")] == [user_id]


def test_secure_cookies_when_configured(tmp_path: Path, database_url: str) -> None:
    """Behind HTTPS the login cookie is marked Secure."""
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "k"), "secure_cookies": True})
    env.client.base_url = "https://radnode.test"  # type: ignore[assignment]
    try:
        seed_user(env.database, "mcurie")
        page = env.client.get("/login")
        response = env.client.post("/login", data={
            "username": "mcurie", "password": PASSWORD, "csrf_token": form_csrf(page.text)})
        cookie_header = next(v for k, v in response.headers.multi_items()
                             if k == "set-cookie" and v.startswith(SESSION_COOKIE))
        assert "secure" in cookie_header.lower()
    finally:
        env.close()


def test_failed_logins_are_throttled_per_user_and_address(web: WebEnv) -> None:
    """After the allowed failures even the right password gets 429 until the window passes."""
    seed_user(web.database, "mcurie")
    for _ in range(3):
        page = web.client.get("/login")
        response = web.client.post("/login", data={
            "username": "mcurie", "password": "wrong password!", "csrf_token":
            form_csrf(page.text)})
        assert response.status_code == 401
        assert "Unknown username or wrong password" in response.text
    page = web.client.get("/login")
    response = web.client.post("/login", data={
        "username": "mcurie", "password": PASSWORD, "csrf_token": form_csrf(page.text)})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert len(audit_events(web.database, "login_failed")) == 3
    page = web.client.get("/login")  # another username from the same address still may
    seed_user(web.database, "other")
    response = web.client.post("/login", data={
        "username": "other", "password": PASSWORD, "csrf_token": form_csrf(page.text)})
    assert response.status_code == 303


def test_inactive_and_unknown_users_cannot_log_in(web: WebEnv) -> None:
    """Deactivated accounts fail like unknown ones; a deactivated user's login stops working."""
    seed_user(web.database, "gone", active=False)
    for username in ("gone", "nobody"):
        page = web.client.get("/login")
        response = web.client.post("/login", data={
            "username": username, "password": PASSWORD, "csrf_token": form_csrf(page.text)})
        assert response.status_code == 401
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    with web.database.sessions.begin() as session:
        session.scalars(select(User).where(User.username == "mcurie")).one().active = False
    assert web.client.get("/", headers=HTML).status_code == 303


def test_login_form_needs_its_csrf_token(web: WebEnv) -> None:
    """A login POST without the token from the login page is refused."""
    seed_user(web.database, "mcurie")
    response = web.client.post("/login", data={"username": "mcurie", "password": PASSWORD})
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


def test_posts_need_the_csrf_token_and_same_origin(web: WebEnv) -> None:
    """Sign-off without the login's token, or from another origin, is refused."""
    seeded = seed_drafted_study(web.database, web.store)
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    form = {"report_id": seeded.report_id, "findings": "F.", "impression": "I."}
    path = f"/studies/{seeded.study_id}/sign"
    assert web.client.post(path, data=form).status_code == 403
    assert web.client.post(path, data={**form, "csrf_token": "0" * 64}).status_code == 403
    response = web.client.post(path, data={**form, "csrf_token": csrf},
                               headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert audit_events(web.database, "report_signed") == []
    response = web.client.post(path, data={**form, "csrf_token": csrf},
                               headers={"Origin": "http://radnode.test"})
    assert response.status_code == 303


def test_roles_are_enforced_on_the_server(web: WebEnv) -> None:
    """Radiologists get 403 on admin pages and actions; admins cannot sign."""
    seeded = seed_drafted_study(web.database, web.store)
    _, job_id = seed_failed_job(web.database)
    _, export_id = seed_failed_export(web.database, web.store)
    seed_user(web.database, "mcurie")
    seed_user(web.database, "root", Role.ADMIN, display_name="Admin^Ada")
    csrf = web.login("mcurie")
    for path in ("/admin/triage", "/admin/monitoring", "/admin/config"):
        assert web.client.get(path, headers=HTML).status_code == 403
    viewer_query = web.client.get("/dicomweb/studies",
                                  headers={"Accept": "application/dicom+json"})
    assert viewer_query.status_code in (200, 204)
    for path in (f"/admin/jobs/{job_id}/retry", f"/admin/exports/{export_id}/retry"):
        assert web.client.post(path, data={"csrf_token": csrf}).status_code == 403
    assert web.queue.enqueued == []

    web.client.cookies.clear()
    csrf = web.login("root")
    for path in ("/admin/triage", "/admin/monitoring", "/admin/config", "/",
                 f"/studies/{seeded.study_id}"):
        assert web.client.get(path, headers=HTML).status_code == 200, path
    response = web.client.post(f"/studies/{seeded.study_id}/sign", data={
        "csrf_token": csrf, "report_id": seeded.report_id, "findings": "F.",
        "impression": "I."})
    assert response.status_code == 403
    assert audit_events(web.database, "report_signed") == []


def test_secret_key_file_is_generated_once_and_private(tmp_path: Path) -> None:
    """Without a configured key one is generated (mode 0600) and reused."""
    settings = WebSettings(secret_key_file=tmp_path / "var" / "web.key")
    first = resolve_secret_key(settings)
    assert len(first) >= 64
    assert stat.S_IMODE(os.stat(tmp_path / "var" / "web.key").st_mode) == 0o600
    assert resolve_secret_key(settings) == first
    assert resolve_secret_key(WebSettings(secret_key="x" * 40)) == "x" * 40


def test_user_add_command(tmp_path: Path, database_url: str,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """``radnode user add --password-stdin`` creates a user who can then log in."""
    monkeypatch.setenv("RADNODE_DATABASE__URL", database_url)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long passphrase\n"))
    code = main(["user", "add", "mcurie", "--role", "radiologist", "--name", "Curie^Marie",
                 "--organization", "St Elsewhere", "--password-stdin"])
    assert code == 0, capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "add", "other", "--role", "admin", "--name", "Admin^Ada",
                 "--password-stdin"]) == 2
    for weak in ("1234567890", "mcuriemcurie", "Curie^Marie2", "password1234"):
        monkeypatch.setattr("sys.stdin", io.StringIO(weak + "\n"))
        assert main(["user", "add", "mcurie2", "--role", "admin", "--name", "Curie^Marie",
                     "--password-stdin"]) == 2, weak
        assert "too easy to guess" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long passphrase\n"))
    assert main(["user", "add", "MCURIE", "--role", "admin", "--name", "Admin^Ada",
                 "--password-stdin"]) == 2
    assert "taken" in capsys.readouterr().err
    from node.config import load_settings
    from node.runtime import Database

    database = Database.from_settings(load_settings())
    try:
        with database.sessions() as session:
            user = authenticate(session, "mcurie", "a long passphrase")
            assert user is not None and user.role == Role.RADIOLOGIST
            assert user.organization == "St Elsewhere"
            assert user.password_hash.startswith("$argon2id$")
            assert authenticate(session, "mcurie", "wrong") is None
    finally:
        database.engine.dispose()


@pytest.mark.parametrize("target", ["//evil.example/", "/\t/evil.example", "/\\evil.example",
                                    "https://evil.example/", "javascript:alert(1)", ""])
def test_login_redirect_stays_on_this_site(target: str) -> None:
    """The page to return to after login is always a path of this site."""
    assert safe_next(target) == "/"
    assert safe_next("/studies/12?done=signed") == "/studies/12?done=signed"
