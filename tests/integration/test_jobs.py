"""The job lifecycle with real queues: every stable study drafted exactly once.

The embedded queue runs in the node process; the Redis tests run the node in
this process and real ``radnode worker`` processes beside it, with the demo
model bundle that ``make test`` builds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydicom import dcmread
from sqlalchemy import func, select

from node.config import Settings
from node.db.models import Job, Report, Study
from node.runtime import NodeServices
from node.states import JobState, StudyState
from tests.conftest import REPO_ROOT, make_settings
from tests.dicom_factory import (
    compress_jpeg2000,
    corrupt_pixel_stream,
    make_cxr_dataset,
    write_dataset,
)
from tests.integration.dicom_net import store_successes, storescu, wait_for
from tests.orthanc import running_orthanc

DEMO_BUNDLE = REPO_ROOT / "var" / "models" / "demo"
REDIS_URL = "redis://127.0.0.1:6379/11"
FAST_JOBS = {"lease_seconds": 4, "requeue_after_seconds": 3, "reconcile_seconds": 0.5,
             "retry_backoff_seconds": 0.5, "max_attempts": 3}


def _study_files(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """Write ``count`` single-image PA chest studies; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        ds = make_cxr_dataset(rows=192, cols=192, seed=seed + index,
                              patient_id=f"JOB-{seed + index}")
        paths.append(write_dataset(ds, folder / f"study{index}.dcm"))
    return paths


def _send(port: int, files: list[Path], *flags: str) -> None:
    """Send with storescu and require Success for every file."""
    result = storescu(port, files, *flags)
    assert store_successes(result) == len(files), result.stderr


def _study_states(node: NodeServices) -> dict[str, StudyState]:
    with node.database.sessions() as session:
        return {s.study_instance_uid: s.state for s in session.scalars(select(Study))}


def _reports_per_study(node: NodeServices) -> dict[int, int]:
    with node.database.sessions() as session:
        rows = session.execute(select(Report.study_id, func.count()).group_by(Report.study_id))
        return {study_id: count for study_id, count in rows}


def _all_in(node: NodeServices, state: StudyState, count: int) -> bool:
    states = list(_study_states(node).values())
    return len(states) == count and all(s == state for s in states)


@pytest.fixture
def demo_bundle() -> Path:
    """The demo model bundle built by ``make demo-model``."""
    assert (DEMO_BUNDLE / "manifest.json").is_file(), "run `make demo-model` first"
    return DEMO_BUNDLE


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """A Redis database of its own, empty before and after the test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class WorkerProcess:
    """A ``radnode worker`` subprocess with the node's settings in its environment."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.env = {
            **os.environ,
            "RADNODE_DATABASE__URL": settings.database.url,
            "RADNODE_BROKER__URL": settings.broker.url,
            "RADNODE_STORAGE__ROOT": str(settings.storage.root),
            "RADNODE_MODEL__BUNDLE": str(settings.model.bundle),
            "RADNODE_WORKER__DEVICE": "cpu",
            "RADNODE_LOGGING__FORMAT": "text",
            "RADNODE_JOBS__MAX_ATTEMPTS": str(settings.jobs.max_attempts),
            "RADNODE_JOBS__RETRY_BACKOFF_SECONDS": str(settings.jobs.retry_backoff_seconds),
            "RADNODE_JOBS__LEASE_SECONDS": str(settings.jobs.lease_seconds),
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "worker", "--concurrency", "1"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_settings(tmp_path: Path, postgres_url: str, redis_db: redis.Redis,
                   demo_bundle: Path) -> Settings:
    """Node settings on PostgreSQL and Redis with short leases."""
    return make_settings(
        tmp_path, postgres_url,
        broker={"url": REDIS_URL},
        jobs=FAST_JOBS,
        model={"bundle": str(demo_bundle)},
        assembly={"quiet_seconds": 0.5, "poll_seconds": 0.1},
    )


@pytest.fixture
def redis_node(redis_settings: Settings) -> Iterator[NodeServices]:
    """A node that queues on Redis (it drafts nothing itself)."""
    services = NodeServices.build(redis_settings)
    services.start()
    yield services
    services.stop()


@pytest.fixture
def worker(redis_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker process (not started); stopped after the test."""
    process = WorkerProcess(redis_settings, tmp_path / "worker.log")
    yield process
    process.stop()


def test_embedded_queue_drafts_and_delivers_the_draft_sr(tmp_path: Path, database_url: str,
                                                       demo_bundle: Path) -> None:
    """With no broker, a study sent by storescu ends DRAFTED with one report whose
    draft SR is stored and delivered to the configured PACS (a real Orthanc)."""
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            tmp_path, database_url, model={"bundle": str(demo_bundle)},
            assembly={"quiet_seconds": 0.5, "poll_seconds": 0.1},
            destinations=[{"ae_title": orthanc.aet, "host": "127.0.0.1",
                           "port": orthanc.dicom_port, "exports": "drafts_and_finals"}],
            exports={"period_seconds": 0.2},
        )
        services = NodeServices.build(settings)
        services.start()
        try:
            _send(services.listener.port, _study_files(tmp_path / "in", 1))
            wait_for(lambda: _all_in(services, StudyState.DRAFTED, 1), timeout=120,
                     what="the study to be drafted")
            assert list(_reports_per_study(services).values()) == [1]
            with services.database.sessions() as session:
                report = session.scalars(select(Report)).one()
            assert report.findings.strip(), "a draft has findings text"
            assert report.model_name and report.device_uid
            assert report.sr_path and services.store.absolute(report.sr_path).is_file()
            sr = dcmread(services.store.absolute(report.sr_path))
            assert sr.SOPInstanceUID == report.sop_instance_uid
            assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
            assert (report.sr_verification_flag, report.sr_completion_flag,
                    report.sr_series_description, report.sr_series_number,
                    report.sr_content_date) == ("UNVERIFIED", "PARTIAL", sr.SeriesDescription,
                                                int(sr.SeriesNumber), sr.ContentDate)
            wait_for(lambda: report.sop_instance_uid in orthanc.sop_instance_uids(),
                     timeout=30, what="the draft SR in Orthanc")
        finally:
            services.stop()


def test_worker_drafts_studies_from_redis(redis_node: NodeServices, worker: WorkerProcess,
                                          tmp_path: Path) -> None:
    """Studies queued on Redis are drafted by a worker process, one report each."""
    worker.start()
    _send(redis_node.listener.port, _study_files(tmp_path / "in", 2))
    wait_for(lambda: _all_in(redis_node, StudyState.DRAFTED, 2), timeout=180,
               what="both studies drafted")
    assert sorted(_reports_per_study(redis_node).values()) == [1, 1]


def test_killed_worker_job_is_drafted_exactly_once(redis_node: NodeServices,
                                                   worker: WorkerProcess,
                                                   tmp_path: Path) -> None:
    """kill -9 of the worker mid-job: after a restart the job is drafted once."""
    worker.start()
    _send(redis_node.listener.port, _study_files(tmp_path / "in", 1))

    def running_job() -> Job | None:
        with redis_node.database.sessions() as session:
            return session.scalars(select(Job).where(Job.state == JobState.RUNNING)).first()

    wait_for(running_job, timeout=60, what="the job to start")
    worker.kill()  # the model is still loading: the job is mid-flight
    with redis_node.database.sessions() as session:
        assert session.scalars(select(Report)).first() is None
    worker.start()
    wait_for(lambda: _all_in(redis_node, StudyState.DRAFTED, 1), timeout=180,
               what="the study to be drafted after the restart")
    assert list(_reports_per_study(redis_node).values()) == [1]
    with redis_node.database.sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.state == JobState.SUCCEEDED
        assert job.attempts == 2


def test_flushed_redis_loses_no_job(redis_node: NodeServices, worker: WorkerProcess,
                                    redis_db: redis.Redis, tmp_path: Path) -> None:
    """Jobs queued when Redis is flushed are found in the database and drafted."""
    _send(redis_node.listener.port, _study_files(tmp_path / "in", 3))
    wait_for(lambda: _all_in(redis_node, StudyState.QUEUED, 3), timeout=30,
               what="three queued studies")
    assert redis_db.llen("draft") == 3
    redis_db.flushdb()
    worker.start()
    wait_for(lambda: _all_in(redis_node, StudyState.DRAFTED, 3), timeout=240,
               what="all studies drafted after the flush")
    assert sorted(_reports_per_study(redis_node).values()) == [1, 1, 1]


def test_poison_study_fails_with_reason_while_others_go_on(
    redis_node: NodeServices, worker: WorkerProcess, tmp_path: Path
) -> None:
    """An undecodable image fails its job for good; a good study is still drafted."""
    good = _study_files(tmp_path / "good", 1, seed=10)
    bad_source = _study_files(tmp_path / "bad", 1, seed=20)[0]
    lossless = compress_jpeg2000(bad_source, tmp_path / "bad" / "j2k.dcm", lossless=True)
    bad = corrupt_pixel_stream(lossless, tmp_path / "bad" / "corrupt.dcm")
    worker.start()
    _send(redis_node.listener.port, [bad], "-xv")
    _send(redis_node.listener.port, good)

    def settled() -> bool:
        states = sorted(s.name for s in _study_states(redis_node).values())
        return states == ["DRAFTED", "FAILED"]

    wait_for(settled, timeout=180, what="one drafted and one failed study")
    with redis_node.database.sessions() as session:
        failed = session.scalars(select(Job).where(Job.state == JobState.FAILED)).one()
        assert failed.error_class == "ImageDecodeError"
        assert failed.error_message and failed.error_traceback
        assert failed.attempts == 1, "a permanent error is not retried"
