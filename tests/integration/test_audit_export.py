"""Audit trail export: ``radnode audit export`` and the admin download, on both databases."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from node.cli.main import main
from node.db.models import AuditEvent
from node.states import Role
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    seed_user,
)

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


pytestmark = pytest.mark.usefixtures("fast_hashing")


@pytest.fixture
def web(web: WebEnv) -> WebEnv:
    with web.database.sessions.begin() as session:
        for day, (actor, action) in enumerate([
            ("ae:CR_ROOM1", "instance_received"), ("mcurie", "study_viewed"),
            ("=HYPERLINK(\"x\")", "login_failed"), ("mcurie", "report_signed"),
        ]):
            session.add(AuditEvent(at=T0 + dt.timedelta(days=day), actor=actor, action=action,
                                   object_type="study", object_id=str(day), study_id=None,
                                   details={"day": day}))
    return web


@pytest.fixture
def cli_env(web: WebEnv, monkeypatch: pytest.MonkeyPatch) -> WebEnv:
    monkeypatch.setenv("RADNODE_DATABASE__URL", web.settings.database.url)
    monkeypatch.setenv("RADNODE_STORAGE__ROOT", str(web.settings.storage.root))
    return web


def test_cli_exports_a_time_range_as_csv_and_jsonl(
    cli_env: WebEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--since`` is inclusive, ``--until`` exclusive; formulas are defused in CSV; the
    export is itself audited with its range and count."""
    out_csv = tmp_path / "audit.csv"
    assert main(["audit", "export", "--since", "2026-03-02", "--until",
                 "2026-03-04T08:00:00Z", "--format", "csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 audit events of ") and " written to " in out
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert [r["action"] for r in rows] == ["study_viewed", "login_failed"]  # 03-04 08:00 out
    assert rows[1]["actor"] == "'=HYPERLINK(\"x\")"
    assert rows[0]["at"] == "2026-03-02T08:00:00+00:00"
    assert json.loads(rows[0]["details"]) == {"day": 1}

    out_jsonl = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--until", "2026-03-02", "--format", "jsonl",
                 str(out_jsonl)]) == 0
    records = [json.loads(line) for line in out_jsonl.read_text(encoding="utf-8").splitlines()]
    assert [(r["action"], r["actor"], r["details"]) for r in records] == [
        ("instance_received", "ae:CR_ROOM1", {"day": 0})]

    exports = audit_events(cli_env.database, "audit_exported")
    assert [(e.actor, (e.details or {})["format"], (e.details or {})["events"])
            for e in exports] == [("cli", "csv", 2), ("cli", "jsonl", 1)]
    assert (exports[0].details or {})["since"] == "2026-03-02T00:00:00+00:00"


def test_cli_refuses_a_bad_range_with_a_clear_message(
    cli_env: WebEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable date or an empty range exits 2, names the problem, writes nothing."""
    out = tmp_path / "audit.csv"
    assert main(["audit", "export", "--since", "last tuesday", str(out)]) == 2
    assert "--since must be an ISO 8601 date" in capsys.readouterr().err
    assert main(["audit", "export", "--since", "2026-03-03", "--until", "2026-03-01",
                 str(out)]) == 2
    assert "--until must be later than --since" in capsys.readouterr().err
    assert not out.exists()
    assert audit_events(cli_env.database, "audit_exported") == []


def test_only_admins_download_and_the_download_is_audited(web: WebEnv) -> None:
    """Anonymous: 401; radiologist: 403; admin: a CSV attachment that already holds the
    admin's own export event."""
    url = "/admin/audit/export"
    assert web.client.get(url).status_code == 401
    seed_user(web.database, "mcurie")
    csrf = web.login("mcurie")
    assert web.client.get(url).status_code == 403
    assert web.client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    admin_id = seed_user(web.database, "admin", Role.ADMIN, display_name="Admin^Ada")
    web.login("admin")
    response = web.client.get(url, params={"since": "2026-03-03", "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    actions = [r["action"] for r in rows]
    assert actions[:2] == ["login_failed", "report_signed"]
    assert "instance_received" not in actions and "audit_exported" in actions
    events = audit_events(web.database, "audit_exported")
    assert [(e.user_id, (e.details or {})["via"]) for e in events] == [(admin_id, "web")]

    jsonl = web.client.get(url, params={"until": "2026-03-02", "format": "jsonl"})
    assert jsonl.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(line)["action"] for line in jsonl.text.splitlines()] == [
        "instance_received"]
    bad = web.client.get(url, params={"since": "yesterday"}, headers=HTML)
    assert bad.status_code == 400 and "ISO 8601" in bad.text
    assert web.client.get(url, params={"format": "xml"}).status_code == 400
