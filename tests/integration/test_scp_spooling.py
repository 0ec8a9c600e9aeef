"""Received data sets are spooled to the storage volume and linked into place, for the
node's listener only: another pynetdicom receiver in the same process keeps them in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import select

from node.db.models import Instance
from node.dicom import arriving
from node.dicom import ingest as ingest_module
from node.dicom.ingest import IngestOutcome, ReceivedInstance
from node.runtime import NodeServices
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicom_files import temporary_files
from tests.integration.dicom_net import (
    receiver_settings,
    requires_dcmtk,
    running_node,
    store_successes,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, requires_dcmtk]


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[NodeServices]:
    settings = receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": 600})
    with running_node(settings, assembly=False) as services:
        yield services


@pytest.fixture
def plain_scp() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A bare pynetdicom storage SCP in this process, recording what its handler saw."""
    seen: list[dict[str, Any]] = []

    def on_store(event: Any) -> int:
        seen.append({"spooled": getattr(event.request, "_dataset_path", None),
                     "encoded": event.encoded_dataset()})
        return 0x0000

    ae = AE(ae_title="PLAINSCP")
    ae.add_supported_context(DigitalXRayImageStorageForPresentation)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()


def test_a_spooled_instance_is_linked_into_place_and_plain_receivers_stay_in_memory(
        node: NodeServices, plain_scp: tuple[int, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    """The node stores, byte for byte, what a plain pynetdicom receiver gets from
    ``encoded_dataset()``; its copy came through a spooled file in the storage volume."""
    sent = write_dataset(make_cxr_dataset(rows=512, cols=512, bits=12), tmp_path / "a.dcm")
    ingested: list[ReceivedInstance] = []
    spool_seen: list[bool] = []
    encoded_seen: list[bytes] = []
    original_ingest = node.listener.ingestor.ingest

    def observe(received: ReceivedInstance) -> IngestOutcome:
        ingested.append(received)
        spool_seen.append(received.spooled is not None and received.spooled.is_file())
        encoded_seen.append(bytes(received.encoded))
        return original_ingest(received)

    node.listener.ingestor.ingest = observe  # type: ignore[method-assign]
    assert store_successes(storescu(node.listener.port, [sent])) == 1
    plain_port, seen = plain_scp
    assert store_successes(storescu(plain_port, [sent], called_ae="PLAINSCP")) == 1

    assert len(ingested) == 1 and spool_seen == [True]
    spooled = ingested[0].spooled
    assert spooled is not None
    assert spooled.parent == node.store.spool_folder()
    assert not spooled.exists()  # removed once the handler returned
    assert list(node.store.spool_folder().iterdir()) == []
    assert temporary_files(node.store.root) == []

    assert len(seen) == 1 and seen[0]["spooled"] is None
    with node.database.sessions() as session:
        path = session.scalar(select(Instance.path))
    assert path is not None
    stored = node.store.absolute(path)
    assert stored.read_bytes() == seen[0]["encoded"] == encoded_seen[0]
    # The handler read the spooled file through a map, released once it returned.
    assert isinstance(ingested[0].encoded, memoryview)
    with pytest.raises(ValueError, match="released"):
        len(ingested[0].encoded)
    assert os.stat(stored).st_nlink == 1
    assert oct(os.stat(stored).st_mode & 0o777) == oct(0o640)


@pytest.mark.parametrize(("rows", "cols"), [(64, 64), (2048, 1536)], ids=["small", "large"])
def test_the_digest_is_computed_while_the_data_set_arrives(
        node: NodeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        rows: int, cols: int) -> None:
    """The SHA-256 of a spooled instance comes with it from the receiving side (for a
    6 MB image, from the helper thread that hashed its PDUs as they came): the ingest
    path hashes nothing itself, and the digest is that of the bytes stored."""
    sent = write_dataset(make_cxr_dataset(rows=rows, cols=cols, bits=16), tmp_path / "a.dcm")
    hashed_by_ingest: list[int] = []
    original_hash = ingest_module._sha256_hex

    def counting_hash(data: Any) -> str:
        hashed_by_ingest.append(len(data))
        return original_hash(data)

    monkeypatch.setattr(ingest_module, "_sha256_hex", counting_hash)
    digests: list[Any] = []
    original_ingest = node.listener.ingestor.ingest

    def observe(received: ReceivedInstance) -> IngestOutcome:
        digests.append(received.digest)
        return original_ingest(received)

    node.listener.ingestor.ingest = observe  # type: ignore[method-assign]
    assert store_successes(storescu(node.listener.port, [sent])) == 1

    assert hashed_by_ingest == []
    [digest] = digests
    assert digest is not None and digest.done()
    with node.database.sessions() as session:
        row = session.execute(select(Instance.path, Instance.sha256)).one()
    stored = node.store.absolute(row.path).read_bytes()
    assert digest.result() == row.sha256 == hashlib.sha256(stored).hexdigest()
    assert row.path.endswith(f"_{row.sha256[:16]}.dcm")  # the name carries the digest
    if rows > 64:  # hashed in batches on the helper thread, not at the end
        assert len(stored) > 4 * arriving.HASH_BATCH
