"""PostgreSQL stopped under a running node, then started again.

A private cluster (not the shared server) is the node's database. While it is
down, C-STORE is answered 0xA700 (out of resources) and nothing is written; once
it is back, the node recovers by itself: the same association goes on, the next
instance is stored, and every instance acknowledged before the outage is still
there with its file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from sqlalchemy import select

from node.db.models import Instance, Study
from node.dicom.statuses import StoreStatus
from node.runtime import NodeServices
from node.states import StudyState
from tests.dicom_factory import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_files import stored_files, temporary_files
from tests.integration.dicom_net import make_scu, receiver_settings, running_node, wait_for
from tests.reliability.hostile_scu import record_figures
from tests.reliability.private_services import PrivatePostgres, private_postgres

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SUCCESS = int(StoreStatus.SUCCESS)
OUT_OF_RESOURCES = int(StoreStatus.OUT_OF_RESOURCES)
BEFORE, DURING, AFTER = 40, 10, 40


@pytest.fixture
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def _instances(study_uid: str, series_uid: str, first: int, count: int) -> list[Dataset]:
    return [
        make_cxr_dataset(study_uid=study_uid, series_uid=series_uid, rows=32, cols=32, bits=8,
                         instance_number=n, seed=n)
        for n in range(first, first + count)
    ]


def _status(assoc: Association, ds: Dataset) -> int:
    response = assoc.send_c_store(ds)
    return int(response.Status) if "Status" in response else -1


def _rows(node: NodeServices) -> dict[str, str]:
    with node.database.sessions() as session:
        return {r.sop_instance_uid: r.path for r in session.scalars(select(Instance))}


def test_postgres_restart_refuses_then_recovers(cluster: PrivatePostgres,
                                                tmp_path: Path) -> None:
    """One association through the whole outage: Success before, 0xA700 while the
    cluster is stopped (immediate mode, no file left), Success again as soon as it is
    back; every acknowledged instance has its row and file; the assembly loop goes on."""
    settings = receiver_settings(tmp_path, cluster.url,
                                 assembly={"quiet_seconds": 1, "poll_seconds": 0.1})
    study_uid, series_uid = generate_uid(), generate_uid()
    before = _instances(study_uid, series_uid, 1, BEFORE)
    during = _instances(study_uid, series_uid, BEFORE + 1, DURING)
    after = _instances(study_uid, series_uid, BEFORE + DURING + 1, AFTER)
    statuses: Counter[str] = Counter()
    with running_node(settings) as node:
        ae = make_scu("MODALITY", [DX_FOR_PRESENTATION, CR_IMAGE_STORAGE])
        assoc = ae.associate("127.0.0.1", node.listener.port, ae_title="RADNODE")
        assert assoc.is_established
        try:
            acknowledged = []
            for ds in before:
                status = _status(assoc, ds)
                statuses[f"0x{status:04X}"] += 1
                assert status == SUCCESS
                acknowledged.append(str(ds.SOPInstanceUID))
            files_before = stored_files(node.store.root)

            cluster.stop("immediate")
            down_at = time.monotonic()
            refused = []
            for ds in during:
                status = _status(assoc, ds)
                statuses[f"0x{status:04X}"] += 1
                refused.append(status)
            refusal_seconds = (time.monotonic() - down_at) / DURING
            assert refused == [OUT_OF_RESOURCES] * DURING
            assert stored_files(node.store.root) == files_before, "a refused instance was kept"

            restart_seconds = cluster.start()
            up_at = time.monotonic()
            recovery_seconds = None
            # The refused instances are sent again first, as a modality would, then more.
            for ds in [*during, *after]:
                status = _status(assoc, ds)
                statuses[f"0x{status:04X}"] += 1
                assert status == SUCCESS, f"0x{status:04X} after the restart"
                if recovery_seconds is None:
                    recovery_seconds = time.monotonic() - up_at
                acknowledged.append(str(ds.SOPInstanceUID))
        finally:
            assoc.release()

        rows = _rows(node)
        assert set(rows) == set(acknowledged)
        assert len(rows) == BEFORE + DURING + AFTER
        files = stored_files(node.store.root)
        assert temporary_files(node.store.root) == []
        assert sorted(node.store.absolute(p) for p in rows.values()) == files

        def stable() -> bool:
            with node.database.sessions() as session:
                study = session.scalars(select(Study)).one()
                return study.state == StudyState.STABLE

        wait_for(stable, timeout=30, what="the study to become stable after the outage")

    record_figures("postgres_restart", {
        "instances_sent": BEFORE + DURING + AFTER + DURING,
        "acknowledged": len(acknowledged),
        "refused_while_down": DURING,
        "rows": len(rows),
        "files": len(files),
        "lost": len(set(acknowledged) - set(rows)),
        "statuses": dict(statuses),
        "refusal_seconds_each": round(refusal_seconds, 3),
        "postgres_start_seconds": round(restart_seconds, 2),
        "first_success_after_start_seconds": round(recovery_seconds or 0.0, 3),
        "associations": 1,
    })
