"""The web app on a storage volume with no free byte: a real tmpfs of a few MiB, filled.

The storage root (and, for SQLite, the database file) lives on the small volume. Once it
is full, reading goes on (login, worklist, study pages, images), signing a report answers
a clear error page that keeps the typed text, nothing already acknowledged is lost, and
``/readyz`` reports the storage as full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from node.db.models import Report
from node.states import ReportState, Role
from tests.integration.web_seed import (
    HTML,
    PASSWORD,
    WebEnv,
    build_web_env,
    form_csrf,
    page_csrf,
    seed_drafted_study,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (the tests run as root)."""
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                   check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(volume: Path) -> None:
    """Write until the volume has not one byte left."""
    chunk = b"\0" * (1 << 20)
    with open(volume / "filler", "wb", buffering=0) as handle:
        for size in (len(chunk), 4096, 1):
            while True:
                try:
                    handle.write(chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    assert os.statvfs(volume).f_bavail == 0


def _login(env: WebEnv, username: str) -> int:
    page = env.client.get("/login")
    assert page.status_code == 200
    response = env.client.post("/login", data={
        "username": username, "password": PASSWORD, "csrf_token": form_csrf(page.text)})
    return response.status_code


def test_reading_goes_on_and_signing_says_why_not(volume: Path, database_url: str,
                                                   tmp_path: Path) -> None:
    """At 0 bytes free: worklist, study page and image answer to a signed-in user, and a new
    login succeeds (PostgreSQL) or is refused with a clear 503 (SQLite on the full volume:
    no session row can be written); Sign answers 503 with the typed text still in the
    form; the draft is unchanged; /readyz says full."""
    on_volume = database_url.startswith("sqlite")
    if on_volume:
        database_url = f"sqlite:///{volume / 'radnode.db'}"
    env = build_web_env(tmp_path / "node", database_url,
                        storage={"root": str(volume / "storage"), "min_free_mb": 1})
    try:
        seed_user(env.database, "mcurie")
        seed_user(env.database, "admin", Role.ADMIN, display_name="Admin^Ada")
        seeded = seed_drafted_study(env.database, env.store)
        assert _login(env, "mcurie") == 303  # a login from before the volume filled
        fill(volume)

        other = TestClient(env.client.app, base_url="http://radnode.test",
                           follow_redirects=False)
        page = other.get("/login")
        late = other.post("/login", data={"username": "admin", "password": PASSWORD,
                                          "csrf_token": form_csrf(page.text)})
        if on_volume:  # no row can be written: a clear refusal; signed-in users read on
            assert late.status_code == 503 and "storage is full" in late.text
        else:
            assert late.status_code == 303
        worklist = env.client.get("/", headers=HTML)
        assert worklist.status_code == 200 and "DOE" in worklist.text
        study = env.client.get(f"/studies/{seeded.study_id}", headers=HTML)
        assert study.status_code == 200
        image = env.client.get(
            f"/studies/{seeded.study_id}/image/{seeded.instance_ids[0]}.png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        typed = "Findings typed on a full disk: right basal opacity."
        signed = env.client.post(f"/studies/{seeded.study_id}/sign", headers=HTML, data={
            "report_id": str(seeded.report_id), "findings": typed,
            "impression": "Opacity.", "csrf_token": page_csrf(study.text)})
        assert signed.status_code == 503
        assert "storage is full" in signed.text and typed in signed.text
        with env.database.sessions() as session:
            report = session.scalars(select(Report).where(
                Report.study_id == seeded.study_id).order_by(Report.id.desc())).first()
            assert report is not None and report.state == ReportState.DRAFT
            assert report.id == seeded.report_id
        assert report.sr_path is not None and env.store.absolute(report.sr_path).is_file()

        ready = env.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"] == "full"
        assert ready.json()["storage"]["free_bytes"] == 0
    finally:
        env.close()
        with contextlib.suppress(FileNotFoundError):
            (volume / "filler").unlink()
