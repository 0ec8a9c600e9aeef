"""Load: four DCMTK senders at once into a node that drafts while it receives.

Each sender streams 250 small CR or DX instances in one association: a
single-image chest study first (drafted at once, while the rest arrives), three
multi-image chest studies and one abdomen study. Every instance must be answered
Success, stored (row and file) and every chest study drafted once; the abdomen
studies are IGNORED. The node runs in this process with the embedded queue and
the demo model, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from node.db.models import AuditEvent, Instance, Report, Study
from node.states import StudyState
from tests.conftest import DEMO_BUNDLE_DIR, make_settings
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicom_files import read_part10, stored_files, temporary_files
from tests.integration.dicom_net import dcmtk_tool, running_node, wait_for
from tests.reliability.hostile_scu import record_figures

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.dcmtk,
              pytest.mark.usefixtures("dcmtk_installed", "demo_bundle_built")]

SENDERS = 4
PER_SENDER = 250
# (instances, body part) of each sender's studies, in sending order.
STUDY_PLAN = ((1, "CHEST"), (49, "CHEST"), (100, "CHEST"), (50, "CHEST"), (50, "ABDOMEN"))
RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


@dataclass
class SenderPlan:
    """One sender's files and the studies they make up."""

    calling_ae: str
    files: list[Path] = field(default_factory=list)
    chest_studies: list[str] = field(default_factory=list)
    other_studies: list[str] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)


def _write_sender(folder: Path, index: int) -> SenderPlan:
    """Write one sender's 250 instances (CR for odd senders, DX for even ones)."""
    assert sum(count for count, _ in STUDY_PLAN) == PER_SENDER
    plan = SenderPlan(calling_ae=f"MODALITY{index}")
    modality = "CR" if index % 2 else "DX"
    for number, (count, body_part) in enumerate(STUDY_PLAN):
        study_uid = generate_uid()
        (plan.chest_studies if body_part == "CHEST" else plan.other_studies).append(study_uid)
        frontal, lateral = generate_uid(), generate_uid()
        for n in range(1, count + 1):
            is_frontal = n <= max(1, count // 2)
            ds = make_cxr_dataset(
                study_uid=study_uid, series_uid=frontal if is_frontal else lateral,
                modality=modality, body_part=body_part, view_position="PA" if is_frontal
                else "LL", rows=64, cols=64, bits=12, instance_number=n,
                series_number=1 if is_frontal else 2, seed=index * 1000 + n,
                patient_id=f"LOAD-{index}-{number}", accession_number=f"L{index}{number}",
            )
            plan.sop_uids.append(str(ds.SOPInstanceUID))
            plan.files.append(write_dataset(ds, folder / f"s{number}_{n:03d}.dcm"))
    return plan


@pytest.mark.parametrize("database_url", ["sqlite", pytest.param("postgresql",
                         marks=pytest.mark.postgres)], indirect=True)
def test_four_senders_while_drafting(tmp_path: Path, database_url: str) -> None:
    """4 concurrent storescu x 250 instances: 1,000 Success, 1,000 rows and files with
    the bytes sent, every chest study drafted exactly once, the others IGNORED."""
    plans = [_write_sender(tmp_path / "out" / f"sender{i}", i) for i in range(SENDERS)]
    settings = make_settings(
        tmp_path, database_url, model={"bundle": str(DEMO_BUNDLE_DIR)},
        assembly={"quiet_seconds": 3, "poll_seconds": 0.2},
    )
    storescu = dcmtk_tool("storescu")
    assert storescu is not None
    with running_node(settings) as node:
        started = time.monotonic()
        senders = [
            subprocess.Popen(
                [storescu, "-v", "-aet", plan.calling_ae, "-aec", "RADNODE", "127.0.0.1",
                 str(node.listener.port), *map(str, plan.files)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for plan in plans
        ]
        outputs = [sender.communicate(timeout=300)[0] for sender in senders]
        send_seconds = time.monotonic() - started
        statuses = Counter(status for out in outputs for status in RESPONSE.findall(out))
        assert [s.returncode for s in senders] == [0] * SENDERS, outputs
        assert statuses == {"Success": SENDERS * PER_SENDER}, statuses

        chest = {uid for plan in plans for uid in plan.chest_studies}
        other = {uid for plan in plans for uid in plan.other_studies}

        def settled() -> bool:
            with node.database.sessions() as session:
                states = dict(session.execute(
                    select(Study.study_instance_uid, Study.state)).all())
            return (len(states) == len(chest) + len(other)
                    and all(states[uid] == StudyState.DRAFTED for uid in chest)
                    and all(states[uid] == StudyState.IGNORED for uid in other))

        wait_for(settled, timeout=150, what="every chest study drafted")
        settle_seconds = time.monotonic() - started - send_seconds
        with node.database.sessions() as session:
            rows = {r.sop_instance_uid: (r.path, r.sha256) for r in
                    session.scalars(select(Instance))}
            reports = dict(session.execute(
                select(Study.study_instance_uid, func.count(Report.id))
                .join(Report, Report.study_id == Study.id)
                .group_by(Study.study_instance_uid)).all())
            report_files = set(session.scalars(select(Report.sr_path)))
            late = session.scalar(select(func.count(AuditEvent.id))
                                  .where(AuditEvent.action == "late_instance"))
        image_files = [p for p in stored_files(node.store.root)
                       if str(p.relative_to(node.store.root)) not in report_files]
        assert temporary_files(node.store.root) == []

    sent = {uid for plan in plans for uid in plan.sop_uids}
    assert len(sent) == SENDERS * PER_SENDER
    assert set(rows) == sent
    assert sorted(node.store.absolute(path) for path, _ in rows.values()) == image_files
    by_uid = {uid: path for plan in plans for uid, path in zip(plan.sop_uids, plan.files,
                                                               strict=True)}
    for uid, (path, digest) in rows.items():
        stored = node.store.absolute(path)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
        # The node writes its own file meta; the dataset is the one sent, byte for byte.
        assert read_part10(stored)[1] == read_part10(by_uid[uid])[1]
    assert reports == dict.fromkeys(chest, 1)
    # Each study streams in one association without pauses: none is closed early.
    assert late == 0, f"{late} instances arrived after their study was closed"
    record_figures(f"load_{database_url.split(':')[0].split('+')[0]}", {
        "senders": SENDERS,
        "instances_sent": len(sent),
        "acknowledged": statuses["Success"],
        "statuses": dict(statuses),
        "rows": len(rows),
        "image_files": len(image_files),
        "chest_studies": len(chest),
        "drafted": len(reports),
        "duplicates": sum(reports.values()) - len(reports),
        "ignored_studies": len(other),
        "late_instances": int(late or 0),
        "send_seconds": round(send_seconds, 1),
        "instances_per_second": round(len(sent) / send_seconds, 1),
        "all_drafted_after_last_ack_seconds": round(settle_seconds, 1),
    })
