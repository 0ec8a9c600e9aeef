"""Broker health, destination health and the waiting-work alerts, on the page and in /metrics.

A private redis-server (never the shared one) is filled, read and then killed; a
destination that refuses is a closed port on the loopback interface, tried by the real
export service. Every database test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, update

from node.db.models import DestinationHealth, Job, Report
from node.db.types import utcnow
from node.exports.service import ExportService, note_destination_outcome, queue_exports
from node.states import JobState, Role, StudyState
from tests.conftest import free_port
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    build_web_env,
    fast_password_hashing,
    seed_drafted_study,
    seed_study,
    seed_user,
)
from tests.reliability.private_services import PrivateRedis, private_redis

#: The broker must be shown unreachable within this many seconds of its death
#: (cache 0.5 s + timeout 0.5 s, with room for a loaded machine).
UNREACHABLE_WITHIN_SECONDS = 10.0
#: No page or scrape waits longer than this for a dead broker.
PAGE_BOUND_SECONDS = 5.0


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + labels) + r" (\S+)"
    match = re.search(rf"^{pattern}$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def _admin_env(tmp_path: Path, database_url: str, **sections: object) -> WebEnv:
    env = build_web_env(tmp_path, database_url, **sections)
    seed_user(env.database, "root", Role.ADMIN, display_name="Admin^Ada")
    env.login("root")
    return env


def _queued_job(env: WebEnv, enqueued_at: dt.datetime, accession: str) -> int:
    study = seed_study(env.database, patient_name="DOE^JO", patient_id=f"P-{accession}",
                       accession=accession, state=StudyState.STABLE)
    with env.database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version="2.25.1", state=JobState.QUEUED,
                  attempts=0, enqueued_at=enqueued_at)
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as server:
        yield server


def test_broker_reachable_with_queue_lengths_then_unreachable_within_bound(
        tmp_path: Path, database_url: str, broker: PrivateRedis) -> None:
    with fast_password_hashing():
        env = _admin_env(tmp_path, database_url, broker={
            "url": broker.url, "health_cache_seconds": 0.5, "health_timeout_seconds": 0.5})
    try:
        client = redis.Redis.from_url(broker.url)
        client.rpush("draft", "a", "b", "c")
        client.rpush("draft\x06\x169", "urgent")  # a higher-priority list of the same queue
        client.close()
        for n in range(2):
            _queued_job(env, utcnow(), f"ACC-Q{n}")

        page = env.client.get("/admin/monitoring", headers=HTML).text
        assert 'data-broker-status="reachable"' in page
        assert re.search(r"data-broker-queue>4<", page)
        assert re.search(r"data-db-queued>2<", page)
        metrics = env.client.get("/metrics").text
        assert _metric(metrics, "radnode_broker_up") == 1
        assert _metric(metrics, "radnode_broker_queue_length") == 4
        assert _metric(metrics, "radnode_jobs_queued_in_database") == 2
        assert _metric(metrics, "radnode_alert", '{name="broker_unreachable"}') == 0

        broker.kill()
        killed = time.monotonic()
        while True:
            started = time.monotonic()
            metrics = env.client.get("/metrics").text
            assert time.monotonic() - started < PAGE_BOUND_SECONDS
            if _metric(metrics, "radnode_broker_up") == 0:
                break
            assert time.monotonic() - killed < UNREACHABLE_WITHIN_SECONDS, "still reachable"
            time.sleep(0.2)
        assert _metric(metrics, "radnode_alert", '{name="broker_unreachable"}') == 1
        assert "radnode_broker_queue_length NaN" in metrics
        started = time.monotonic()
        page = env.client.get("/admin/monitoring", headers=HTML).text
        assert time.monotonic() - started < PAGE_BOUND_SECONDS
        assert 'data-broker-status="unreachable"' in page
        assert 'data-alert="broker_unreachable"' in page
        assert re.search(r"data-db-queued>2<", page)
    finally:
        env.close()


def test_refusing_destination_shows_failures_and_oldest_waiting_export(
        tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    closed_port = free_port()
    with fast_password_hashing():
        env = _admin_env(
            tmp_path, database_url,
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": closed_port,
                           "exports": "drafts_and_finals"}],
            exports={"timeout_seconds": 2, "base_delay_seconds": 0},
            alerts={"export_wait_seconds": 300})
    try:
        seeded = seed_drafted_study(env.database, env.store)
        queued_at = utcnow() - dt.timedelta(minutes=10)
        with env.database.sessions.begin() as session:
            report = session.get_one(Report, seeded.report_id)
            queue_exports(session, report, env.settings.destinations, now=queued_at)
        exporter = ExportService.from_settings(env.settings, env.database.sessions, env.store)
        caplog.set_level(logging.INFO, logger="node.operations")
        exporter.deliver_due()
        exporter.deliver_due()

        page = env.client.get("/admin/monitoring", headers=HTML).text
        row = page[page.index('data-destination="PACS"'):]
        row = row[:row.index("</tr>")]
        assert re.search(r"data-failures>2<", row)
        assert re.search(r"data-waiting>1<", row)
        assert re.search(r"data-oldest>1\d min<", row)
        assert "failing" in row and "never" in row  # no delivery yet
        assert 'data-alert="export_wait"' in page

        metrics = env.client.get("/metrics").text
        pacs = '{destination="PACS"}'
        assert _metric(metrics, "radnode_destination_consecutive_failures", pacs) == 2
        assert _metric(metrics, "radnode_destination_exports_waiting", pacs) == 1
        assert _metric(metrics, "radnode_destination_oldest_waiting_export_seconds",
                       pacs) >= 600
        assert _metric(metrics, "radnode_destination_last_failure_timestamp_seconds",
                       pacs) >= queued_at.timestamp()
        assert "radnode_destination_last_success_timestamp_seconds" + pacs + " NaN" in metrics
        assert _metric(metrics, "radnode_alert", '{name="export_wait"}') == 1
        firing = [r for r in caplog.records if r.getMessage() == "alert_firing"]
        assert [getattr(r, "alert", None) for r in firing] == ["export_wait"]  # once
        assert firing[0].levelno == logging.WARNING
    finally:
        env.close()


def test_job_wait_alert_fires_past_the_threshold_and_resolves(
        tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with fast_password_hashing():
        env = _admin_env(tmp_path, database_url, alerts={"job_wait_seconds": 60})
    try:
        caplog.set_level(logging.INFO, logger="node.operations")
        job_id = _queued_job(env, utcnow() - dt.timedelta(seconds=20), "ACC-W")
        metrics = env.client.get("/metrics").text
        assert _metric(metrics, "radnode_alert", '{name="job_wait"}') == 0
        assert 'data-alert="job_wait"' not in env.client.get("/admin/monitoring",
                                                             headers=HTML).text

        with env.database.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                enqueued_at=utcnow() - dt.timedelta(seconds=61)))
        for _ in range(2):
            metrics = env.client.get("/metrics").text
            assert _metric(metrics, "radnode_alert", '{name="job_wait"}') == 1
            assert _metric(metrics, "radnode_job_oldest_waiting_seconds") > 60
        assert 'data-alert="job_wait"' in env.client.get("/admin/monitoring",
                                                         headers=HTML).text
        events = [(r.getMessage(), getattr(r, "alert", None)) for r in caplog.records
                  if r.getMessage().startswith("alert_")]
        assert events == [("alert_firing", "job_wait")]
        [event] = [r for r in caplog.records if r.getMessage() == "alert_firing"]
        assert getattr(event, "threshold_seconds", None) == 60
        assert getattr(event, "value_seconds", 0) > 60

        with env.database.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                state=JobState.SUCCEEDED, finished_at=utcnow()))
        metrics = env.client.get("/metrics").text
        assert _metric(metrics, "radnode_alert", '{name="job_wait"}') == 0
        assert [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("alert_")] == ["alert_firing", "alert_resolved"]
    finally:
        env.close()


def test_a_delivery_ends_the_run_of_failures(tmp_path: Path, database_url: str) -> None:
    with fast_password_hashing():
        env = build_web_env(tmp_path, database_url)
    try:
        now = utcnow()
        with env.database.sessions.begin() as session:
            for n in range(3):
                note_destination_outcome(session, "PACS", now + dt.timedelta(seconds=n),
                                         "connection refused")
        with env.database.sessions.begin() as session:
            note_destination_outcome(session, "PACS", now + dt.timedelta(seconds=5))
        with env.database.sessions() as session:
            row = session.scalars(select(DestinationHealth)).one()
        assert row.consecutive_failures == 0
        assert row.last_success_at == now + dt.timedelta(seconds=5)
        assert row.last_failure_at == now + dt.timedelta(seconds=2)
        assert row.last_error == "connection refused"
    finally:
        env.close()
