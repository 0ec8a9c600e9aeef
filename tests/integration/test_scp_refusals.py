"""What the listener refuses, with which DICOM status, and that it keeps serving after."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, func, select, text

from node.db.models import Instance, Study
from node.dicom.statuses import StoreStatus
from node.runtime import NodeServices
from tests.conftest import free_port
from tests.dicom_factory import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    make_cxr_dataset,
    write_dataset,
)
from tests.integration.dicom_files import read_part10, stored_files, write_raw_part10
from tests.integration.dicom_net import (
    echoscu,
    exchange,
    receiver_settings,
    requires_dcmtk,
    running_node,
    store_successes,
    storescu,
)

SOP_CLASSES = (DX_FOR_PRESENTATION, CR_IMAGE_STORAGE)
SUCCESS = int(StoreStatus.SUCCESS)
CANNOT_UNDERSTAND = int(StoreStatus.CANNOT_UNDERSTAND)
OUT_OF_RESOURCES = int(StoreStatus.OUT_OF_RESOURCES)
DOES_NOT_MATCH = int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[NodeServices]:
    """A running node (no model bundle) on the parametrised database."""
    with running_node(receiver_settings(tmp_path, database_url)) as services:
        yield services


def _sqlite(tmp_path: Path) -> str:
    """Association-level refusals do not touch the database: one backend is enough."""
    return f"sqlite:///{tmp_path / 'radnode.db'}"


def _good(**attrs: object) -> Dataset:
    return make_cxr_dataset(rows=16, cols=16, bits=8, **attrs)  # type: ignore[arg-type]


def _row_count(node: NodeServices) -> tuple[int, int]:
    with node.database.sessions() as session:
        instances = session.scalar(select(func.count(Instance.id)))
        studies = session.scalar(select(func.count(Study.id)))
    return int(instances or 0), int(studies or 0)


def _assert_nothing_stored(node: NodeServices) -> None:
    assert _row_count(node) == (0, 0)
    assert stored_files(node.store.root) == []


def _assert_still_serving(node: NodeServices) -> None:
    """A good instance sent afterwards is stored."""
    good = _good()
    assert exchange(node.listener.port, [good], sop_classes=SOP_CLASSES).statuses == [SUCCESS]
    with node.database.sessions() as session:
        uids = session.scalars(select(Instance.sop_instance_uid)).all()
    assert good.SOPInstanceUID in uids


def _raw_variant(tmp_path: Path, name: str, dataset_bytes: bytes, sop_uid: str) -> Path:
    return write_raw_part10(
        tmp_path / f"{name}.dcm",
        dataset_bytes,
        sop_class_uid=DX_FOR_PRESENTATION,
        sop_instance_uid=sop_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def _broken_variants(tmp_path: Path) -> dict[str, Path]:
    """Part 10 files whose dataset encodings are broken in different ways."""
    source = _good()
    _, body = read_part10(write_dataset(source, tmp_path / "source.dcm"))
    sop = str(source.SOPInstanceUID)
    rows_tag = struct.pack("<HH", 0x0028, 0x0010) + b"US"
    study_uid_at = body.index(struct.pack("<HH", 0x0020, 0x000D))
    variants = {
        # Cut inside the Study Instance UID value: what is left still parses leniently.
        "cut_inside_a_value": body[: study_uid_at + 12],
        # Cut in the middle of an element header.
        "cut_inside_a_header": body[: study_uid_at + 5],
        # The pixel data element declares more bytes than were sent.
        "value_runs_past_end": body[:-10],
        # An element appended whose length points far beyond the data.
        "length_beyond_end": body + struct.pack("<HH", 0x0011, 0x0010) + b"LO"
        + struct.pack("<H", 500) + b"abc",
        # Rows (US) encoded with a 3-byte value.
        "bad_value_length": body.replace(
            rows_tag + struct.pack("<H", 2) + struct.pack("<H", 16),
            rows_tag + struct.pack("<H", 3) + b"\x10\x00\x00",
        ),
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
    }
    return {name: _raw_variant(tmp_path, name, data, sop) for name, data in variants.items()}


def test_malformed_datasets_are_not_understood(node: NodeServices, tmp_path: Path) -> None:
    """Truncated, overlong and garbled encodings get 0xC210 and leave no file and no row."""
    variants = _broken_variants(tmp_path)
    result = exchange(node.listener.port, list(variants.values()), sop_classes=SOP_CLASSES)
    assert result.established
    assert dict(zip(variants, result.statuses, strict=True)) == {
        name: CANNOT_UNDERSTAND for name in variants
    }
    _assert_nothing_stored(node)
    _assert_still_serving(node)


def test_missing_required_uid_is_not_understood(node: NodeServices) -> None:
    """A dataset without a Study Instance UID cannot be filed: 0xC210."""
    ds = _good()
    del ds.StudyInstanceUID
    assert exchange(node.listener.port, [ds], sop_classes=SOP_CLASSES).statuses == [
        CANNOT_UNDERSTAND
    ]
    _assert_nothing_stored(node)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
def test_invalid_uids_are_not_understood(node: NodeServices) -> None:
    """Series Instance UIDs that are not UIDs (path tricks included) get 0xC210."""
    datasets = []
    for bad_uid in ("../../etc", "1.2.abc", "1." + "2" * 70):
        ds = _good()
        ds.SeriesInstanceUID = bad_uid
        datasets.append(ds)
    result = exchange(node.listener.port, datasets, sop_classes=SOP_CLASSES)
    assert result.statuses == [CANNOT_UNDERSTAND] * 3
    _assert_nothing_stored(node)


def test_pixel_data_shorter_than_declared(node: NodeServices) -> None:
    """Rows x Columns larger than the pixel data sent gets 0xC210."""
    ds = _good()
    ds.Rows = 32  # 32 x 16 pixels declared, 16 x 16 sent
    assert exchange(node.listener.port, [ds], sop_classes=SOP_CLASSES).statuses == [
        CANNOT_UNDERSTAND
    ]
    _assert_nothing_stored(node)
    _assert_still_serving(node)


def test_sop_class_mismatch(node: NodeServices, tmp_path: Path) -> None:
    """A CR dataset sent as DX (request SOP class differs from the dataset's) gets 0xA900."""
    cr = _good(modality="CR")
    _, body = read_part10(write_dataset(cr, tmp_path / "cr.dcm"))
    as_dx = _raw_variant(tmp_path, "as_dx", body, str(cr.SOPInstanceUID))
    assert exchange(node.listener.port, [as_dx], sop_classes=SOP_CLASSES).statuses == [
        DOES_NOT_MATCH
    ]
    _assert_nothing_stored(node)
    _assert_still_serving(node)


def test_sop_instance_mismatch(node: NodeServices, tmp_path: Path) -> None:
    """A dataset sent under another SOP Instance UID than its own gets 0xC210."""
    ds = _good()
    _, body = read_part10(write_dataset(ds, tmp_path / "ds.dcm"))
    renamed = _raw_variant(tmp_path, "renamed", body, generate_uid())
    assert exchange(node.listener.port, [renamed], sop_classes=SOP_CLASSES).statuses == [
        CANNOT_UNDERSTAND
    ]
    _assert_nothing_stored(node)


def test_storage_watermark_refuses_then_recovers(tmp_path: Path, database_url: str) -> None:
    """Below the free-space watermark: 0xA700 and nothing stored; a node with a lower
    watermark on the same storage and database accepts again."""
    ds = _good()
    full = receiver_settings(tmp_path, database_url, storage={"min_free_mb": 2**40})
    with running_node(full) as node:
        result = exchange(node.listener.port, [ds], sop_classes=SOP_CLASSES)
        assert result.statuses == [OUT_OF_RESOURCES]
        _assert_nothing_stored(node)
        assert exchange(node.listener.port, [None]).statuses == [SUCCESS]  # echo still works
    relieved = receiver_settings(tmp_path, database_url, storage={"min_free_mb": 1})
    with running_node(relieved) as node:
        assert exchange(node.listener.port, [ds], sop_classes=SOP_CLASSES).statuses == [SUCCESS]
        assert _row_count(node) == (1, 1)


def test_database_unreachable(node: NodeServices) -> None:
    """With the database gone entirely: 0xA700, no file left; back again: Success."""
    closed = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
        connect_args={"connect_timeout": 2},
    )
    working = node.database.sessions.kw["bind"]
    node.database.sessions.configure(bind=closed)
    try:
        result = exchange(node.listener.port, [_good()], sop_classes=SOP_CLASSES)
        assert result.statuses == [OUT_OF_RESOURCES]
        assert stored_files(node.store.root) == []
    finally:
        node.database.sessions.configure(bind=working)
        closed.dispose()
    _assert_nothing_stored(node)
    _assert_still_serving(node)


def test_database_failure_after_file_written(node: NodeServices) -> None:
    """When indexing fails after the file is written: 0xA700 and the file is removed."""
    with node.database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        result = exchange(node.listener.port, [_good()], sop_classes=SOP_CLASSES)
        assert result.statuses == [OUT_OF_RESOURCES]
        assert stored_files(node.store.root) == []
    finally:
        with node.database.engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    _assert_nothing_stored(node)
    _assert_still_serving(node)


def test_replacement_failure_keeps_previous_version(node: NodeServices) -> None:
    """If indexing a changed re-send fails, the stored previous version and its row stay."""
    ds = _good(series_description="FIRST")
    assert exchange(node.listener.port, [ds], sop_classes=SOP_CLASSES).statuses == [SUCCESS]
    before = stored_files(node.store.root)
    with node.database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        ds.SeriesDescription = "SECOND"
        result = exchange(node.listener.port, [ds], sop_classes=SOP_CLASSES)
        assert result.statuses == [OUT_OF_RESOURCES]
    finally:
        with node.database.engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert stored_files(node.store.root) == before
    with node.database.sessions() as session:
        row = session.scalars(select(Instance)).one()
    assert row.series_description == "FIRST"
    assert node.store.absolute(row.path) == before[0]


def test_storage_write_failure(node: NodeServices) -> None:
    """When the storage folder cannot be written: 0xA700, no row; once it is back: Success."""
    root = node.store.root
    shutil.rmtree(root)  # empty but for the listener's spool folder
    root.write_bytes(b"not a folder")  # every write under the root now fails
    try:
        result = exchange(node.listener.port, [_good()], sop_classes=SOP_CLASSES)
        assert result.statuses == [OUT_OF_RESOURCES]
        assert _row_count(node) == (0, 0)
    finally:
        root.unlink()
        root.mkdir()
    _assert_still_serving(node)


def test_unknown_calling_ae_is_rejected(tmp_path: Path) -> None:
    """A calling AE outside the allow-list is rejected: permanent, service user,
    "calling AE title not recognized"; an allowed one is accepted."""
    settings = receiver_settings(
        tmp_path, _sqlite(tmp_path), dicom={"allowed_calling_aes": ["MODALITY1"]}
    )
    with running_node(settings) as node:
        refused = exchange(node.listener.port, [None], calling_ae="INTRUDER")
        assert refused.rejected and not refused.established
        assert refused.reject is not None
        assert (refused.reject.result, refused.reject.result_source) == (0x01, 0x01)
        assert refused.reject.diagnostic == 0x03
        assert refused.reject.reason_str == "Calling AE title not recognised"
        accepted = exchange(node.listener.port, [None], calling_ae="MODALITY1")
        assert accepted.established and accepted.statuses == [SUCCESS]


def test_wrong_called_ae_is_rejected(tmp_path: Path) -> None:
    """With require_called_ae, an association to another AE title is rejected (0x07)."""
    settings = receiver_settings(tmp_path, _sqlite(tmp_path), dicom={"require_called_ae": True})
    with running_node(settings) as node:
        refused = exchange(node.listener.port, [None], called_ae="SOMEONEELSE")
        assert refused.rejected
        assert refused.reject is not None
        assert (refused.reject.result, refused.reject.result_source) == (0x01, 0x01)
        assert refused.reject.diagnostic == 0x07
        assert exchange(node.listener.port, [None], called_ae="RADNODE").statuses == [SUCCESS]


@requires_dcmtk
@pytest.mark.dcmtk
def test_dcmtk_senders_see_the_rejection(tmp_path: Path) -> None:
    """echoscu and storescu from an unlisted AE fail and store nothing."""
    settings = receiver_settings(
        tmp_path, _sqlite(tmp_path), dicom={"allowed_calling_aes": ["MODALITY1"]}
    )
    sent = write_dataset(_good(), tmp_path / "one.dcm")
    with running_node(settings) as node:
        echo = echoscu(node.listener.port, calling_ae="INTRUDER")
        assert echo.returncode != 0
        assert "Association Rejected" in echo.stdout + echo.stderr
        store = storescu(node.listener.port, [sent], calling_ae="INTRUDER")
        assert store.returncode != 0 and store_successes(store) == 0
        assert "Calling AE Title Not Recognized" in store.stdout + store.stderr
        _assert_nothing_stored(node)
        assert store_successes(storescu(node.listener.port, [sent], calling_ae="MODALITY1")) == 1
