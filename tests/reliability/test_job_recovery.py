"""Recovery in seconds from worker, broker and model faults, with real processes.

Real ``radnode worker`` processes on a private redis-server and PostgreSQL, an
in-process node (SCP, assembly, reconciler) and DCMTK ``storescu``; the embedded node is a
``radnode serve`` subprocess on SQLite. Heartbeats are short (0.5 s) and every job lease
and re-queue backstop is long (``lease_seconds`` and ``requeue_after_seconds`` far above
the bounds), so each recovery below comes from the mechanism it names, not from a timer.
Each scenario's times go to ``test-artifacts/reliability/recovery_*.json``
(``bench/recovery.py`` collects them).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from node.config import BrokerSettings, Settings
from node.db.models import Job
from node.jobs.queue import CeleryWorkQueue
from node.runtime import NodeServices
from node.states import JobState
from tests.conftest import DEMO_BUNDLE_DIR, REPO_ROOT, make_settings
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicom_net import store_successes, storescu, wait_for
from tests.reliability.hostile_scu import record_figures
from tests.reliability.private_services import PrivateRedis, private_redis
from tests.reliability.recovery_parts import (
    HEARTBEAT_SECONDS,
    DraftingWorker,
    EmbeddedNode,
    Probe,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.dcmtk, pytest.mark.usefixtures("dcmtk_installed",
                                                          "demo_bundle_built")]

LONG = 900.0
"""Leases and re-queue ages far beyond every bound: recovery must not wait for them."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as server:
        yield server


def _settings(tmp_path: Path, database_url: str, broker_url: str, *,
              lost_after: float) -> Settings:
    return make_settings(
        tmp_path, database_url, broker={"url": broker_url},
        jobs={"lease_seconds": LONG, "requeue_after_seconds": LONG, "reconcile_seconds": 0.5,
              "retry_backoff_seconds": 0.5, "max_attempts": 3},
        worker={"heartbeat_seconds": HEARTBEAT_SECONDS, "lost_after_seconds": lost_after},
        model={"bundle": str(DEMO_BUNDLE_DIR)},
        assembly={"quiet_seconds": 0.5, "poll_seconds": 0.1},
    )


def _studies(folder: Path, count: int, seed: int) -> list[Path]:
    return [write_dataset(make_cxr_dataset(rows=128, cols=128, seed=seed + n,
                                           patient_id=f"REC-{seed + n}"),
                          folder / f"study{n}.dcm") for n in range(count)]


def _send(port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert store_successes(result) == len(files), result.stdout + result.stderr


def _running(probe: Probe) -> Job:
    job = wait_for(probe.running_job, timeout=120, what="a worker to claim the job")
    assert job is not None
    return job


def test_worker_killed_mid_draft_restarted_under_its_name_drafts_at_once(
        broker: PrivateRedis, postgres_url: str, tmp_path: Path) -> None:
    """kill -9 mid-draft, restarted as systemd would: the restart releases its previous
    run's job (the lease, 900 s, and the silence bound, 120 s, are not waited for)."""
    settings = _settings(tmp_path, postgres_url, broker.url, lost_after=120)
    node = NodeServices.build(settings)
    node.start()
    probe = Probe(postgres_url)
    first = DraftingWorker(settings, "gpu0", tmp_path / "gpu0-first.log")
    again = DraftingWorker(settings, "gpu0", tmp_path / "gpu0-again.log")
    try:
        first.start()
        probe.wait_ready(first)
        previous = probe.beat_incarnation(first.celery_name)
        _send(node.listener.port, _studies(tmp_path / "in", 1, seed=10))
        job = _running(probe)
        first.kill()
        killed_at = time.monotonic()
        assert probe.job(job.id).state == JobState.RUNNING, "the draft ended before the kill"
        again.start()
        ready_at = probe.wait_ready(again, previous=previous)
        wait_for(lambda: probe.all_drafted(1), timeout=120, what="the study drafted")
        drafted_at = time.monotonic()
        final = probe.job(job.id)
    finally:
        again.stop()
        first.stop()
        node.stop()
        probe.close()
    assert drafted_at - ready_at < 60, f"drafted {drafted_at - ready_at:.1f} s after ready"
    assert "previous_incarnation_jobs_released" in again.log()
    assert probe.reports_per_job() == [1]
    assert (final.state, final.attempts) == (JobState.SUCCEEDED, 2)
    record_figures("recovery_worker_restart", {
        "kill_to_restarted_worker_ready_seconds": round(ready_at - killed_at, 1),
        "ready_to_drafted_seconds": round(drafted_at - ready_at, 1),
        "kill_to_drafted_seconds": round(drafted_at - killed_at, 1),
        "lost_after_seconds": 120, "lease_seconds": LONG,
    })


def test_frozen_worker_loses_its_job_to_another_and_nothing_is_drafted_twice(
        broker: PrivateRedis, postgres_url: str, tmp_path: Path) -> None:
    """SIGSTOP the worker holding a job: the other drafts it within lost_after (3 s) plus
    a pass; resumed, the frozen one's late draft is discarded (one report)."""
    settings = _settings(tmp_path, postgres_url, broker.url, lost_after=3)
    node = NodeServices.build(settings)
    node.start()
    probe = Probe(postgres_url)
    workers = [DraftingWorker(settings, name, tmp_path / f"{name}.log")
               for name in ("gpu0", "gpu1")]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            probe.wait_ready(worker)
        _send(node.listener.port, _studies(tmp_path / "in", 1, seed=20))
        job = _running(probe)
        frozen = next(w for w in workers if (job.worker_name or "").startswith(w.celery_name))
        other = next(w for w in workers if w is not frozen)
        frozen.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert probe.job(job.id).state == JobState.RUNNING, "the draft ended before SIGSTOP"
        wait_for(lambda: probe.all_drafted(1), timeout=120, what="the other worker's draft")
        drafted_at = time.monotonic()
        frozen.signal(signal.SIGCONT)
        wait_for(lambda: "draft_already_recorded" in frozen.log()
                 or "job_skipped" in frozen.log(), timeout=60,
                 what="the resumed worker to finish its late attempt")
        final = probe.job(job.id)
    finally:
        for worker in workers:
            worker.stop()
        node.stop()
        probe.close()
    assert drafted_at - stopped_at < 60, f"drafted {drafted_at - stopped_at:.1f} s after SIGSTOP"
    assert probe.reports_per_job() == [1]
    assert final.state == JobState.SUCCEEDED
    assert (frozen.log() + other.log()).count("workers.jobs: job_succeeded") == 1
    assert "workers.jobs: job_succeeded" in other.log()
    record_figures("recovery_frozen_worker", {
        "sigstop_to_drafted_seconds": round(drafted_at - stopped_at, 1),
        "lost_after_seconds": 3, "heartbeat_seconds": HEARTBEAT_SECONDS,
        "lease_seconds": LONG,
    })


def test_studies_arriving_while_redis_is_down_are_drafted_when_it_returns_empty(
        broker: PrivateRedis, postgres_url: str, tmp_path: Path) -> None:
    """Redis killed, two studies arrive, Redis back empty after ~10 s: every study is
    drafted within 30 s of its return (the re-queue backstop is 900 s)."""
    settings = _settings(tmp_path, postgres_url, broker.url, lost_after=30)
    node = NodeServices.build(settings)
    node.start()
    probe = Probe(postgres_url)
    worker = DraftingWorker(settings, "gpu0", tmp_path / "gpu0.log")
    files = _studies(tmp_path / "in", 2, seed=30)
    try:
        worker.start()
        probe.wait_ready(worker)
        broker.kill()
        killed_at = time.monotonic()
        _send(node.listener.port, files)
        wait_for(lambda: _queued(probe, 2),
                 timeout=60, what="two jobs QUEUED while the broker is down")
        time.sleep(max(0.0, 10 - (time.monotonic() - killed_at)))
        broker.start()
        back_at = time.monotonic()
        wait_for(lambda: not _queued(probe, 2), timeout=120, what="a job claimed again")
        claimed_at = time.monotonic()
        wait_for(lambda: probe.all_drafted(2), timeout=120, what="every study drafted")
        drafted_at = time.monotonic()
    finally:
        worker.stop()
        node.stop()
        probe.close()
    assert drafted_at - back_at < 30, f"drafted {drafted_at - back_at:.1f} s after the return"
    assert probe.reports_per_job() == [1, 1]
    assert worker.log().count("workers.jobs: job_succeeded") == 2
    record_figures("recovery_redis_outage", {
        "outage_seconds": round(back_at - killed_at, 1),
        "studies_during_outage": 2,
        "return_to_first_claim_seconds": round(claimed_at - back_at, 1),
        "return_to_all_drafted_seconds": round(drafted_at - back_at, 1),
        "requeue_after_seconds": LONG,
    })


def _queued(probe: Probe, count: int) -> bool:
    with probe.session() as session:
        jobs = list(session.scalars(select(Job)))
    return len(jobs) == count and all(job.state == JobState.QUEUED for job in jobs)


def test_embedded_node_killed_mid_draft_drafts_at_once_after_restart(tmp_path: Path) -> None:
    """``radnode serve`` (in-process queue, SQLite) killed -9 mid-draft and started again:
    its previous run's job is taken up again within 30 s of the restarted node listening
    (once its worker thread has loaded the model; the silence bound is 300 s) and drafted
    once."""
    database_url = f"sqlite:///{tmp_path / 'node.db'}"
    node = EmbeddedNode(tmp_path, database_url, DEMO_BUNDLE_DIR)
    probe = Probe(database_url)
    try:
        node.start()
        node.wait_listening()
        _send(node.dicom_port, _studies(tmp_path / "in", 1, seed=40))
        job = _running(probe)
        node.kill()
        assert probe.job(job.id).state == JobState.RUNNING, "the draft ended before the kill"
        node.start()
        listening_at = node.wait_listening()
        wait_for(lambda: probe.job(job.id).attempts == 2, timeout=120,
                 what="the job taken up again")
        retaken_at = time.monotonic()
        wait_for(lambda: probe.all_drafted(1), timeout=120, what="the study drafted")
        drafted_at = time.monotonic()
        final = probe.job(job.id)
    finally:
        node.stop()
        probe.close()
    assert retaken_at - listening_at < 30, (
        f"taken up {retaken_at - listening_at:.1f} s after the node listened")
    assert probe.reports_per_job() == [1]
    assert (final.state, final.attempts) == (JobState.SUCCEEDED, 2)
    record_figures("recovery_embedded_restart", {
        "listening_to_taken_up_seconds": round(retaken_at - listening_at, 1),
        "listening_to_drafted_seconds": round(drafted_at - listening_at, 1),
        "lost_after_seconds": 300,
    })


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_worker_without_a_usable_model_exits_before_taking_a_task(
        broker: PrivateRedis, tmp_path: Path, damage: str) -> None:
    """A wrong bundle path, or a bundle whose encoder is cut short: the worker exits
    non-zero with one line naming the path, and the waiting task stays on the queue."""
    if damage == "missing":
        bundle = tmp_path / "models" / "nowhere"
    else:
        bundle = tmp_path / "models" / "cut"
        shutil.copytree(DEMO_BUNDLE_DIR, bundle)
        encoder = bundle / "encoder.onnx"
        encoder.write_bytes(encoder.read_bytes()[:1000])
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'node.db'}",
                             broker={"url": broker.url}, model={"bundle": str(bundle)})
    queue = CeleryWorkQueue(BrokerSettings(url=broker.url))
    queue.enqueue_draft(4242)
    queue.close()
    env = DraftingWorker(settings, "bad", tmp_path / "bad.log", bundle=bundle).env
    result = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "worker", "--name", "bad"], env=env,
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False)
    output = (result.stdout + result.stderr).strip()
    # A bundle that is not there is a misconfiguration (2, the setting named); one whose
    # model cannot be loaded is a broken model (3).
    assert result.returncode == (2 if damage == "missing" else 3), output
    assert len(output.splitlines()) == 1, output
    assert str(bundle) in output and "Traceback" not in output
    client = redis.Redis.from_url(broker.url)
    try:
        assert client.llen(settings.broker.draft_queue) == 1
    finally:
        client.close()
