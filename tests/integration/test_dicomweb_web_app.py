"""The pixel resources of DICOMweb inside the web app: its login, worker tokens, audit.

Every test runs on SQLite and PostgreSQL against the real app through a test client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.db.models import Instance
from node.states import Role
from node.web.service_auth import issue_service_token
from tests.integration.web_seed import (
    WebEnv,
    audit_events,
    build_web_env,
    seed_drafted_study,
    seed_user,
    user_by_name,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


def _resources(web: WebEnv) -> tuple[str, list[str]]:
    """A drafted study's instance URL and the pixel resources under it."""
    seeded = seed_drafted_study(web.database, web.store, rows=64)
    with web.database.sessions() as session:
        instance = session.scalars(select(Instance).where(
            Instance.id == seeded.instance_ids[0])).one()
        study, series, sop = (seeded.study_uid, instance.series_instance_uid,
                              instance.sop_instance_uid)
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    return base, [
        f"{base}/frames/1", f"{base}/rendered", f"{base}/frames/1/rendered",
        f"{base}/thumbnail", f"/dicomweb/studies/{study}/thumbnail",
        f"/dicomweb/studies/{study}/series/{series}/thumbnail", f"{base}/bulkdata/7FE00010",
        f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
        f"&objectUID={sop}",
    ]


def test_a_signed_in_user_reads_pixels_and_each_read_is_audited(web: WebEnv) -> None:
    _, paths = _resources(web)
    seed_user(web.database, "mcurie")
    web.login("mcurie")
    for path in paths:
        response = web.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store"
    events = audit_events(web.database, "dicomweb_read")
    assert len(events) == len(paths)
    reader = user_by_name(web.database, "mcurie")
    assert {(e.actor, e.user_id) for e in events} == {("mcurie", reader.id)}
    assert [e.details["resource"] for e in events if e.details] == [
        "frames", "rendered", "rendered", "thumbnail", "thumbnail", "thumbnail", "bulkdata",
        "wado_uri"]


def test_anonymous_requests_are_refused(web: WebEnv) -> None:
    _, paths = _resources(web)
    for path in paths:
        assert web.client.get(path).status_code == 401, path
    assert audit_events(web.database, "dicomweb_read") == []


def test_a_worker_token_retrieves_instances_and_nothing_else(web: WebEnv) -> None:
    base, paths = _resources(web)
    with web.database.sessions.begin() as session:
        token = issue_service_token(session, "gpu-host-1", actor="test")
    headers = {"Authorization": f"Bearer {token}"}
    assert web.client.get(base, headers=headers).status_code == 200
    for path in paths:
        assert web.client.get(path, headers=headers).status_code == 403, path
    assert len(audit_events(web.database, "instances_fetched")) == 1
    assert audit_events(web.database, "dicomweb_read") == []  # audited once, as fetched
    assert user_by_name(web.database, "gpu-host-1").role is Role.WORKER


def test_the_configured_size_limits_apply(tmp_path: Path, database_url: str) -> None:
    """``dicom.limits`` of the node's settings, not the defaults, bound what is decoded."""
    web = build_web_env(tmp_path, database_url, dicom={"limits": {"max_pixels": 1000}})
    try:
        base, paths = _resources(web)  # 64 x 64 images: 4096 pixels
        seed_user(web.database, "mcurie")
        web.login("mcurie")
        for path in paths[:-1]:  # WADO-URI last: an image by default
            assert web.client.get(path).status_code == 413, path
        assert web.client.get(paths[-1]).status_code == 413
        assert web.client.get(base).status_code == 200  # the stored file, not decoded
    finally:
        web.close()
