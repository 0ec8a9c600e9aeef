"""Writing a model draft as a DICOM SR into storage, with ids fixed per study and model."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from node.reports.sr_builder import build_draft_sr, sr_to_bytes
from node.reports.sr_content import ModelProvenance, ReportContent
from node.reports.sr_index import SrIndex, sr_index_of
from node.reports.sr_language import template_in_language
from node.storage import InstanceStore

#: Series number of the node's draft SRs (image series use small numbers).
DRAFT_SERIES_NUMBER = 9001
_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass(frozen=True)
class StoredSR:
    """Where an SR was written and its identifiers."""

    path: str | None
    """Relative to the storage root; ``None`` for an SR handed over in ``data``."""
    sop_instance_uid: str
    series_instance_uid: str
    data: bytes | None = None
    """The encoded SR of a worker without the node's storage folder: it travels in the
    report row and the node stores it (:mod:`node.reports.handover`)."""
    index: SrIndex | None = None
    """The SR's series and status attributes, for the report row."""


def draft_uids(study_uid: str, device_uid: str) -> tuple[str, str]:
    """Series and SOP Instance UIDs of the draft of ``study_uid`` by model ``device_uid``.

    The same study and model build always give the same UIDs, so a redelivered job
    cannot create a second draft SR (the report's SOP Instance UID is unique).
    """
    series = generate_uid(entropy_srcs=[study_uid, device_uid, "radnode-draft-series"])
    sop = generate_uid(entropy_srcs=[study_uid, device_uid, "radnode-draft-sr"])
    return str(series), str(sop)


def write_draft_sr(
    store: InstanceStore | None,
    instance_paths: Sequence[Path],
    content: ReportContent,
    model: ModelProvenance,
    *,
    language: str | None = None,
) -> StoredSR:
    """Build the draft SR for a study and store it durably.

    Parameters
    ----------
    store
        Instance storage (the SR lives beside the images); ``None`` on a worker without
        the node's storage folder: the SR is returned in ``data`` for the node to store.
    instance_paths
        The study's instances (local files); image headers become the SR's evidence.
    content
        Findings, impression and coded observations.
    model
        The drafting model's provenance.
    language
        RFC 5646 tag of the SR's language (``[reports] language``); the template's
        (en-US) when ``None``.

    Returns
    -------
    StoredSR
        The relative path and UIDs of the written SR (or its bytes, without a store).
    """
    evidence = [dcmread(path, stop_before_pixels=True) for path in instance_paths]
    evidence = [ds for ds in evidence if not str(ds.SOPClassUID).startswith(_SR_SOP_CLASS_PREFIX)]
    study_uid = str(evidence[0].StudyInstanceUID)
    series_uid, sop_uid = draft_uids(study_uid, model.device_uid)
    dataset = build_draft_sr(
        evidence,
        content,
        model,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=DRAFT_SERIES_NUMBER,
        instance_number=1,
        template=template_in_language(language),
    )
    data = sr_to_bytes(dataset)
    if store is None:
        return StoredSR(None, sop_uid, series_uid, data, sr_index_of(dataset))
    relative = store.relative_path(study_uid, series_uid, sop_uid,
                                   hashlib.sha256(data).hexdigest())
    store.write(relative, data)
    return StoredSR(relative, sop_uid, series_uid, index=sr_index_of(dataset))
