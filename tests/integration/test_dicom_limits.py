"""Limits of the DICOM listener: concurrent associations and the maximum PDU size.

Association limits do not touch the database, so these tests run on SQLite only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom.association import Association

from node.config import ConfigError, load_settings
from node.dicom.statuses import StoreStatus
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_files import stored_files
from tests.integration.dicom_net import make_scu, receiver_settings, running_node

LOCAL_LIMIT_EXCEEDED = 0x02
REJECTED_TRANSIENT = 0x02


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'radnode.db'}"


def _associate(port: int) -> Association:
    ae = make_scu("LIMITSCU", [DX_FOR_PRESENTATION])
    return ae.associate("127.0.0.1", port, ae_title="RADNODE")


def test_associations_past_the_limit_are_rejected_until_one_ends(tmp_path: Path) -> None:
    """With ``max_associations = 2`` a third concurrent association is rejected (transient,
    local limit exceeded); once one is released a new one is accepted."""
    settings = receiver_settings(tmp_path, _sqlite(tmp_path), dicom={"max_associations": 2})
    with running_node(settings) as node:
        first, second = _associate(node.listener.port), _associate(node.listener.port)
        try:
            assert first.is_established and second.is_established
            third = _associate(node.listener.port)
            assert third.is_rejected
            assert third.acceptor.primitive is not None
            assert third.acceptor.primitive.result == REJECTED_TRANSIENT
            assert third.acceptor.primitive.diagnostic == LOCAL_LIMIT_EXCEEDED
            assert second.send_c_echo().Status == 0x0000  # the others are unaffected
        finally:
            first.release()
        fourth = _associate(node.listener.port)
        assert fourth.is_established
        fourth.release()
        second.release()


def test_the_maximum_pdu_size_is_offered_and_large_images_still_arrive(tmp_path: Path) -> None:
    """``max_pdu_size`` is the maximum length the node offers; an image many times larger
    is received whole in PDUs of that size."""
    settings = receiver_settings(tmp_path, _sqlite(tmp_path), dicom={"max_pdu_size": 16384})
    dataset = make_cxr_dataset(rows=256, cols=256, bits=12)
    with running_node(settings) as node:
        assoc = _associate(node.listener.port)
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 16384
        assert int(assoc.send_c_store(dataset).Status) == int(StoreStatus.SUCCESS)
        assoc.release()
        files = stored_files(node.store.root)
    assert len(files) == 1 and files[0].stat().st_size > 8 * 16384


def test_limits_are_validated(tmp_path: Path) -> None:
    """Zero associations, a negative or an over-long PDU size are configuration errors."""
    for dicom in ({"max_associations": 0}, {"max_pdu_size": -1},
                  {"max_pdu_size": 2**32}):
        with pytest.raises(ConfigError, match=r"dicom\.max_"):
            load_settings(dicom=dicom)
    assert load_settings(dicom={"max_pdu_size": 0}).dicom.max_pdu_size == 0
