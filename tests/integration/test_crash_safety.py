"""Kill -9 in the middle of a transfer: every instance answered Success survives."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import Instance
from node.runtime import Database
from tests.conftest import DEMO_BUNDLE_DIR, free_port
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset, write_dataset
from tests.integration.dicom_files import temporary_files
from tests.integration.dicom_net import (
    dcmtk_tool,
    exchange,
    radnode_command,
    receiver_settings,
    requires_dcmtk,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.dcmtk, requires_dcmtk,
              pytest.mark.usefixtures("demo_bundle_built")]

INSTANCES = 200
KILL_AFTER = 80


class ServerProcess:
    """``radnode serve`` as a child process configured through RADNODE_* variables."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
        self.env.update(
            {
                "RADNODE_DATABASE__URL": database_url,
                "RADNODE_STORAGE__ROOT": str(tmp_path / "storage"),
                "RADNODE_STORAGE__MIN_FREE_MB": "1",
                "RADNODE_DICOM__PORT": str(self.port),
                "RADNODE_DICOM__BIND_ADDRESS": "127.0.0.1",
                "RADNODE_WEB__PORT": str(free_port()),
                # No broker: the node drafts in-process, so it starts only with a model.
                "RADNODE_MODEL__BUNDLE": str(DEMO_BUNDLE_DIR),
                "RADNODE_ASSEMBLY__QUIET_SECONDS": "600",
                "RADNODE_LOGGING__FORMAT": "text",
            }
        )
        self.cwd = tmp_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers C-ECHO."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*radnode_command(), "serve"], cwd=self.cwd, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(self._answers_echo, timeout=60, what="radnode serve to answer C-ECHO")

    def _answers_echo(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"radnode serve exited:\n{self.log.read_text()}")
        return exchange(self.port, [None]).statuses == [0x0000]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> int:
        """SIGTERM and wait; return the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    """A server process, stopped at the end whatever happened."""
    process = ServerProcess(tmp_path, database_url)
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()
        process.process.wait(timeout=30)


def _stream_until_killed(
    server: ServerProcess, files: list[Path]
) -> tuple[list[Path], str]:
    """Send every file in one storescu association; SIGKILL the server once
    KILL_AFTER responses were Success. Return the files answered Success."""
    storescu = dcmtk_tool("storescu")
    assert storescu is not None
    sender = subprocess.Popen(
        [storescu, "-v", "-aet", "MODALITY", "-aec", "RADNODE", "127.0.0.1",
         str(server.port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    assert sender.stdout is not None
    acknowledged: list[Path] = []
    current: Path | None = None
    transcript: list[str] = []
    killed = False
    for line in sender.stdout:
        transcript.append(line)
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif "Received Store Response (Success)" in line:
            assert current is not None
            acknowledged.append(current)
            current = None
            if len(acknowledged) == KILL_AFTER and not killed:
                server.kill()
                killed = True
    sender.wait(timeout=60)
    assert killed, "".join(transcript)
    return acknowledged, "".join(transcript)


def test_success_means_durable_across_kill_9(
    tmp_path: Path, database_url: str, server: ServerProcess
) -> None:
    """Instances answered Success before a SIGKILL are, after a restart, on disk,
    decodable with the pixels sent, and indexed; no partial write is left over."""
    study_uid = generate_uid()
    originals: dict[str, pydicom.Dataset] = {}
    files: list[Path] = []
    for number in range(1, INSTANCES + 1):
        ds = make_cxr_dataset(
            study_uid=study_uid, rows=64, cols=64, bits=12, instance_number=number, seed=number
        )
        originals[ds.SOPInstanceUID] = ds
        files.append(write_dataset(ds, tmp_path / "outbox" / f"{number:03d}.dcm"))

    server.start()
    acknowledged, transcript = _stream_until_killed(server, files)
    assert KILL_AFTER <= len(acknowledged) < INSTANCES, transcript

    storage = tmp_path / "storage"
    series_folder = next(p.parent for p in storage.rglob("*.dcm"))
    # Whether or not the kill caught a write half-way, leave one partial write behind.
    (series_folder / f".{generate_uid()}_0123456789abcdef.dcm.{'0' * 32}.tmp").write_bytes(
        b"\x00" * 1000
    )
    server.start()  # same database and storage; sweeps partial writes at start
    assert temporary_files(storage) == []

    settings = receiver_settings(tmp_path, database_url)
    database = Database.from_settings(settings)
    try:
        with database.sessions() as session:
            rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    finally:
        database.engine.dispose()

    for path in acknowledged:
        sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop_uid in rows, f"{path.name} was acknowledged but has no row"
        stored = storage / rows[sop_uid].path
        assert stored.is_file(), f"{path.name} was acknowledged but has no file"
        decoded = pydicom.dcmread(stored)
        assert decoded.SOPInstanceUID == sop_uid
        assert (decoded.pixel_array == originals[sop_uid].pixel_array).all()
    # Every row, acknowledged or not, points at a complete file.
    for row in rows.values():
        data = (storage / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert len(data) == row.size_bytes

    # The restarted node goes on receiving, then shuts down cleanly on SIGTERM.
    assert exchange(server.port, [files[-1]], sop_classes=[DX_FOR_PRESENTATION]).statuses == [
        0x0000
    ]
    assert server.terminate() == 0
