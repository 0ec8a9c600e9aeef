"""Which drafting failures are permanent (never retried)."""

from __future__ import annotations

import pytest
from pydicom.errors import InvalidDicomError

from node.reports.sr_builder import EvidenceError
from workers.errors import InstanceFetchError, PermanentJobError, is_permanent
from workers.inference.drafting import MixedStudyError, NoFrontalImageError
from workers.inference.preprocess import ImageDecodeError


@pytest.mark.parametrize("exc", [
    PermanentJobError("bad input"),
    ImageDecodeError("1.2.840.10008.1.2.4.90", "truncated codestream"),
    NoFrontalImageError("no frontal image"),
    MixedStudyError("two patients"),
    EvidenceError("all evidence must belong to one study of one patient"),
    InvalidDicomError("not a DICOM file"),
    AttributeError("'FileDataset' object has no attribute 'PatientID'"),
])
def test_deterministic_errors_are_permanent(exc: BaseException) -> None:
    """Undecodable pixels, missing attributes and identity conflicts fail at once."""
    assert is_permanent(exc)


@pytest.mark.parametrize("exc", [
    InstanceFetchError("node unreachable"), OSError("shared folder missing"),
    ConnectionError("broker"), RuntimeError("CUDA out of memory"),
])
def test_transient_errors_are_retried(exc: BaseException) -> None:
    """Infrastructure failures are retried with back-off."""
    assert not is_permanent(exc)
