"""Decompression bombs are refused before inflation or decoding, within a memory ceiling.

The node runs in a process of its own so that its peak resident memory (``VmHWM``) can
be read. A 1.4 MB deflated data set inflating to 1.5 GB and a 4 MB RLE image of
16384 x 16384 pixels are each answered 0xA700 (refused: out of resources), audited as
``instance_refused`` (listed on the admin's triage page), and the node keeps serving
C-ECHO and C-STORE, its peak resident memory under 1 GiB throughout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, Instance
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_net import exchange
from tests.reliability.bombs import write_deflate_bomb, write_rle_bomb
from tests.reliability.hostile_scu import record_figures
from tests.reliability.memory import node_process, resident_kib

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

OUT_OF_RESOURCES = 0xA700
CEILING_KIB = 1024 * 1024


def test_bombs_are_refused_and_the_node_stays_small(tmp_path: Path) -> None:
    deflate = tmp_path / "deflate-bomb.dcm"
    rle = tmp_path / "rle-bomb.dcm"
    deflate_uid = str(write_deflate_bomb(deflate).SOPInstanceUID)
    rle_uid = str(write_rle_bomb(rle).SOPInstanceUID)
    folder = tmp_path / "node"
    folder.mkdir()
    with node_process(folder) as (process, port):
        started = resident_kib(process.pid)
        statuses = [exchange(port, [path], calling_ae="MODALITY",
                             sop_classes=[DX_FOR_PRESENTATION]).statuses
                    for path in (deflate, rle)]
        good = make_cxr_dataset(rows=64, cols=64, bits=8)
        echo = exchange(port, [None]).statuses
        stored = exchange(port, [good], sop_classes=[DX_FOR_PRESENTATION]).statuses
        memory = resident_kib(process.pid)
    record_figures("bombs", {
        "deflate_bomb_bytes": deflate.stat().st_size, "deflate_inflates_to": 1_500_000_000,
        "rle_bomb_bytes": rle.stat().st_size, "rle_pixels": 16384 * 16384,
        "statuses": [f"0x{s[0]:04X}" for s in statuses],
        "rss_start_mib": started["VmRSS"] // 1024,
        "rss_peak_mib": memory["VmHWM"] // 1024,
    })
    assert statuses == [[OUT_OF_RESOURCES], [OUT_OF_RESOURCES]]
    assert echo == [0x0000] and stored == [0x0000]
    assert memory["VmHWM"] < CEILING_KIB, memory
    engine = create_engine(f"sqlite:///{folder / 'radnode.db'}")
    try:
        with Session(engine) as session:
            refused = {e.object_id: (e.details or {}) for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "instance_refused"))}
            instances = set(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()
    assert refused[deflate_uid]["limit"] == "max_inflated_bytes"
    assert refused[rle_uid]["limit"] == "max_pixels"
    assert {d["status"] for d in refused.values()} == {"0xA700"}
    assert instances == {good.SOPInstanceUID}
