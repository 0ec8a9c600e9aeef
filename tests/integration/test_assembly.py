"""Study assembly over real received instances: quiet period, early stability, selection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.assembly.service import AssemblyService
from node.config import AssemblySettings, Settings
from node.db.models import AuditEvent, Study
from node.runtime import Database, NodeServices
from node.states import IgnoreReason, StudyState
from tests.dicom_factory import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    SECONDARY_CAPTURE,
    make_cxr_dataset,
)
from tests.integration.dicom_net import exchange, receiver_settings, running_node, wait_for

QUIET = 10.0
ALONE = dt.timedelta(seconds=AssemblySettings().early_stable_after_seconds)
"""How long a single radiograph waits alone before early stability."""
SOP_CLASSES = (DX_FOR_PRESENTATION, CR_IMAGE_STORAGE, SECONDARY_CAPTURE)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """A 10 s quiet period; the tests drive the clock themselves."""
    return receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": QUIET})


@pytest.fixture
def receiver(settings: Settings) -> Iterator[NodeServices]:
    """A node whose listener runs but whose assembly loop does not (ticks are explicit)."""
    with running_node(settings, assembly=False) as services:
        yield services


@pytest.fixture
def assembly(receiver: NodeServices, settings: Settings) -> AssemblyService:
    """An assembly service on the receiver's database, without a drafting hook."""
    return AssemblyService(settings.assembly, receiver.database.sessions)


def _send(node: NodeServices, *datasets: Dataset) -> None:
    result = exchange(node.listener.port, datasets, sop_classes=SOP_CLASSES)
    assert result.statuses == [0x0000] * len(datasets)


def _chest(study_uid: str, number: int = 1, **attrs: object) -> Dataset:
    return make_cxr_dataset(  # type: ignore[arg-type]
        study_uid=study_uid, rows=16, cols=16, bits=8, instance_number=number, **attrs
    )


def _study(node: NodeServices, study_uid: str) -> Study:
    with node.database.sessions() as session:
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == study_uid)
        ).one()
        _ = study.instances
        return study


def _age(node: NodeServices, study_uid: str, seconds: float) -> None:
    """Pretend the study's last instance arrived ``seconds`` earlier than it did."""
    with node.database.sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        study.last_received_at -= dt.timedelta(seconds=seconds)


def test_quiet_period_slides_with_each_instance(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """A study stays RECEIVING while instances keep coming less than the quiet period apart."""
    uid = generate_uid()
    _send(receiver, _chest(uid, 1), _chest(uid, 2, view_position="LL"))
    _age(receiver, uid, QUIET - 2)  # the first two arrived 8 s ago
    first_seen = _study(receiver, uid).last_received_at
    assert assembly.tick(now=first_seen + dt.timedelta(seconds=1)) == []

    _send(receiver, _chest(uid, 3, view_position="AP"))  # arrives now
    last = _study(receiver, uid).last_received_at
    # Past the first instances' deadline, but within the quiet period of the last one.
    assert first_seen + dt.timedelta(seconds=QUIET) < last + dt.timedelta(seconds=QUIET - 1)
    assert assembly.tick(now=last + dt.timedelta(seconds=QUIET - 1)) == []
    assert _study(receiver, uid).state is StudyState.RECEIVING

    done = assembly.tick(now=last + dt.timedelta(seconds=QUIET))
    study = _study(receiver, uid)
    assert done == [study.id]
    assert study.state is StudyState.STABLE
    assert study.stable_at == last + dt.timedelta(seconds=QUIET)
    assert len(study.instances) == 3


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_single_radiograph_is_stable_at_once(
    receiver: NodeServices, assembly: AssemblyService, modality: str
) -> None:
    """A single CR or DX image is complete once it has been alone for
    ``early_stable_after_seconds``, long before the quiet period (early stability)."""
    uid = generate_uid()
    _send(receiver, _chest(uid, modality=modality))
    arrived = _study(receiver, uid).last_received_at
    assert dt.timedelta(seconds=QUIET) > ALONE
    assert assembly.tick(now=arrived) == []
    assert assembly.tick(now=arrived + ALONE) == [_study(receiver, uid).id]
    study = _study(receiver, uid)
    assert study.state is StudyState.STABLE
    assert study.state_reason == "1 frontal of 1 chest images"


def test_an_image_sent_right_after_the_first_keeps_the_study_open(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """A study still being sent is not closed on its first image: the lateral that follows
    within ``early_stable_after_seconds`` makes it a two-image study that waits."""
    uid = generate_uid()
    _send(receiver, _chest(uid, 1, view_position="LL"))
    first = _study(receiver, uid).last_received_at
    half = dt.timedelta(seconds=assembly.settings.early_stable_after_seconds / 2)
    assert assembly.tick(now=first + half) == []
    _send(receiver, _chest(uid, 2))
    last = _study(receiver, uid).last_received_at
    assert assembly.tick(now=last + 2 * half) == []
    assert _study(receiver, uid).state is StudyState.RECEIVING
    assert assembly.tick(now=last + dt.timedelta(seconds=QUIET)) == [_study(receiver, uid).id]
    assert _study(receiver, uid).state is StudyState.STABLE


def test_early_stability_can_be_turned_off(receiver: NodeServices, settings: Settings) -> None:
    """Without early stability a single image waits for the quiet period too."""
    rules = settings.assembly.model_copy(update={"early_stable_single_image": False})
    service = AssemblyService(rules, receiver.database.sessions)
    uid = generate_uid()
    _send(receiver, _chest(uid))
    arrived = _study(receiver, uid).last_received_at
    assert service.tick(now=arrived + dt.timedelta(seconds=QUIET - 1)) == []
    assert service.tick(now=arrived + dt.timedelta(seconds=QUIET)) == [_study(receiver, uid).id]


def test_multi_image_study_waits_for_quiet_period(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """Two images are not early-stable: the study completes only after the quiet period."""
    uid = generate_uid()
    _send(receiver, _chest(uid, 1), _chest(uid, 2, view_position="LL"))
    last = _study(receiver, uid).last_received_at
    assert assembly.tick(now=last) == []
    assert assembly.tick(now=last + dt.timedelta(seconds=QUIET - 0.5)) == []
    assert _study(receiver, uid).state is StudyState.RECEIVING
    assert len(assembly.tick(now=last + dt.timedelta(seconds=QUIET))) == 1
    study = _study(receiver, uid)
    assert study.state is StudyState.STABLE
    assert study.state_reason == "1 frontal of 2 chest images"


def test_lateral_only_study_is_ignored_with_reason(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """Laterals without a frontal view are IGNORED, with the reason recorded and audited."""
    uid = generate_uid()
    _send(
        receiver,
        _chest(uid, 1, view_position="LL"),
        _chest(uid, 2, view_position=None, series_description="CHEST LATERAL"),
    )
    last = _study(receiver, uid).last_received_at
    assembly.tick(now=last + dt.timedelta(seconds=QUIET))
    study = _study(receiver, uid)
    assert study.state is StudyState.IGNORED
    assert study.state_reason == IgnoreReason.NO_FRONTAL_VIEW.value
    with receiver.database.sessions() as session:
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "study_ignored")
        ).one()
    assert audit.study_id == study.id
    assert audit.details == {"reason": IgnoreReason.NO_FRONTAL_VIEW.value, "instances": 2}


def test_ct_study_is_ignored_after_quiet_period(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """A single non-radiography image is not early-stable and is then IGNORED."""
    uid = generate_uid()
    _send(receiver, _chest(uid, modality="CT", body_part="CHEST"))
    arrived = _study(receiver, uid).last_received_at
    assert assembly.tick(now=arrived) == []
    assembly.tick(now=arrived + dt.timedelta(seconds=QUIET))
    study = _study(receiver, uid)
    assert study.state is StudyState.IGNORED
    assert study.state_reason == IgnoreReason.NOT_RADIOGRAPHY.value


def test_secondary_capture_labelled_dx_is_ignored_with_reason(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """An RGB workstation screenshot labelled DX chest PA is IGNORED as derived, not drafted."""
    uid = generate_uid()
    screenshot = _chest(uid, modality="OT", view_position="PA")
    screenshot.Modality = "DX"
    screenshot.ConversionType = "WSD"
    screenshot.ImageType = ["DERIVED", "SECONDARY"]
    screenshot.SamplesPerPixel = 3
    screenshot.PhotometricInterpretation = "RGB"
    screenshot.PlanarConfiguration = 0
    screenshot.BitsAllocated = screenshot.BitsStored = 8
    screenshot.HighBit = 7
    screenshot.PixelData = bytes(16 * 16 * 3)
    assert screenshot.SOPClassUID == SECONDARY_CAPTURE
    _send(receiver, screenshot)
    arrived = _study(receiver, uid).last_received_at
    assembly.tick(now=arrived + dt.timedelta(seconds=QUIET))
    study = _study(receiver, uid)
    assert study.state is StudyState.IGNORED
    assert study.state_reason == IgnoreReason.DERIVED_ONLY.value
    assert study.instances[0].conversion_type == "WSD"
    assert study.instances[0].image_type == "DERIVED\\SECONDARY"


def test_late_instance_reopens_stable_study(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """An instance arriving after completion reopens the study, which completes again."""
    uid = generate_uid()
    _send(receiver, _chest(uid, 1))
    assembly.tick(now=_study(receiver, uid).last_received_at + ALONE)
    assert _study(receiver, uid).state is StudyState.STABLE

    _send(receiver, _chest(uid, 2, view_position="LL"))
    reopened = _study(receiver, uid)
    assert reopened.state is StudyState.RECEIVING
    assert reopened.stable_at is None
    assert reopened.state_reason is None
    assert assembly.tick(now=reopened.last_received_at) == []  # two images now: wait

    assembly.tick(now=reopened.last_received_at + dt.timedelta(seconds=QUIET))
    final = _study(receiver, uid)
    assert final.state is StudyState.STABLE
    assert len(final.instances) == 2


def test_late_instance_reopens_ignored_study(
    receiver: NodeServices, assembly: AssemblyService
) -> None:
    """A frontal view arriving after a lateral-only study was ignored gets it drafted."""
    uid = generate_uid()
    _send(receiver, _chest(uid, 1, view_position="LL"))
    assembly.tick(now=_study(receiver, uid).last_received_at + ALONE)
    assert _study(receiver, uid).state is StudyState.IGNORED
    _send(receiver, _chest(uid, 2, view_position="PA"))
    last = _study(receiver, uid).last_received_at
    assembly.tick(now=last + dt.timedelta(seconds=QUIET))
    assert _study(receiver, uid).state is StudyState.STABLE


def test_completion_survives_a_restart(tmp_path: Path, database_url: str) -> None:
    """Timers live in the database: a new service completes studies that fell due while down."""
    settings = receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": 30})
    uid = generate_uid()
    with running_node(settings) as node:  # the full node, assembly loop included
        _send(node, _chest(uid, 1), _chest(uid, 2, view_position="LL"))
        assert _study(node, uid).state is StudyState.RECEIVING
        last = _study(node, uid).last_received_at
    # The node is down; the quiet period passes.
    database = Database.from_settings(settings)
    try:
        service = AssemblyService(settings.assembly, database.sessions)
        done = service.tick(now=last + dt.timedelta(seconds=31))
        assert len(done) == 1
        with database.sessions() as session:
            study = session.scalars(select(Study)).one()
        assert study.state is StudyState.STABLE
    finally:
        database.engine.dispose()


def test_running_loop_completes_single_image(tmp_path: Path, database_url: str) -> None:
    """The node's own assembly loop promotes a single radiograph without explicit ticks."""
    settings = receiver_settings(tmp_path, database_url)
    uid = generate_uid()
    with running_node(settings) as node:
        _send(node, _chest(uid))
        wait_for(lambda: _study(node, uid).state is StudyState.STABLE, timeout=10,
                 what="the study to become STABLE")


def test_second_image_racing_the_loop_keeps_study_open(
    tmp_path: Path, database_url: str
) -> None:
    """However the loop interleaves with arrivals, a two-image study ends RECEIVING
    (never completed on its first image alone) until its quiet period passes."""
    settings = receiver_settings(
        tmp_path, database_url, assembly={"quiet_seconds": 600, "poll_seconds": 0.002}
    )
    uids = [generate_uid() for _ in range(10)]
    with running_node(settings) as node:
        for uid in uids:
            _send(node, _chest(uid, 1), _chest(uid, 2, view_position="LL"))
        states = {uid: _study(node, uid).state for uid in uids}
    assert set(states.values()) == {StudyState.RECEIVING}, states
