"""C-STORE over the network with DCMTK senders: bytes kept exactly, rows indexed, re-sends."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from node.db.models import AuditEvent, Instance, QuarantinedInstance, Study
from node.runtime import NodeServices
from node.states import StudyState
from node.web import create_app
from node.web.service_auth import issue_service_token
from tests.dicom_factory import (
    DCMTK_SYNTAX_UIDS,
    DX_FOR_PRESENTATION,
    compress_jpeg2000,
    compress_with_dcmtk,
    make_cxr_dataset,
    write_dataset,
)
from tests.integration.dicom_files import read_part10, stored_files, temporary_files
from tests.integration.dicom_net import (
    echoscu,
    exchange,
    radnode_command,
    receiver_settings,
    requires_dcmtk,
    running_node,
    store_successes,
    storescu,
    storescu_profile,
)

pytestmark = [pytest.mark.dcmtk, requires_dcmtk]


#: How each transfer syntax is made and which storescu proposal carries it.
SYNTAX_CASES: dict[str, tuple[int, list[str]]] = {
    "explicit_little": (12, ["-xe"]),
    "implicit_little": (12, ["-xi"]),
    "explicit_big": (12, ["-xb"]),
    "deflate": (12, ["-xd"]),
    "jpeg_baseline": (8, ["-xy"]),
    "jpeg_extended": (12, ["-xx"]),
    "jpeg_lossless": (12, []),  # process 14: proposed through a storescu profile
    "jpeg_lossless_sv1": (12, ["-xs"]),
    "jpegls_lossless": (12, ["-xt"]),
    "jpegls_near_lossless": (12, ["-xu"]),
    "rle": (12, ["-xr"]),
    "j2k_lossless": (12, ["-xv"]),
    "j2k": (12, ["-xw"]),
}


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[NodeServices]:
    """A receiving node on the parametrised database whose multi-image studies stay open."""
    settings = receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": 600})
    with running_node(settings) as services:
        yield services


def _encode(tmp_path: Path, name: str, bits: int) -> tuple[Path, list[str]]:
    """Make a 64x64 file in the named transfer syntax (its uncompressed source beside it
    as ``<name>.src.dcm``); return it and the storescu flags that propose its syntax."""
    source = write_dataset(
        make_cxr_dataset(rows=64, cols=64, bits=bits), tmp_path / f"{name}.src.dcm"
    )
    target = tmp_path / f"{name}.dcm"
    flags = SYNTAX_CASES[name][1]
    if name.startswith("j2k"):
        compress_jpeg2000(source, target, lossless=name == "j2k_lossless")
    else:
        compress_with_dcmtk(source, target, name)  # type: ignore[arg-type]
    if name == "jpeg_lossless":
        flags = storescu_profile(
            tmp_path / "p14.cfg", DX_FOR_PRESENTATION, str(DCMTK_SYNTAX_UIDS["jpeg_lossless"])
        )
    return target, flags


def _instance_row(node: NodeServices, sop_uid: str) -> Instance | None:
    with node.database.sessions() as session:
        return session.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_uid)
        ).one_or_none()


def _assert_stored_exactly(node: NodeServices, sent: Path) -> Instance:
    """The stored file holds the sent dataset byte for byte, with matching file meta."""
    sent_meta, sent_dataset = read_part10(sent)
    if sent_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian and len(sent_dataset) % 2:
        sent_dataset += b"\x00"  # storescu pads an odd deflated stream to even length
    row = _instance_row(node, str(sent_meta.MediaStorageSOPInstanceUID))
    assert row is not None, f"no row for {sent.name}"
    stored = node.store.absolute(row.path)
    stored_meta, stored_dataset = read_part10(stored)
    assert stored_dataset == sent_dataset
    assert stored_meta.TransferSyntaxUID == sent_meta.TransferSyntaxUID
    assert row.transfer_syntax_uid == sent_meta.TransferSyntaxUID
    assert stored_meta.MediaStorageSOPClassUID == sent_meta.MediaStorageSOPClassUID
    assert stored_meta.MediaStorageSOPInstanceUID == sent_meta.MediaStorageSOPInstanceUID
    assert row.size_bytes == stored.stat().st_size
    return row


def test_echo(node: NodeServices) -> None:
    """DCMTK echoscu gets a successful C-ECHO."""
    result = echoscu(node.listener.port)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_every_transfer_syntax_is_stored_as_sent(node: NodeServices, tmp_path: Path) -> None:
    """Uncompressed, deflated, JPEG, JPEG-LS, RLE and JPEG 2000 instances sent by storescu
    are stored with the exact dataset bytes and transfer syntax, and decode to 64x64."""
    problems: dict[str, str] = {}
    for name, (bits, _) in SYNTAX_CASES.items():
        sent, flags = _encode(tmp_path, name, bits)
        result = storescu(node.listener.port, [sent], *flags)
        if store_successes(result) != 1:
            problems[name] = result.stdout + result.stderr
            continue
        row = _assert_stored_exactly(node, sent)
        stored = pydicom.dcmread(node.store.absolute(row.path))
        assert stored.pixel_array.shape == (64, 64), name
    assert problems == {}
    with node.database.sessions() as session:
        syntaxes = set(session.scalars(select(Instance.transfer_syntax_uid)))
    assert len(syntaxes) == len(SYNTAX_CASES)
    assert temporary_files(node.store.root) == []


def test_lossless_syntaxes_keep_pixels(node: NodeServices, tmp_path: Path) -> None:
    """Lossless encodings decode from storage to the original pixel values."""
    names = ("jpeg_lossless", "jpeg_lossless_sv1", "jpegls_lossless", "rle", "j2k_lossless")
    for name in names:
        sent, flags = _encode(tmp_path, name, 12)
        assert store_successes(storescu(node.listener.port, [sent], *flags)) == 1, name
        row = _assert_stored_exactly(node, sent)
        original = pydicom.dcmread(tmp_path / f"{name}.src.dcm").pixel_array
        stored = pydicom.dcmread(node.store.absolute(row.path)).pixel_array
        assert (stored == original).all(), name


def test_many_instances_in_one_association(node: NodeServices, tmp_path: Path) -> None:
    """A multi-file association stores every instance under one study row."""
    study_uid = generate_uid()
    files = [
        write_dataset(
            make_cxr_dataset(
                study_uid=study_uid, rows=32, cols=32, view_position=view, instance_number=i
            ),
            tmp_path / f"{i}.dcm",
        )
        for i, view in enumerate(["PA", "LL", "AP"], start=1)
    ]
    result = storescu(node.listener.port, files)
    assert store_successes(result) == 3
    for path in files:
        _assert_stored_exactly(node, path)
    with node.database.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.study_instance_uid == study_uid
        assert len(study.instances) == 3
        assert [i.view_position for i in study.instances] == ["PA", "LL", "AP"]


def test_study_row_records_header_facts(node: NodeServices, tmp_path: Path) -> None:
    """The study row carries the patient and study facts of the header, and the calling AE."""
    ds = make_cxr_dataset(
        rows=32,
        cols=32,
        patient_name="DOE^JANE",
        patient_id="PID-42",
        accession_number="ACC42",
        reason_for_exam="cough and fever",
        series_description="CHEST PA",
        laterality="L",
    )
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    sent = write_dataset(ds, tmp_path / "facts.dcm")
    result = storescu(node.listener.port, [sent], calling_ae="CR_ROOM_1")
    assert store_successes(result) == 1
    with node.database.sessions() as session:
        study = session.scalars(select(Study)).one()
        instance = study.instances[0]
    assert study.study_instance_uid == ds.StudyInstanceUID
    assert study.patient_name == "DOE^JANE"
    assert study.patient_id == "PID-42"
    assert study.patient_birth_date == "19600101"
    assert study.patient_sex == "O"
    assert study.accession_number == "ACC42"
    assert study.study_date == "20240517"
    assert study.study_time == "093000"
    assert study.study_description == "XR CHEST 1 VIEW"
    assert study.referring_physician == "HOUSE^GREGORY"
    assert study.reason_for_exam == "cough and fever"
    assert study.calling_ae == "CR_ROOM_1"
    assert study.first_received_at.tzinfo is not None
    assert instance.calling_ae == "CR_ROOM_1"
    assert instance.modality == "DX"
    assert instance.body_part == "CHEST"
    assert instance.view_position == "PA"
    assert instance.image_laterality == "L"
    assert instance.series_description == "CHEST PA"
    assert instance.series_instance_uid == ds.SeriesInstanceUID
    assert instance.sop_class_uid == DX_FOR_PRESENTATION
    assert (instance.rows, instance.columns) == (32, 32)
    assert (instance.series_number, instance.instance_number) == (1, 1)
    with node.database.sessions() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "instance_received" in actions


def test_identical_resend_is_not_duplicated(node: NodeServices, tmp_path: Path) -> None:
    """Sending the same instance twice keeps one row and one file, both answered Success."""
    sent = write_dataset(make_cxr_dataset(rows=32, cols=32), tmp_path / "one.dcm")
    for _ in range(2):
        result = storescu(node.listener.port, [sent])
        assert store_successes(result) == 1
    row = _assert_stored_exactly(node, sent)
    with node.database.sessions() as session:
        assert [i.id for i in session.scalars(select(Instance))] == [row.id]
        assert len(session.scalars(select(Study)).all()) == 1
        actions = session.scalars(select(AuditEvent.action)).all()
    assert actions.count("instance_received") == 1
    assert stored_files(node.store.root) == [node.store.absolute(row.path)]


def test_changed_resend_never_replaces_the_stored_instance(
        node: NodeServices, tmp_path: Path) -> None:
    """A re-send with other content is answered Success and kept in quarantine; the stored
    instance, its row and its file stay as first acknowledged."""
    ds = make_cxr_dataset(rows=32, cols=32, series_description="CHEST PA")
    first = write_dataset(ds, tmp_path / "v1.dcm")
    assert store_successes(storescu(node.listener.port, [first])) == 1
    old = _assert_stored_exactly(node, first)

    ds.SeriesDescription = "CHEST PA CORRECTED"
    second = write_dataset(ds, tmp_path / "v2.dcm")
    assert store_successes(storescu(node.listener.port, [second])) == 1
    kept = _assert_stored_exactly(node, first)

    assert (kept.id, kept.sha256, kept.path) == (old.id, old.sha256, old.path)
    assert kept.series_description == "CHEST PA"
    with node.database.sessions() as session:
        [quarantined] = session.scalars(select(QuarantinedInstance)).all()
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert quarantined.path is not None
    _, stored_dataset = read_part10(node.store.absolute(quarantined.path))
    assert stored_dataset == read_part10(second)[1]
    assert sorted(stored_files(node.store.root)) == sorted(
        [node.store.absolute(kept.path), node.store.absolute(quarantined.path)])
    assert actions.count("instance_quarantined") == 1


def test_concurrent_associations_share_one_study(node: NodeServices) -> None:
    """Parallel associations delivering one new study (and one instance twice) end with
    one study row, one row and one file per instance, every response Success."""
    study_uid = generate_uid()
    shared = make_cxr_dataset(study_uid=study_uid, rows=16, cols=16, bits=8)
    batches = [
        [shared]
        + [
            make_cxr_dataset(study_uid=study_uid, rows=16, cols=16, bits=8, instance_number=n)
            for n in range(4)
        ]
        for _ in range(4)
    ]
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(
            pool.map(
                lambda batch: exchange(
                    node.listener.port, batch, sop_classes=[DX_FOR_PRESENTATION]
                ),
                batches,
            )
        )
    assert [r.statuses for r in results] == [[0x0000] * 5] * 4
    with node.database.sessions() as session:
        studies = session.scalars(select(Study)).all()
        instances = session.scalars(select(Instance)).all()
    assert [s.study_instance_uid for s in studies] == [study_uid]
    assert len(instances) == 1 + 4 * 4
    assert {i.study_id for i in instances} == {studies[0].id}
    assert sorted(stored_files(node.store.root)) == sorted(
        node.store.absolute(i.path) for i in instances
    )


def test_studies_command_lists_states(node: NodeServices, tmp_path: Path) -> None:
    """``radnode studies --json`` lists each study with its state name and instance count."""
    study_uid = generate_uid()
    files = [
        write_dataset(
            make_cxr_dataset(study_uid=study_uid, rows=32, cols=32, instance_number=i),
            tmp_path / f"{i}.dcm",
        )
        for i in (1, 2)
    ]
    other = write_dataset(make_cxr_dataset(rows=32, cols=32), tmp_path / "other.dcm")
    result = storescu(node.listener.port, [*files, other])
    assert store_successes(result) == 3

    env = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
    env["RADNODE_DATABASE__URL"] = node.settings.database.url
    listing = subprocess.run(
        [*radnode_command(), "studies", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    rows = {row["study_uid"]: row for row in json.loads(listing.stdout)}
    assert set(rows) == {study_uid, pydicom.dcmread(other).StudyInstanceUID}
    assert rows[study_uid]["instances"] == 2
    assert rows[pydicom.dcmread(other).StudyInstanceUID]["instances"] == 1
    valid_states = {state.name for state in StudyState}
    assert all(row["state"] in valid_states for row in rows.values())
    assert rows[study_uid]["state"] == "RECEIVING"  # two images wait for the quiet period


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_leading_zero_uids_are_stored_and_served(tmp_path: Path, database_url: str) -> None:
    """Older devices send UID components with leading zeros: such an instance is stored
    (Success), found under its storage path and retrieved over WADO-RS."""
    study_uid, series_uid, sop_uid = ("1.2.826.0.1.3680043.8.498.0123",
                                      "1.2.826.0.1.3680043.8.498.0123.01",
                                      "1.2.826.0.1.3680043.8.498.0123.01.001")
    ds = make_cxr_dataset(rows=64, cols=64, study_uid=study_uid, series_uid=series_uid,
                          sop_uid=sop_uid)
    settings = receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": 600},
                                 web={"secret_key": "k" * 48})
    with running_node(settings) as services:
        result = exchange(services.listener.port, [ds], sop_classes=[str(ds.SOPClassUID)])
        assert result.established and result.statuses == [0x0000]

        row = _instance_row(services, sop_uid)
        assert row is not None
        assert row.path == services.store.relative_path(study_uid, series_uid, sop_uid,
                                                        row.sha256)
        assert pydicom.dcmread(services.store.absolute(row.path)).SOPInstanceUID == sop_uid

        with services.database.sessions.begin() as session:
            token = issue_service_token(session, "gpu-host-1", actor="test")
        app = create_app(settings, services.database, services.store)
        with TestClient(app, base_url="http://radnode.test") as client:
            response = client.get(
                f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
                headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert sop_uid.encode() in response.content
