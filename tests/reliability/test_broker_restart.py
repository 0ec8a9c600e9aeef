"""Redis killed and restarted empty under a node and a real ``radnode worker``.

A private redis-server (no persistence) is the broker. It is killed with SIGKILL
while jobs wait on it, then started again with nothing in it: the worker
reconnects, the node's reconciler finds the QUEUED jobs in the database and
enqueues them again, and every study ends DRAFTED with exactly one report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.db.models import Job, Report, Study
from node.runtime import NodeServices
from node.states import JobState, StudyState
from tests.conftest import DEMO_BUNDLE_DIR, make_settings
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicom_net import store_successes, storescu, wait_for
from tests.integration.test_jobs import FAST_JOBS, WorkerProcess
from tests.reliability.hostile_scu import record_figures
from tests.reliability.private_services import PrivateRedis, private_redis

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.dcmtk, pytest.mark.usefixtures("dcmtk_installed",
                                                          "demo_bundle_built")]

STUDIES = 8


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as server:
        yield server


def _counts(node: NodeServices) -> tuple[dict[str, StudyState], dict[int, int], list[Job]]:
    with node.database.sessions() as session:
        states = {s.study_instance_uid: s.state for s in session.scalars(select(Study))}
        reports = dict(session.execute(
            select(Report.study_id, func.count()).group_by(Report.study_id)).all())
        jobs = list(session.scalars(select(Job)))
    return states, reports, jobs


def test_redis_killed_and_restarted_empty_loses_no_job(
    broker: PrivateRedis, postgres_url: str, tmp_path: Path
) -> None:
    """Jobs queued on Redis when it is killed are drafted exactly once after it
    comes back empty."""
    settings = make_settings(
        tmp_path, postgres_url, broker={"url": broker.url}, jobs=FAST_JOBS,
        model={"bundle": str(DEMO_BUNDLE_DIR)},
        assembly={"quiet_seconds": 0.5, "poll_seconds": 0.1},
    )
    files = [
        write_dataset(make_cxr_dataset(rows=128, cols=128, seed=n, patient_id=f"BRK-{n}"),
                      tmp_path / "in" / f"study{n}.dcm")
        for n in range(STUDIES)
    ]
    node = NodeServices.build(settings)
    node.start()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        result = storescu(node.listener.port, files)
        assert store_successes(result) == STUDIES, result.stdout + result.stderr

        def first_drafted() -> bool:
            _, reports, _ = _counts(node)
            return len(reports) >= 1

        wait_for(first_drafted, timeout=180, what="the worker to draft a first study")
        states, reports, _ = _counts(node)
        waiting_when_killed = sum(
            1 for s in states.values() if s in (StudyState.QUEUED, StudyState.DRAFTING))
        broker.kill()
        killed_at = time.monotonic()
        time.sleep(2.0)  # the node and the worker both notice the broker is gone
        broker.start()
        restarted_at = time.monotonic()
        _, reports, _ = _counts(node)
        drafted_at_restart = len(reports)

        def all_drafted() -> bool:
            states, _, _ = _counts(node)
            return len(states) == STUDIES and all(
                s == StudyState.DRAFTED for s in states.values())

        wait_for(all_drafted, timeout=240, what="every study drafted after the restart")
        recovery_seconds = time.monotonic() - restarted_at
        states, reports, jobs = _counts(node)
    finally:
        worker.stop()
        node.stop()

    assert waiting_when_killed >= 1, "the broker was killed with no job waiting"
    assert sorted(reports.values()) == [1] * STUDIES
    assert len(jobs) == STUDIES
    assert all(job.state == JobState.SUCCEEDED for job in jobs)
    log = worker.log_path.read_text(errors="replace")
    succeeded = log.count("workers.jobs: job_succeeded")
    assert succeeded == STUDIES, f"{succeeded} drafts recorded for {STUDIES} jobs"
    record_figures("redis_restart", {
        "studies_sent": STUDIES,
        "acknowledged": store_successes(result),
        "waiting_when_killed": waiting_when_killed,
        "drafted_before_restart": drafted_at_restart,
        "drafted": sum(1 for s in states.values() if s == StudyState.DRAFTED),
        "reports": sum(reports.values()),
        "duplicates": sum(reports.values()) - STUDIES,
        "drafts_run_by_worker": succeeded,
        "redelivered_copies_skipped": log.count("workers.jobs: job_skipped")
        + log.count("workers.jobs: draft_already_recorded"),
        "job_attempts": sorted(job.attempts for job in jobs),
        "outage_seconds": round(restarted_at - killed_at, 1),
        "all_drafted_after_restart_seconds": round(recovery_seconds, 1),
        "requeue_after_seconds": FAST_JOBS["requeue_after_seconds"],
    })
