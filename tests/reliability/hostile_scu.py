"""Sending hostile input to a node and checking what it kept."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import _config
from pynetdicom.association import Association
from sqlalchemy import select

from node.db.models import Instance, QuarantinedInstance
from node.dicom.header import parse_header
from node.dicom.statuses import StoreStatus
from node.runtime import NodeServices
from tests.conftest import REPO_ROOT
from tests.dicom_factory import make_cxr_dataset
from tests.integration.dicom_files import stored_files
from tests.integration.dicom_net import exchange, make_scu
from tests.reliability.malformed import REQUEST_SOP_CLASSES, MalformedInstance

ARTIFACTS = REPO_ROOT / "test-artifacts" / "reliability"
SUCCESS = int(StoreStatus.SUCCESS)
ABORTED = -1
"""The outcome recorded when the association ended before a response came."""


def record_figures(name: str, figures: dict[str, Any]) -> Path:
    """Write a scenario's counts to ``test-artifacts/reliability/<name>.json``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return path


@contextmanager
def raw_sending() -> Any:
    """Make pynetdicom send files byte for byte instead of decoding them first."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


class RawStoreSender:
    """Send Part 10 files by C-STORE over as few associations as the node allows.

    When the node aborts an association, the instance in flight is recorded as
    :data:`ABORTED` and the next one goes over a new association.
    """

    def __init__(self, port: int, *, calling_ae: str = "HOSTILE") -> None:
        self.port = port
        self.ae = make_scu(calling_ae, REQUEST_SOP_CLASSES)
        self.associations = 0
        self._assoc: Association | None = None

    def _association(self) -> Association:
        if self._assoc is None or not self._assoc.is_established:
            self._assoc = self.ae.associate("127.0.0.1", self.port, ae_title="RADNODE")
            self.associations += 1
            assert self._assoc.is_established, "the node refused a new association"
            # Command and dataset go out as separate small writes: without this,
            # Nagle's algorithm and delayed acknowledgement add ~40 ms to each request.
            channel = self._assoc.dul.socket
            assert channel is not None and channel.socket is not None
            channel.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._assoc

    def send(self, path: Path) -> int:
        """Send one file; return the status, or :data:`ABORTED`."""
        assoc = self._association()
        with raw_sending():
            try:
                response = assoc.send_c_store(path)
            except (RuntimeError, ValueError):
                response = None
        if response is None or "Status" not in response:
            return ABORTED
        return int(response.Status)

    def close(self) -> None:
        """Release the open association, if any."""
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None


def write_instances(folder: Path, instances: Sequence[MalformedInstance]) -> list[Path]:
    """Write each instance's Part 10 bytes to ``folder/<name>.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for instance in instances:
        path = folder / f"{instance.name}.dcm"
        path.write_bytes(instance.part10)
        paths.append(path)
    return paths


def store_good_instance(node: NodeServices) -> str:
    """Send a valid instance on a fresh association; require Success; return its UID."""
    good = make_cxr_dataset(rows=16, cols=16, bits=8)
    result = exchange(node.listener.port, [good], sop_classes=REQUEST_SOP_CLASSES)
    assert result.established and result.statuses == [SUCCESS], result
    return str(good.SOPInstanceUID)


def stored_instance_uids(node: NodeServices) -> set[str]:
    """SOP Instance UIDs of every instance row."""
    with node.database.sessions() as session:
        return set(session.scalars(select(Instance.sop_instance_uid)))


def assert_every_stored_instance_is_whole(node: NodeServices) -> int:
    """Every row's file exists, matches its digest, decodes completely and has pixels
    matching its header; nothing but row files and quarantined copies (each with its own
    quarantine row) lies under the storage root.

    Returns
    -------
    int
        The number of instances checked.
    """
    with node.database.sessions() as session:
        rows = [(r.path, r.sha256, r.sop_instance_uid) for r in session.scalars(select(Instance))]
        quarantined = list(session.scalars(select(QuarantinedInstance.path)))
    files = {node.store.absolute(path) for path, _, _ in rows}
    files |= {node.store.absolute(path) for path in quarantined if path is not None}
    assert set(stored_files(node.store.root)) == files, "a file without a row is stored"
    for path, digest, sop_uid in rows:
        data = node.store.absolute(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        header = parse_header(data)
        assert header.sop_instance_uid == sop_uid
        ds = dcmread(BytesIO(data))
        for element in ds.iterall():
            _ = element.value
        if "PixelData" in ds:
            assert ds.pixel_array.shape[-2:] == (ds.Rows, ds.Columns)
    return len(rows)
