"""Query/Retrieve SCP against DCMTK: findscu, getscu and movescu (into a DCMTK storescp).

One node per database backend serves the archive of :mod:`tests.integration.qr_archive`,
loaded over DICOM; every test queries or retrieves from it and changes nothing but the
audit table and the move destination's folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from node.db.models import AuditEvent, Export, Report
from node.dicom.qr_keys import COMPREHENSIVE_SR
from node.exports import queue_exports
from node.reports.drafts import DRAFT_SERIES_NUMBER
from node.runtime import NodeServices
from tests.conftest import free_port
from tests.dicom_factory import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION
from tests.integration.dicom_net import (
    dcmtk_tool,
    exchange,
    receiver_settings,
    requires_dcmtk,
    running_node,
    wait_for,
)
from tests.integration.qr_archive import (
    ArchiveContent,
    all_files,
    build_files,
    database_url_for,
    dataset_bytes,
    finish_archive,
    stored_path,
)

pytestmark = [
    pytest.mark.dcmtk,
    requires_dcmtk,
]

MOVE_AE = "MOVEDEST"
RECORDER_AE = "RECORDER"
"""A pynetdicom Storage SCP destination that records each C-STORE's Move Originator."""


@dataclass
class Archive:
    """A running node holding the archive, and a DCMTK storescp it may move to."""

    node: NodeServices
    port: int
    content: ArchiveContent
    move_folder: Path
    originators: list[tuple[str, str, int | None]]
    """(SOP Instance UID, Move Originator AE Title, Move Originator Message ID) received."""

    def stored(self, sop_uid: str) -> Path:
        """The node's file of an instance or report SR."""
        return stored_path(self.node.database.sessions, self.node.store, sop_uid)


def _wait_for_port(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def archive(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp(f"qr-{request.param}")
    move_port = free_port()
    recorder_port = free_port()
    originators: list[tuple[str, str, int | None]] = []
    move_folder = folder / "moved"
    move_folder.mkdir()
    with database_url_for(request.param, folder) as url, pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("RADNODE_")]:
            env.delenv(key)
        settings = receiver_settings(
            folder, url,
            destinations=[{"ae_title": MOVE_AE, "host": "127.0.0.1", "port": move_port,
                           "auto_export": False},
                          {"ae_title": RECORDER_AE, "host": "127.0.0.1", "port": recorder_port,
                           "auto_export": False}],
        )
        recorder = _recording_store_scp(recorder_port, originators)
        content = build_files(folder / "files")
        storescp = subprocess.Popen(
            [str(dcmtk_tool("storescp")), "-aet", MOVE_AE, "+B", "-od", str(move_folder),
             str(move_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: _wait_for_port(move_port), timeout=10, what="storescp")
            with running_node(settings, assembly=False) as node:
                port = node.listener.port
                sop_classes = [str(DX_FOR_PRESENTATION), str(CR_IMAGE_STORAGE)]
                sent = exchange(port, all_files(content), sop_classes=sop_classes)
                assert sent.statuses == [0] * len(all_files(content))
                finish_archive(node.database.sessions, node.store, content)
                yield Archive(node, port, content, move_folder, originators)
        finally:
            recorder.shutdown()
            storescp.terminate()
            storescp.wait(timeout=10)


def _recording_store_scp(
    port: int, originators: list[tuple[str, str, int | None]]
) -> ThreadedAssociationServer:
    """Start a Storage SCP that records the Move Originator of every C-STORE request."""

    def on_store(event: Any) -> int:
        request = event.request
        ae_title = request.MoveOriginatorApplicationEntityTitle
        originators.append((
            str(request.AffectedSOPInstanceUID),
            "" if ae_title is None else str(ae_title).strip(),
            request.MoveOriginatorMessageID,
        ))
        return 0x0000

    ae = AE(ae_title=RECORDER_AE)
    ae.supported_contexts = StoragePresentationContexts
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_C_STORE, on_store)])


# -- running DCMTK ---------------------------------------------------------------------------


def _keys(level: str, keys: dict[str, str]) -> list[str]:
    args = ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}" if value else keyword]
    return args


def findscu(archive: Archive, folder: Path, level: str, keys: dict[str, str], *,
            root: str = "-S") -> tuple[list[Dataset], str]:
    """Run ``findscu``; return the responses (sorted by study, series, instance UID)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(dcmtk_tool("findscu")), "-v", root, "-aet", "FINDSCU", "-aec", "RADNODE",
               *_keys(level, keys), "-X", "-od", str(folder), "127.0.0.1", str(archive.port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    responses: list[Dataset] = [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]
    responses.sort(key=lambda d: (str(d.get("PatientID", "")), str(d.get("StudyInstanceUID", "")),
                                  str(d.get("SeriesInstanceUID", "")),
                                  str(d.get("SOPInstanceUID", ""))))
    return responses, result.stdout + result.stderr


def getscu(archive: Archive, folder: Path, level: str, keys: dict[str, str],
           *flags: str) -> tuple[dict[str, Path], str]:
    """Run ``getscu``; return the received files by SOP Instance UID, and the output."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(dcmtk_tool("getscu")), "-v", "-S", "-aet", "GETSCU", "-aec", "RADNODE",
               "+B", *flags, *_keys(level, keys), "-od", str(folder), "127.0.0.1",
               str(archive.port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in folder.iterdir()}
    return received, result.stdout + result.stderr


def movescu(archive: Archive, destination: str, level: str,
            keys: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(dcmtk_tool("movescu")), "-v", "-S", "-aet", "MOVESCU", "-aec", "RADNODE",
               "-aem", destination, *_keys(level, keys), "127.0.0.1", str(archive.port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def moved_files(archive: Archive, sop_uids: Sequence[str]) -> dict[str, Path]:
    """Files the move destination holds for ``sop_uids`` (storescp names them by UID)."""
    found = {}
    for path in archive.move_folder.iterdir():
        uid = path.name.split(".", 1)[1] if "." in path.name else path.name
        if uid in sop_uids:
            found[uid] = path
    return found


def study_uids(responses: Sequence[Dataset]) -> set[str]:
    return {str(r.StudyInstanceUID) for r in responses}


# -- C-FIND -----------------------------------------------------------------------------------


def test_find_studies_returns_requested_keys_and_counts(archive: Archive, tmp_path: Path) -> None:
    responses, output = findscu(archive, tmp_path, "STUDY", {
        "PatientID": "QR-A", "StudyInstanceUID": "", "ModalitiesInStudy": "",
        "NumberOfStudyRelatedInstances": "", "NumberOfStudyRelatedSeries": "",
        "StudyDate": "", "PatientName": "", "RetrieveAETitle": "", "ReferencedStudySequence": "",
    })
    assert "Final Find Response (Success)" in output
    content = archive.content
    assert study_uids(responses) == content.study_uids("A1", "A2")
    by_name = {content.name_of(str(r.StudyInstanceUID)): r for r in responses}
    a1, a2 = by_name["A1"], by_name["A2"]
    assert list(a1.ModalitiesInStudy) == ["DX", "SR"]
    assert (int(a1.NumberOfStudyRelatedSeries), int(a1.NumberOfStudyRelatedInstances)) == (2, 3)
    assert a2.ModalitiesInStudy == "CR"
    assert int(a2.NumberOfStudyRelatedInstances) == 1
    assert a1.StudyDate == "20240105" and str(a1.PatientName) == "ALPHA^ANNA"
    assert a1.RetrieveAETitle == "RADNODE" and a1.QueryRetrieveLevel == "STUDY"
    assert "ReferencedStudySequence" in a1 and len(a1.ReferencedStudySequence) == 0


@pytest.mark.parametrize(("keys", "expected"), [
    ({"PatientName": "alpha*"}, {"A1", "A2"}),
    ({"PatientName": "BET?^*"}, {"B1"}),
    ({"PatientID": "QR-?"}, {"A1", "A2", "B1", "C1"}),
    ({"StudyDate": "20240101-20240331"}, {"A1", "A2"}),
    ({"StudyDate": "-20231231"}, {"B1", "C1"}),
    ({"StudyDate": "20240320"}, {"A2"}),
    ({"StudyDate": "20230101-", "StudyTime": "0900-1430"}, {"A1", "A2"}),
    ({"AccessionNumber": "ACC-A*"}, {"A1", "A2"}),
    ({"StudyDescription": "*PA"}, {"B1"}),
    ({"StudyDescription": "*pa"}, set()),
    ({"ModalitiesInStudy": "CR"}, {"A2", "B1"}),
    ({"ModalitiesInStudy": "SR"}, {"A1"}),
    ({"PatientID": "QR-A", "ModalitiesInStudy": "DX\\SR"}, {"A1"}),
])
def test_find_studies_matching(archive: Archive, tmp_path: Path, keys: dict[str, str],
                               expected: set[str]) -> None:
    responses, output = findscu(archive, tmp_path, "STUDY", {**keys, "StudyInstanceUID": ""})
    assert "Final Find Response (Success)" in output
    assert study_uids(responses) == archive.content.study_uids(*expected)


def test_find_studies_by_uid_list(archive: Archive, tmp_path: Path) -> None:
    a1, b1 = archive.content.studies["A1"].uid, archive.content.studies["B1"].uid
    responses, _ = findscu(archive, tmp_path, "STUDY", {"StudyInstanceUID": f"{a1}\\{b1}"})
    assert study_uids(responses) == {a1, b1}


def test_find_patients_in_patient_root(archive: Archive, tmp_path: Path) -> None:
    responses, output = findscu(archive, tmp_path, "PATIENT", {
        "PatientID": "QR-*", "PatientName": "", "NumberOfPatientRelatedStudies": "",
        "NumberOfPatientRelatedInstances": "",
    }, root="-P")
    assert "Final Find Response (Success)" in output
    found = {str(r.PatientID): (str(r.PatientName), int(r.NumberOfPatientRelatedStudies),
                                int(r.NumberOfPatientRelatedInstances)) for r in responses}
    assert found == {"QR-A": ("ALPHA^ANNA", 2, 4), "QR-B": ("BETA^BORIS", 1, 1),
                     "QR-C": ("GAMMA^GUS", 1, 2)}


def test_find_studies_in_patient_root(archive: Archive, tmp_path: Path) -> None:
    responses, output = findscu(archive, tmp_path, "STUDY",
                                {"PatientID": "QR-B", "StudyInstanceUID": "", "StudyDate": ""},
                                root="-P")
    assert "Final Find Response (Success)" in output
    assert study_uids(responses) == archive.content.study_uids("B1")
    assert responses[0].PatientID == "QR-B" and responses[0].StudyDate == "20231231"


def test_find_series_lists_the_report_series(archive: Archive, tmp_path: Path) -> None:
    a1 = archive.content.studies["A1"]
    keys = {"StudyInstanceUID": a1.uid, "SeriesInstanceUID": "", "Modality": "",
            "NumberOfSeriesRelatedInstances": "", "SeriesDescription": ""}
    responses, _ = findscu(archive, tmp_path / "all", "SERIES", keys)
    series = {str(r.SeriesInstanceUID): (r.Modality, int(r.NumberOfSeriesRelatedInstances))
              for r in responses}
    assert series == {a1.series_uid: ("DX", 2), archive.content.report_series_uid: ("SR", 1)}
    assert {str(r.StudyInstanceUID) for r in responses} == {a1.uid}

    reports, _ = findscu(archive, tmp_path / "sr", "SERIES", {**keys, "StudyInstanceUID": "",
                                                              "Modality": "SR"})
    assert [str(r.SeriesInstanceUID) for r in reports] == [archive.content.report_series_uid]


def test_find_images_includes_the_draft_sr(archive: Archive, tmp_path: Path) -> None:
    content = archive.content
    a1 = content.studies["A1"]
    keys = {"StudyInstanceUID": a1.uid, "SeriesInstanceUID": "", "SOPInstanceUID": "",
            "SOPClassUID": "", "InstanceNumber": "", "Modality": ""}
    responses, _ = findscu(archive, tmp_path / "all", "IMAGE", keys)
    found = {str(r.SOPInstanceUID): (str(r.SOPClassUID), r.Modality) for r in responses}
    assert found == {
        a1.sop_uids[0]: (str(DX_FOR_PRESENTATION), "DX"),
        a1.sop_uids[1]: (str(DX_FOR_PRESENTATION), "DX"),
        content.report_sop_uid: (COMPREHENSIVE_SR, "SR"),
    }
    instance_two, _ = findscu(archive, tmp_path / "number", "IMAGE",
                             {**keys, "SeriesInstanceUID": a1.series_uid, "InstanceNumber": "2"})
    assert [str(r.SOPInstanceUID) for r in instance_two] == [a1.sop_uids[1]]
    listed, _ = findscu(archive, tmp_path / "list", "IMAGE", {
        **keys, "StudyInstanceUID": "",
        "SOPInstanceUID": f"{content.report_sop_uid}\\{content.studies['B1'].sop_uids[0]}",
    })
    assert {str(r.SOPInstanceUID) for r in listed} == {content.report_sop_uid,
                                                       content.studies["B1"].sop_uids[0]}


def test_find_tells_the_unverified_draft_by_series_description_and_flags(
        archive: Archive, tmp_path: Path) -> None:
    """The node's draft SR is indexed with its series and status attributes, and matched on them."""
    content = archive.content
    series, output = findscu(archive, tmp_path / "series", "SERIES", {
        "StudyInstanceUID": "", "SeriesInstanceUID": "", "SeriesDescription": "*UNVERIFIED*",
        "SeriesNumber": "", "Modality": "",
    })
    assert "Final Find Response (Success)" in output
    assert [(str(r.SeriesInstanceUID), r.Modality, int(r.SeriesNumber)) for r in series] == [
        (content.report_series_uid, "SR", DRAFT_SERIES_NUMBER)]
    assert "UNVERIFIED" in str(series[0].SeriesDescription)

    keys = {"StudyInstanceUID": content.studies["A1"].uid, "SeriesInstanceUID": "",
            "SOPInstanceUID": "", "InstanceNumber": "", "CompletionFlag": "",
            "VerificationFlag": "", "ContentDate": "", "ContentTime": ""}
    drafts, _ = findscu(archive, tmp_path / "unverified", "IMAGE",
                        {**keys, "VerificationFlag": "UNVERIFIED"})
    assert [str(r.SOPInstanceUID) for r in drafts] == [content.report_sop_uid]
    draft = drafts[0]
    assert (draft.CompletionFlag, draft.VerificationFlag, int(draft.InstanceNumber)) == (
        "PARTIAL", "UNVERIFIED", 1)
    stored = pydicom.dcmread(archive.stored(content.report_sop_uid))
    assert (draft.ContentDate, draft.ContentTime) == (stored.ContentDate, stored.ContentTime)
    dated, _ = findscu(archive, tmp_path / "dated", "IMAGE",
                       {**keys, "ContentDate": f"{stored.ContentDate}-"})
    assert [str(r.SOPInstanceUID) for r in dated] == [content.report_sop_uid]
    verified, _ = findscu(archive, tmp_path / "verified", "IMAGE",
                          {**keys, "VerificationFlag": "VERIFIED"})
    complete, _ = findscu(archive, tmp_path / "complete", "IMAGE",
                          {**keys, "CompletionFlag": "COMPLETE"})
    assert verified == [] and complete == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(("root", "level", "keys"), [
    ("-S", "PATIENT", {"PatientID": "QR-A"}),
    ("-S", "FRAME", {"StudyInstanceUID": ""}),
    ("-S", "STUDY", {"StudyDate": "2024-01-05"}),
    ("-S", "IMAGE", {"SOPInstanceUID": "1.2.*"}),
])
def test_find_refuses_bad_identifiers(archive: Archive, tmp_path: Path, root: str, level: str,
                                      keys: dict[str, str]) -> None:
    responses, output = findscu(archive, tmp_path, level, keys, root=root)
    assert responses == []
    assert "DoesNotMatchSOPClass" in output


# -- C-GET ------------------------------------------------------------------------------------


def test_get_study_returns_the_stored_bytes(archive: Archive, tmp_path: Path) -> None:
    a1 = archive.content.studies["A1"]
    received, output = getscu(archive, tmp_path, "STUDY", {"StudyInstanceUID": a1.uid})
    assert "Number of Completed Suboperations : 3" in output, output
    expected = [*a1.sop_uids, archive.content.report_sop_uid]
    assert sorted(received) == sorted(expected)
    for sop_uid in expected:
        assert dataset_bytes(received[sop_uid]) == dataset_bytes(archive.stored(sop_uid))
    with archive.node.database.sessions() as session:
        audit = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "instances_retrieved", AuditEvent.actor == "ae:GETSCU")).all()
    assert any(event.details == {"instances": 3, "level": "STUDY"} for event in audit)


def test_get_series_of_the_report(archive: Archive, tmp_path: Path) -> None:
    content = archive.content
    received, output = getscu(archive, tmp_path, "SERIES", {
        "StudyInstanceUID": content.studies["A1"].uid,
        "SeriesInstanceUID": content.report_series_uid,
    })
    assert list(received) == [content.report_sop_uid], output
    sr = pydicom.dcmread(received[content.report_sop_uid])
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"


def test_get_decompresses_for_a_requestor_of_uncompressed_data(archive: Archive,
                                                               tmp_path: Path) -> None:
    a2 = archive.content.studies["A2"]
    received, output = getscu(archive, tmp_path, "IMAGE", {
        "StudyInstanceUID": a2.uid, "SeriesInstanceUID": a2.series_uid,
        "SOPInstanceUID": a2.sop_uids[0],
    })
    assert list(received) == [a2.sop_uids[0]], output
    got = pydicom.dcmread(received[a2.sop_uids[0]])
    original = pydicom.dcmread(a2.files[0])
    assert original.file_meta.TransferSyntaxUID.is_compressed
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_get_keeps_the_stored_syntax_for_a_requestor_that_accepts_it(archive: Archive,
                                                                      tmp_path: Path) -> None:
    """``getscu +xt`` accepts JPEG-LS lossless: the instance comes back as stored, unchanged."""
    a2 = archive.content.studies["A2"]
    received, output = getscu(archive, tmp_path, "IMAGE", {
        "StudyInstanceUID": a2.uid, "SeriesInstanceUID": a2.series_uid,
        "SOPInstanceUID": a2.sop_uids[0],
    }, "+xt")
    assert list(received) == [a2.sop_uids[0]], output
    stored = archive.stored(a2.sop_uids[0])
    got = pydicom.dcmread(received[a2.sop_uids[0]])
    original = pydicom.dcmread(stored)
    assert original.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert got.PixelData == original.PixelData
    assert dataset_bytes(received[a2.sop_uids[0]]) == dataset_bytes(stored)


def test_get_for_a_jpeg_ls_requestor_sends_uncompressed_instances_and_the_sr_too(
        archive: Archive, tmp_path: Path) -> None:
    """``getscu +xt`` on a study stored uncompressed: images encoded losslessly, SR intact."""
    a1 = archive.content.studies["A1"]
    received, output = getscu(archive, tmp_path, "STUDY", {"StudyInstanceUID": a1.uid}, "+xt")
    assert "Number of Completed Suboperations : 3" in output, output
    for sop_uid in a1.sop_uids:
        got = pydicom.dcmread(received[sop_uid])
        original = pydicom.dcmread(archive.stored(sop_uid))
        assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)
    sr = pydicom.dcmread(received[archive.content.report_sop_uid])
    stored_sr = pydicom.dcmread(archive.stored(archive.content.report_sop_uid))
    assert sr.ContentSequence == stored_sr.ContentSequence


def test_get_counts_a_lost_file_as_a_failed_suboperation(archive: Archive,
                                                          tmp_path: Path) -> None:
    c1 = archive.content.studies["C1"]
    received, output = getscu(archive, tmp_path, "STUDY", {"StudyInstanceUID": c1.uid})
    assert list(received) == [c1.sop_uids[0]]
    assert "Number of Completed Suboperations : 1" in output, output
    assert "Number of Failed Suboperations    : 1" in output


def test_get_without_the_unique_key_is_refused(archive: Archive, tmp_path: Path) -> None:
    received, output = getscu(archive, tmp_path, "SERIES",
                              {"StudyInstanceUID": archive.content.studies["A1"].uid})
    assert received == {}
    assert "DoesNotMatchSOPClass" in output, output


# -- C-MOVE -----------------------------------------------------------------------------------


def test_move_study_to_a_known_destination(archive: Archive) -> None:
    a1 = archive.content.studies["A1"]
    result = movescu(archive, MOVE_AE, "STUDY", {"StudyInstanceUID": a1.uid})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Final Move Response (Success)" in output, output
    expected = [*a1.sop_uids, archive.content.report_sop_uid]
    moved = moved_files(archive, expected)
    assert sorted(moved) == sorted(expected)
    for sop_uid in expected:
        assert dataset_bytes(moved[sop_uid]) == dataset_bytes(archive.stored(sop_uid))
    with archive.node.database.sessions() as session:
        audit = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "instances_moved")).all()
    assert any(e.details == {"instances": 3, "level": "STUDY", "destination_ae": MOVE_AE}
               for e in audit)


def test_move_only_destination_is_a_move_target_without_exports(archive: Archive) -> None:
    destination = archive.node.settings.destinations[0]
    assert (destination.ae_title, destination.auto_export) == (MOVE_AE, False)
    a1 = archive.content.studies["A1"]
    result = movescu(archive, MOVE_AE, "STUDY", {"StudyInstanceUID": a1.uid})
    assert "Received Final Move Response (Success)" in result.stdout + result.stderr
    assert sorted(moved_files(archive, a1.sop_uids)) == sorted(a1.sop_uids)
    with archive.node.database.sessions() as session:
        report = session.scalars(select(Report)).first()
        assert report is not None
        queue_exports(session, report, archive.node.settings.destinations)
        assert session.scalars(select(Export)).all() == []
        session.rollback()


def test_move_reports_failed_suboperations(archive: Archive) -> None:
    c1 = archive.content.studies["C1"]
    result = movescu(archive, MOVE_AE, "SERIES",
                     {"StudyInstanceUID": c1.uid, "SeriesInstanceUID": c1.series_uid})
    output = result.stdout + result.stderr
    assert "Warning" in output, output
    assert list(moved_files(archive, c1.sop_uids)) == [c1.sop_uids[0]]


def test_move_to_an_unknown_destination_is_refused(archive: Archive) -> None:
    b1 = archive.content.studies["B1"]
    result = movescu(archive, "NOWHERE", "STUDY", {"StudyInstanceUID": b1.uid})
    output = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in output, output
    assert moved_files(archive, b1.sop_uids) == {}


def test_move_without_the_unique_key_is_refused(archive: Archive) -> None:
    a1 = archive.content.studies["A1"]
    result = movescu(archive, MOVE_AE, "IMAGE",
                     {"StudyInstanceUID": a1.uid, "SeriesInstanceUID": a1.series_uid})
    output = result.stdout + result.stderr
    assert "DoesNotMatchSOPClass" in output, output


def test_move_suboperations_name_the_requestor_as_move_originator(archive: Archive) -> None:
    """Each C-STORE of a C-MOVE carries the requestor's AE title and the C-MOVE's Message ID."""
    b1 = archive.content.studies["B1"]
    result = movescu(archive, RECORDER_AE, "STUDY", {"StudyInstanceUID": b1.uid})
    assert "Received Final Move Response (Success)" in result.stdout + result.stderr
    from_movescu = [entry for entry in archive.originators if entry[0] in b1.sop_uids]
    assert [entry[1] for entry in from_movescu] == ["MOVESCU"] * len(b1.sop_uids)
    archive.originators.clear()

    requestor = AE(ae_title="VIEWER7")
    requestor.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = requestor.associate("127.0.0.1", archive.port, ae_title="RADNODE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = b1.uid
    try:
        statuses = [status.Status for status, _ in assoc.send_c_move(
            identifier, RECORDER_AE, StudyRootQueryRetrieveInformationModelMove, msg_id=4321)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(archive.originators) == sorted(
        (uid, "VIEWER7", 4321) for uid in b1.sop_uids)
