"""Storage commitment (PS3.4 Annex J) against a real Orthanc and hostile archives.

Orthanc is the Storage Commitment SCP: it answers the N-ACTION, then opens its own
association to the node's listener, proposing the SCP role, and sends the N-EVENT-REPORT.
Orthanc cannot be made to lie about what it keeps, so the archive that answers C-STORE
Success and then reports a failure on the same association is a small pynetdicom peer
(:class:`FakeArchive`), as are the peers that send reports nobody asked for. Each
database test runs on SQLite and PostgreSQL; waits for a report are bounded in seconds.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from node.config import Destination, ExportSettings, Settings
from node.db.models import AuditEvent, Export, Report
from node.db.types import utcnow
from node.dicom.commitment import (
    STORAGE_COMMITMENT_SOP_CLASS,
    STORAGE_COMMITMENT_SOP_INSTANCE,
    CommitmentReference,
    CommitmentReportListener,
    ReportStatus,
    request_commitment,
)
from node.dicom.export import DestinationRefused, Sendable, SendResult, send_instances
from node.dicom.ingest import InstanceIngestor
from node.dicom.scp import DicomListener
from node.exports import ExportService, queue_exports
from node.runtime import Database
from node.states import ExportState, Role
from node.storage import InstanceStore
from tests.conftest import free_port, make_settings
from tests.integration.test_export import StoredReport, store_report
from tests.integration.web_seed import HTML, WebEnv, seed_user
from tests.orthanc import OrthancServer, requires_orthanc, running_orthanc
from workers.inference.dicom_limits import DatasetLimits

NODE_AE = "RADNODE"
#: Seconds within which a report sent on its own association must be recorded.
REPORT_BOUND = 10.0
COMMITMENT = {"timeout_seconds": 5, "commitment_timeout_seconds": 30,
              "commitment_wait_seconds": 0, "base_delay_seconds": 30,
              "max_age_seconds": 3600, "commitment_max_attempts": 3}


# -- the node's side ----------------------------------------------------------------------


@dataclass
class CommitmentNode:
    """The parts of a node that export with storage commitment, on one database."""

    settings: Settings
    database: Database
    store: InstanceStore
    destinations: list[Destination]
    port: int
    exports: ExportService = field(init=False)
    listener: DicomListener | None = None

    def __post_init__(self) -> None:
        self.exports = self.build_service()

    def build_service(self, **overrides: Any) -> ExportService:
        """A fresh export service (as after a restart) over the same database."""
        self.exports = ExportService(
            ExportSettings(**{**COMMITMENT, **overrides}), self.destinations,
            self.database.sessions, self.store, calling_ae=NODE_AE)
        return self.exports

    def listen(self) -> DicomListener:
        """Start the DICOM listener with storage commitment on the node's port."""
        ingestor = InstanceIngestor(self.store, self.database.sessions, DatasetLimits())
        listener = DicomListener(
            self.settings.dicom, ingestor, None,
            CommitmentReportListener(self.exports.ledger.record_report))
        listener.start()
        self.listener = listener
        return listener

    def stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None

    def queue(self, stored: StoredReport) -> int:
        with self.database.sessions.begin() as session:
            report = session.get_one(Report, stored.report_id)
            [export] = queue_exports(session, report, self.destinations)
            return export.id

    def row(self, export_id: int) -> Export:
        with self.database.sessions() as session:
            return session.get_one(Export, export_id)

    def wait_for(self, export_id: int, state: ExportState,
                 bound: float = REPORT_BOUND) -> tuple[Export, float]:
        """Poll until the export is in ``state``; return it and the seconds it took."""
        start = time.monotonic()
        while True:
            row = self.row(export_id)
            if row.state == state:
                return row, time.monotonic() - start
            assert time.monotonic() - start < bound, (
                f"export {export_id} is {row.state.name}, not {state.name}, after {bound} s: "
                f"{row.last_error}")
            time.sleep(0.05)

    def audit(self, action: str) -> list[AuditEvent]:
        with self.database.sessions() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                        .order_by(AuditEvent.id)))


def make_node(tmp_path: Path, database_url: str, destinations: list[Destination],
              port: int | None = None) -> CommitmentNode:
    port = port or free_port()
    settings = make_settings(tmp_path, database_url,
                             dicom={"port": port, "ae_title": NODE_AE},
                             destinations=[d.model_dump() for d in destinations])
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    return CommitmentNode(settings, database, store, destinations, port)


def orthanc_config(node_port: int) -> dict[str, Any]:
    """Orthanc knows the node as a modality it may report storage commitments to."""
    return {"DicomModalities": {"radnode": {
        "AET": NODE_AE, "Host": "127.0.0.1", "Port": node_port,
        "AllowStorageCommitment": True}}}


def commitment_destination(ae_title: str, port: int) -> Destination:
    return Destination(ae_title=ae_title, host="127.0.0.1", port=port, storage_commitment=True)


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, node_port: int) -> Iterator[OrthancServer]:
    with running_orthanc(tmp_path / "orthanc", orthanc_config(node_port)) as server:
        yield server


@pytest.fixture
def node(tmp_path: Path, database_url: str, node_port: int,
         orthanc: OrthancServer) -> Iterator[CommitmentNode]:
    built = make_node(tmp_path, database_url,
                      [commitment_destination(orthanc.aet, orthanc.dicom_port)], node_port)
    yield built
    built.stop_listening()
    built.database.engine.dispose()


# -- a hostile archive --------------------------------------------------------------------


class FakeArchive:
    """A Storage SCP that answers C-STORE Success and N-ACTION Success, then reports
    whatever ``report`` returns (event type, event information) on the same association;
    ``None`` reports nothing."""

    def __init__(self, ae_title: str = "FAKEPACS",
                 report: Callable[[Dataset], tuple[int, Dataset] | None] | None = None
                 ) -> None:
        self.ae_title = ae_title
        self.report = report
        self.stored: list[str] = []
        self.requests: list[Dataset] = []
        self.report_statuses: list[int] = []
        ae = AE(ae_title)
        ae.add_supported_context(ComprehensiveSRStorage)
        ae.add_supported_context(STORAGE_COMMITMENT_SOP_CLASS)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action)])
        self.port = int(self.server.server_address[1])

    def destination(self) -> Destination:
        return commitment_destination(self.ae_title, self.port)

    def _on_store(self, event: Any) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, None]:
        request = event.action_information
        self.requests.append(request)
        answer = self.report(request) if self.report is not None else None
        if answer is not None:
            threading.Thread(target=self._send_report, args=(event.assoc, *answer),
                             daemon=True).start()
        return 0x0000, None

    def _send_report(self, assoc: Any, event_type: int, information: Dataset) -> None:
        time.sleep(0.1)  # after the N-ACTION response
        status, _ = assoc.send_n_event_report(information, event_type,
                                              STORAGE_COMMITMENT_SOP_CLASS,
                                              STORAGE_COMMITMENT_SOP_INSTANCE)
        self.report_statuses.append(int(status.Status) if "Status" in status else -1)

    def close(self) -> None:
        self.server.shutdown()


def _items(request: Dataset) -> list[Dataset]:
    return list(request.ReferencedSOPSequence)


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


def all_failed(request: Dataset) -> tuple[int, Dataset]:
    info = Dataset()
    info.TransactionUID = request.TransactionUID
    info.FailedSOPSequence = [_item(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID,
                                    0x0110) for i in _items(request)]
    return 2, info


def all_committed(request: Dataset) -> tuple[int, Dataset]:
    info = Dataset()
    info.TransactionUID = request.TransactionUID
    info.ReferencedSOPSequence = [_item(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
                                  for i in _items(request)]
    return 1, info


def success_naming_nothing(request: Dataset) -> tuple[int, Dataset]:
    """Event type 1 ("all committed") whose Referenced SOP Sequence names another instance."""
    info = Dataset()
    info.TransactionUID = request.TransactionUID
    info.ReferencedSOPSequence = [_item(ComprehensiveSRStorage, str(generate_uid()))]
    return 1, info


@pytest.fixture
def fake_node(tmp_path: Path, database_url: str) -> Iterator[Callable[..., CommitmentNode]]:
    made: list[tuple[FakeArchive, CommitmentNode]] = []

    def build(report: Callable[[Dataset], tuple[int, Dataset] | None] | None
              ) -> CommitmentNode:
        archive = FakeArchive(report=report)
        built = make_node(tmp_path, database_url, [archive.destination()])
        built.archive = archive  # type: ignore[attr-defined]
        made.append((archive, built))
        return built

    yield build
    for archive, built in made:
        built.stop_listening()
        archive.close()
        built.database.engine.dispose()


def send_report(port: int, calling_ae: str, event_type: int, information: Dataset,
                *, propose_scp_role: bool = True) -> int:
    """Open an association to the node as a Storage Commitment SCP; send one report."""
    ae = AE(calling_ae)
    ae.add_requested_context(STORAGE_COMMITMENT_SOP_CLASS)
    roles = []
    if propose_scp_role:
        from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = STORAGE_COMMITMENT_SOP_CLASS
        role.scu_role, role.scp_role = False, True
        roles.append(role)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, ext_neg=roles)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_event_report(information, event_type,
                                              STORAGE_COMMITMENT_SOP_CLASS,
                                              STORAGE_COMMITMENT_SOP_INSTANCE)
        return int(status.Status)
    finally:
        assoc.release()


# -- Orthanc ------------------------------------------------------------------------------


pytestmark = requires_orthanc


def test_orthanc_reports_on_its_own_association_and_the_export_is_committed(
        node: CommitmentNode, orthanc: OrthancServer,
        record_property: Callable[[str, object], None]) -> None:
    node.listen()
    stored = store_report(node.database, node.store)
    export_id = node.queue(stored)

    assert node.exports.deliver_due() == [export_id]
    pending = node.row(export_id)
    assert pending.commitment_transaction_uid is not None
    assert pending.commitment_references == [[ComprehensiveSRStorage, stored.sr_uid]]
    assert pending.state in (ExportState.COMMITMENT_PENDING, ExportState.COMMITTED)

    row, seconds = node.wait_for(export_id, ExportState.COMMITTED)
    record_property("seconds_to_committed", round(seconds, 3))
    assert row.committed_at is not None and row.last_error is None
    assert orthanc.sop_instance_uids().count(stored.sr_uid) == 1
    [committed] = node.audit("export_committed")
    assert committed.details is not None
    assert committed.details["transaction_uid"] == pending.commitment_transaction_uid
    assert len([j for j in orthanc.jobs() if j["Type"] == "StorageCommitmentScp"]) == 1


def test_instance_lost_after_a_successful_store_is_sent_and_committed_again(
        node: CommitmentNode, orthanc: OrthancServer) -> None:
    """Orthanc answers the C-STORE with Success, then no longer holds the SR (deleted before
    the commitment request): its report names the instance as failed (0x0112)."""
    node.listen()
    stored = store_report(node.database, node.store)
    export_id = node.queue(stored)
    first: list[bool] = []

    def loses_the_first_copy(destination: Destination, items: Sequence[Sendable], **kw: Any
                             ) -> list[SendResult]:
        results = send_instances(destination, items, **kw)
        if not first:
            first.append(True)
            orthanc.delete_instance(stored.sr_uid)
        return results

    node.exports.sender = loses_the_first_copy
    node.exports.deliver_due()
    row, _ = node.wait_for(export_id, ExportState.RETRYING)
    assert "0x0112 no such object instance" in (row.last_error or "")
    assert stored.sr_uid in (row.last_error or "")
    assert row.committed_at is None and row.next_attempt_at is not None
    failed_transaction = row.commitment_transaction_uid
    [refused] = node.audit("commitment_refused")
    assert refused.details is not None and refused.details["state"] == "RETRYING"

    assert node.exports.deliver_due(now=row.next_attempt_at) == [export_id]
    row, _ = node.wait_for(export_id, ExportState.COMMITTED)
    assert row.attempts == 2 and row.commitment_transaction_uid != failed_transaction
    assert orthanc.sop_instance_uids().count(stored.sr_uid) == 1


def test_restart_between_the_request_and_the_report_loses_nothing(
        node: CommitmentNode, orthanc: OrthancServer,
        record_property: Callable[[str, object], None]) -> None:
    """The node is down when Orthanc reports; a new node on the same database takes the
    report Orthanc sends again, by the Transaction UID persisted before the request."""
    stored = store_report(node.database, node.store)
    export_id = node.queue(stored)
    node.exports.deliver_due()  # no listener: Orthanc's report cannot be delivered
    deadline = time.monotonic() + REPORT_BOUND
    while not [j for j in orthanc.jobs() if j["Type"] == "StorageCommitmentScp"
               and j["State"] == "Failure"]:
        assert time.monotonic() < deadline, orthanc.jobs()
        time.sleep(0.1)
    assert node.row(export_id).state == ExportState.COMMITMENT_PENDING

    node.build_service()  # the restarted node: new services, the same database
    node.listen()
    [job] = [j for j in orthanc.jobs() if j["Type"] == "StorageCommitmentScp"]
    orthanc.request("POST", f"/jobs/{job['ID']}/resubmit")
    row, seconds = node.wait_for(export_id, ExportState.COMMITTED)
    record_property("seconds_to_committed_after_resubmit", round(seconds, 3))
    assert row.attempts == 1 and seconds < REPORT_BOUND


def test_a_prompt_rejection_of_the_commitment_request_is_a_refusal(tmp_path: Path) -> None:
    """An archive that rejects the calling AE at once is a refusal every time, never an
    unreachable archive (pynetdicom can see the socket closed before it reads the answer)."""
    rejecting = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False}
    reference = CommitmentReference(str(ComprehensiveSRStorage), str(generate_uid()))
    outcomes: list[str] = []
    with running_orthanc(tmp_path / "rejecting", rejecting) as orthanc:
        destination = commitment_destination(orthanc.aet, orthanc.dicom_port)
        for _ in range(100):
            with pytest.raises(DestinationRefused) as refused:
                request_commitment(destination, str(generate_uid()), [reference],
                                   calling_ae=NODE_AE, timeout=5, wait_seconds=1,
                                   on_report=lambda *_: None)
            outcomes.append(str(refused.value))
    assert set(outcomes) == {"association for storage commitment rejected by "
                             f"{orthanc.aet} at 127.0.0.1:{orthanc.dicom_port}"}


def test_unreported_commitment_is_retried_then_failed_and_shown_in_triage(
        tmp_path: Path, web: WebEnv) -> None:
    """Orthanc cannot reach the node (it reports to a port nobody listens on): each
    commitment times out, is sent again under a new transaction, and after the last
    attempt the export is FAILED on the triage page with the reason."""
    with running_orthanc(tmp_path / "silent", orthanc_config(free_port())) as orthanc:
        destination = commitment_destination(orthanc.aet, orthanc.dicom_port)
        node = CommitmentNode(web.settings, web.database, web.store, [destination], 0)
        node.build_service(commitment_timeout_seconds=2, commitment_max_attempts=2)
        stored = store_report(web.database, web.store)
        export_id = node.queue(stored)
        now = utcnow()

        node.exports.deliver_due(now=now)
        first = node.row(export_id)
        assert first.state == ExportState.COMMITMENT_PENDING
        assert first.next_attempt_at == now + dt.timedelta(seconds=2)
        assert node.exports.deliver_due(now=now + dt.timedelta(seconds=1)) == []
        assert node.row(export_id).state == ExportState.COMMITMENT_PENDING

        later = now + dt.timedelta(seconds=3)
        assert node.exports.deliver_due(now=later) == []  # timed out, backing off
        retrying = node.row(export_id)
        assert retrying.state == ExportState.RETRYING
        assert "sent no storage commitment report within 2 s" in (retrying.last_error or "")
        assert retrying.next_attempt_at == later + dt.timedelta(seconds=30)

        assert node.exports.deliver_due(now=retrying.next_attempt_at) == [export_id]
        second = node.row(export_id)
        assert second.state == ExportState.COMMITMENT_PENDING and second.attempts == 2
        assert second.commitment_transaction_uid != first.commitment_transaction_uid
        assert second.next_attempt_at is not None
        node.exports.deliver_due(now=second.next_attempt_at + dt.timedelta(seconds=1))
        failed = node.row(export_id)
        assert failed.state == ExportState.FAILED and failed.next_attempt_at is None
        assert orthanc.sop_instance_uids().count(stored.sr_uid) == 1

    assert [e.details["state"] for e in node.audit("commitment_timed_out")
            if e.details] == ["RETRYING", "FAILED"]
    seed_user(web.database, "root", Role.ADMIN)
    web.login("root")
    page = web.client.get("/admin/triage", headers=HTML).text
    row_html = page[page.index(f'id="export-{export_id}"'):]
    row_html = row_html[:row_html.index("</tr>")]
    assert "Failed" in row_html and "sent no storage commitment report within 2 s" in row_html


# -- hostile archives ---------------------------------------------------------------------


def test_report_on_the_same_association_commits(fake_node: Callable[..., CommitmentNode]
                                                ) -> None:
    node = fake_node(all_committed)
    node.build_service(commitment_wait_seconds=5)
    stored = store_report(node.database, node.store)
    export_id = node.queue(stored)
    started = time.monotonic()
    node.exports.deliver_due()
    assert time.monotonic() - started < 5  # the report ended the wait
    row = node.row(export_id)  # no listener: the report came on the request's association
    assert row.state == ExportState.COMMITTED
    assert node.archive.report_statuses == [ReportStatus.SUCCESS]  # type: ignore[attr-defined]


@pytest.mark.parametrize("report, reason", [
    (all_failed, "failure reason 0x0110 processing failure"),
    (success_naming_nothing, "not reported as committed"),
])
def test_archive_that_stores_then_refuses_the_commitment_gets_it_again(
        fake_node: Callable[..., CommitmentNode], report: Any, reason: str) -> None:
    node = fake_node(report)
    node.build_service(commitment_wait_seconds=5)
    stored = store_report(node.database, node.store)
    export_id = node.queue(stored)
    node.exports.deliver_due()
    row = node.row(export_id)
    assert row.state == ExportState.RETRYING, row.last_error
    assert reason in (row.last_error or "") and "FAKEPACS refused storage commitment" in (
        row.last_error or "")
    archive: FakeArchive = node.archive  # type: ignore[attr-defined]
    assert archive.stored == [stored.sr_uid] and archive.report_statuses == [0x0000]

    archive.report = all_committed  # the archive is fixed
    assert row.next_attempt_at is not None
    node.exports.deliver_due(now=row.next_attempt_at)
    row = node.row(export_id)
    assert row.state == ExportState.COMMITTED and archive.stored == [stored.sr_uid] * 2


def test_reports_from_strangers_or_for_unknown_transactions_change_nothing(
        fake_node: Callable[..., CommitmentNode]) -> None:
    node = fake_node(None)  # the archive never reports
    node.listen()
    stored = store_report(node.database, node.store)
    export_id = node.queue(stored)
    node.exports.deliver_due()
    pending = node.row(export_id)
    assert pending.state == ExportState.COMMITMENT_PENDING
    genuine = all_committed(node.archive.requests[0])[1]  # type: ignore[attr-defined]

    assert send_report(node.port, "STRANGER", 1, genuine) == ReportStatus.NOT_AUTHORIZED
    unknown = Dataset()
    unknown.TransactionUID = str(generate_uid())
    unknown.ReferencedSOPSequence = genuine.ReferencedSOPSequence
    assert send_report(node.port, "FAKEPACS", 1, unknown) == \
        ReportStatus.INVALID_ARGUMENT_VALUE
    assert send_report(node.port, "FAKEPACS", 7, genuine) == ReportStatus.NO_SUCH_EVENT_TYPE
    missing = Dataset()
    missing.ReferencedSOPSequence = genuine.ReferencedSOPSequence
    assert send_report(node.port, "FAKEPACS", 1, missing) == \
        ReportStatus.INVALID_ARGUMENT_VALUE

    row = node.row(export_id)
    assert (row.state, row.commitment_transaction_uid, row.committed_at, row.attempts) == (
        ExportState.COMMITMENT_PENDING, pending.commitment_transaction_uid, None, 1)
    refused = node.audit("commitment_report_refused")
    assert [(e.actor, (e.details or {})["reason"]) for e in refused] == [
        ("ae:STRANGER", "not a storage commitment destination"),
        ("ae:FAKEPACS", "unknown Transaction UID")]
    assert [e.object_id for e in refused] == [None, None]

    # the genuine report from the archive, on its own association, still commits
    assert send_report(node.port, "FAKEPACS", 1, genuine) == ReportStatus.SUCCESS
    assert node.row(export_id).state == ExportState.COMMITTED
    assert send_report(node.port, "FAKEPACS", 1, genuine) == ReportStatus.SUCCESS  # repeated
    assert len(node.audit("export_committed")) == 1


def test_the_running_node_takes_orthancs_report_on_its_listener(
        tmp_path: Path, database_url: str, node_port: int, orthanc: OrthancServer) -> None:
    """``radnode serve``'s services, wired from settings: the export loop sends and asks,
    the listener accepts Orthanc's association in the SCP role and records the report."""
    from node.runtime import NodeServices

    destination = commitment_destination(orthanc.aet, orthanc.dicom_port)
    settings = make_settings(
        tmp_path, database_url, dicom={"port": node_port, "ae_title": NODE_AE},
        destinations=[destination.model_dump()],
        exports={"period_seconds": 0.2, "commitment_wait_seconds": 0})
    services = NodeServices.build(settings)
    services.start()
    try:
        assert services.listener.commitment is not None
        stored = store_report(services.database, services.store)
        with services.database.sessions.begin() as session:
            [export] = queue_exports(session, session.get_one(Report, stored.report_id),
                                     settings.destinations)
            export_id = export.id
        services.exporter.notify()
        deadline = time.monotonic() + REPORT_BOUND
        while True:
            with services.database.sessions() as session:
                row = session.get_one(Export, export_id)
            if row.state == ExportState.COMMITTED:
                break
            assert time.monotonic() < deadline, (row.state, row.last_error)
            time.sleep(0.05)
        assert orthanc.sop_instance_uids().count(stored.sr_uid) == 1
    finally:
        services.stop()
