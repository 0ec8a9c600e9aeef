"""A flood of logins with random usernames against a node that is receiving images.

The node runs its DICOM listener and its web app (uvicorn) in this process, on SQLite and
PostgreSQL. Password verification is slowed to stand for real Argon2 cost; while it runs,
no transaction may be open in the verifying thread, and on SQLite another connection must
get the write lock at once. C-STOREs sent during the flood all succeed, and no login
answers 500 ("database is locked"). Latency figures are in bench/login_flood.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from node.runtime import NodeServices
from node.users import use_password_hasher
from tests.conftest import free_port
from tests.dicom_factory import make_cxr_dataset
from tests.integration.dicom_net import exchange, receiver_settings
from tests.integration.test_login_throttle import ProbingHasher
from tests.integration.web_seed import form_csrf


def _flood(url: str, stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as client:
        while not stop.is_set():
            page = client.get("/login")
            response = client.post("/login", data={
                "username": f"guess-{uuid.uuid4().hex[:12]}", "password": "a password guess",
                "csrf_token": form_csrf(page.text)})
            statuses.append(response.status_code)


def test_cstore_succeeds_during_a_login_flood(tmp_path: Path, database_url: str) -> None:
    """Eight clients log in with random usernames as fast as they can while five images
    are sent: every image is stored, no login fails with a server error, and no
    verification ran inside a transaction."""
    settings = receiver_settings(tmp_path, database_url, web={
        "host": "127.0.0.1", "port": free_port(), "secret_key_file": str(tmp_path / "web.key"),
        "login_max_failures_per_address": 100000})
    services = NodeServices.build(settings, with_web=True)
    assert services.web is not None
    hasher = ProbingHasher(services.database.engine, delay=0.2)
    previous = use_password_hasher(hasher)
    services.listener.start()
    services.web.start()
    stop = threading.Event()
    statuses: list[int] = []
    flooders = [threading.Thread(target=_flood, args=(services.web.url, stop, statuses))
                for _ in range(8)]
    stored: list[int] = []
    try:
        for thread in flooders:
            thread.start()
        time.sleep(1.0)
        for index in range(5):
            ds = make_cxr_dataset(patient_name=f"FLOOD^{index}", seed=index)
            result = exchange(services.listener.port, [ds],
                              sop_classes=[str(ds.SOPClassUID)])
            assert result.established
            stored.extend(result.statuses)
    finally:
        stop.set()
        for thread in flooders:
            thread.join(30)
        services.web.stop()
        services.listener.stop()
        services.work_queue.close()
        services.database.engine.dispose()
        use_password_hasher(previous)
        hasher.close()
    assert stored == [0x0000] * 5
    assert statuses and set(statuses) <= {401}, sorted(set(statuses))
    assert hasher.calls >= len(statuses) > 0
    assert not hasher.blocked, hasher.blocked[:3]


@pytest.fixture(autouse=True)
def _fast(fast_hashing: None) -> None:
    """Cheap hashing for anything the test creates."""
