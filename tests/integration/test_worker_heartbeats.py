"""Worker heartbeats: rows written by worker processes, shown on monitoring and in /metrics.

Every database test runs on SQLite and PostgreSQL. The Celery test starts a real
``radnode worker`` process on Redis and PostgreSQL and watches its row come and go.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from node.db.models import WorkerHeartbeat
from node.db.types import utcnow
from node.runtime import Database, NodeServices
from node.states import Role
from tests.conftest import DEMO_BUNDLE_DIR, REPO_ROOT, free_port, make_settings
from tests.integration.dicom_net import wait_for
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    build_web_env,
    fast_password_hashing,
    seed_user,
)
from workers.heartbeat import DeviceStatus, HeartbeatWriter, InFlightCounter, device_status

REDIS_URL = "redis://127.0.0.1:6379/12"
H100 = DeviceStatus("cuda:0", "NVIDIA H100 80GB HBM3", 30 * 2**30, 80 * 2**30)


def _rows(database: Database) -> list[WorkerHeartbeat]:
    with database.sessions() as session:
        return list(session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.id)))


def _writer(database: Database, name: str, counter: InFlightCounter,
            status: DeviceStatus = H100) -> HeartbeatWriter:
    return HeartbeatWriter(database.sessions, worker_name=name, requested_device="cuda:0",
                           model_name="radnode-demo", model_version="1.0", period_seconds=60,
                           counter=counter, probe=lambda requested: status)


def test_beats_upsert_one_row_per_worker(database: Database) -> None:
    counter = InFlightCounter()
    writer = _writer(database, "radnode-draft-1@gpu-a", counter)
    writer.beat()
    [first] = _rows(database)
    assert (first.worker_name, first.pid, first.device, first.gpu_name) == (
        "radnode-draft-1@gpu-a", os.getpid(), "cuda:0", "NVIDIA H100 80GB HBM3")
    assert (first.gpu_memory_used_bytes, first.gpu_memory_total_bytes) == (30 * 2**30,
                                                                         80 * 2**30)
    assert (first.model_name, first.model_version, first.jobs_in_flight) == (
        "radnode-demo", "1.0", 0)
    with counter.track(), counter.track():
        writer.beat()
    [second] = _rows(database)
    assert second.id == first.id
    assert second.jobs_in_flight == 2
    assert second.last_beat_at >= first.last_beat_at
    assert second.started_at == first.started_at
    assert counter.count == 0


def test_stop_removes_the_row_and_start_beats_at_once(database: Database) -> None:
    writer = _writer(database, "radnode-draft-2@gpu-b", InFlightCounter())
    writer.start()
    try:
        wait_for(lambda: len(_rows(database)) == 1, timeout=10, what="first beat")
    finally:
        writer.stop()
    assert _rows(database) == []


def test_device_status_reads_the_device_without_initialising_cuda() -> None:
    import torch

    assert device_status("cpu") == DeviceStatus("cpu")
    if not torch.cuda.is_available():
        assert device_status("auto") == DeviceStatus("cpu")
        assert device_status("cuda:0") == DeviceStatus("cpu")
        return
    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        assert device_status("auto") == DeviceStatus("cuda")
        assert not torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        torch.zeros(1, device="cuda:0")
    status = device_status("cuda:0")
    free, total = torch.cuda.mem_get_info(0)
    assert (status.device, status.gpu_name) == ("cuda:0", torch.cuda.get_device_name(0))
    assert status.memory_total_bytes == total
    assert status.memory_used_bytes is not None and 0 < status.memory_used_bytes <= total


def test_embedded_worker_beats_while_the_node_runs(node: NodeServices) -> None:
    wait_for(lambda: len(_rows(node.database)) == 1, timeout=10, what="embedded heartbeat")
    [row] = _rows(node.database)
    assert row.worker_name.startswith("embedded@")
    assert row.pid == os.getpid()
    assert row.device == device_status(node.settings.worker.device).device
    assert row.jobs_in_flight == 0


def test_two_embedded_nodes_on_one_host_keep_one_row_each(tmp_path: Path,
                                                        database_url: str) -> None:
    """Nodes on one host and one database: one on a fixed port, two on system-chosen ones."""
    port = free_port()
    nodes = [NodeServices.build(make_settings(tmp_path / f"n{index}", database_url,
                                              dicom={"port": dicom_port}))
             for index, dicom_port in enumerate((port, 0, 0))]
    try:
        for services in nodes:
            services.start()
        wait_for(lambda: len(_rows(nodes[0].database)) == 3, timeout=10,
                 what="three embedded heartbeats")
        names = [row.worker_name for row in _rows(nodes[0].database)]
        assert len(set(names)) == 3
        assert f"embedded@{socket.gethostname()}:{port}" in names
        nodes[1].stop()
        nodes.pop(1)
        assert len(_rows(nodes[0].database)) == 2
    finally:
        for services in nodes:
            services.stop()


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[WebEnv]:
    with fast_password_hashing():
        env = build_web_env(tmp_path, database_url, worker={"stale_after_seconds": 60})
        seed_user(env.database, "root", Role.ADMIN, display_name="Admin^Ada")
        env.login("root")
        yield env
        env.close()


def test_monitoring_page_and_metrics_show_alive_and_stale_workers(web: WebEnv) -> None:
    _writer(web.database, "radnode-draft-1@gpu-a", InFlightCounter()).beat()
    cpu = _writer(web.database, "radnode-draft-1@cpu-b", InFlightCounter(),
                  DeviceStatus("cpu"))
    cpu.beat()
    with web.database.sessions.begin() as session:
        stale = session.scalars(select(WorkerHeartbeat).where(
            WorkerHeartbeat.worker_name == "radnode-draft-1@cpu-b")).one()
        stale.last_beat_at = utcnow() - dt.timedelta(minutes=5)

    page = web.client.get("/admin/monitoring", headers=HTML)
    assert page.status_code == 200
    section = page.text.split('id="workers"', 1)[1].split("</section>", 1)[0]
    assert "1 alive · 1 stale" in section
    gpu_row = re.search(r'data-worker="radnode-draft-1@gpu-a">(.*?)</tr>', section, re.S)
    cpu_row = re.search(r'data-worker="radnode-draft-1@cpu-b">(.*?)</tr>', section, re.S)
    assert gpu_row and cpu_row
    assert "badge ok\">alive" in gpu_row.group(1) and "NVIDIA H100" in gpu_row.group(1)
    assert "GPU memory of radnode-draft-1@gpu-a" in gpu_row.group(1)
    assert "badge danger\">stale" in cpu_row.group(1) and "<svg" not in cpu_row.group(1)
    assert section.index("gpu-a") < section.index("cpu-b")  # alive first

    metrics = web.client.get("/metrics").text
    assert "\nradnode_workers_alive 1\n" in metrics
    assert "\nradnode_workers_stale 1\n" in metrics
    host = _rows(web.database)[0].host
    labels = f'worker="radnode-draft-1@gpu-a",host="{host}",device="cuda:0"'
    assert f'radnode_worker_gpu_memory_bytes{{{labels},kind="used"}} {30 * 2**30}' in metrics
    assert f'radnode_worker_gpu_memory_bytes{{{labels},kind="total"}} {80 * 2**30}' in metrics
    assert "cpu-b" not in metrics  # stale workers report no gauges
    assert web.client.get("/readyz").status_code == 200


def test_monitoring_page_without_workers(web: WebEnv) -> None:
    page = web.client.get("/admin/monitoring", headers=HTML)
    assert "No worker has sent a heartbeat yet." in page.text
    assert "\nradnode_workers_alive 0\n" in web.client.get("/metrics").text


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.mark.postgres
@pytest.mark.usefixtures("demo_bundle_built")
def test_celery_worker_process_beats_and_leaves(tmp_path: Path, postgres_url: str,
                                                redis_db: redis.Redis) -> None:
    settings = make_settings(tmp_path, postgres_url, broker={"url": REDIS_URL})
    database = Database.from_settings(settings, migrate=True)
    env = {**os.environ, "RADNODE_DATABASE__URL": postgres_url, "RADNODE_BROKER__URL": REDIS_URL,
           "RADNODE_STORAGE__ROOT": str(settings.storage.root),
           "RADNODE_MODEL__BUNDLE": str(DEMO_BUNDLE_DIR), "RADNODE_WORKER__DEVICE": "cpu",
           "RADNODE_WORKER__HEARTBEAT_SECONDS": "0.5", "RADNODE_LOGGING__FORMAT": "text"}
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "node.cli.main", "worker", "--concurrency", "1", "--name", "hb"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        wait_for(lambda: len(_rows(database)) == 1, timeout=60, what="worker heartbeat")
        [row] = _rows(database)
        assert row.pid == process.pid
        assert re.fullmatch(r"radnode-draft-hb@.+", row.worker_name)
        assert (row.device, row.gpu_name, row.jobs_in_flight) == ("cpu", None, 0)
        assert row.model_name and row.model_version
        first_beat = row.last_beat_at
        wait_for(lambda: _rows(database)[0].last_beat_at > first_beat, timeout=10,
                 what="second beat")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
    assert _rows(database) == [], (tmp_path / "worker.log").read_text()[-3000:]
    database.engine.dispose()
