"""Which stored image a draft was made from.

The drafting worker feeds the model one image, chosen by
:func:`workers.inference.frontal.select_frontal` from the headers of the study's stored
instances, in row order (``workers.jobs``: instances not removed by retention, ordered by
id). The draft's SR references every image of the study, not the one chosen, so the study
page repeats the same choice over the same instances, read from their files (header only,
size limits checked first); an instance whose file is gone is judged by the attributes its
row keeps. An image that arrived after the draft takes part too, as it would in a new draft.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from node.db.models import Instance, Report
from node.storage import InstanceStore
from workers.inference.dicom_limits import LimitExceeded, check_encoded
from workers.inference.frontal import select_frontal

logger = logging.getLogger(__name__)


def _row_header(instance: Instance) -> dict[str, Any]:
    """The view attributes an instance row keeps, keyed as DICOM keywords."""
    header: dict[str, Any] = {"Modality": instance.modality, "Rows": instance.rows,
                              "ViewPosition": instance.view_position,
                              "SeriesDescription": instance.series_description}
    if instance.image_type:
        header["ImageType"] = instance.image_type.split("\\")
    return {k: v for k, v in header.items() if v is not None}


def _header(store: InstanceStore, instance: Instance) -> Dataset | Mapping[str, Any]:
    if instance.purged_at is None:
        path = store.absolute(instance.path)
        try:
            check_encoded(path)
            return pydicom.dcmread(path, stop_before_pixels=True)
        except (LimitExceeded, OSError, ValueError, EOFError) as exc:
            logger.warning("draft_source_header_unreadable",
                           extra={"instance_id": instance.id, "error": type(exc).__name__})
    return _row_header(instance)


def draft_source_uid(store: InstanceStore, instances: Sequence[Instance],
                     draft: Report | None) -> str | None:
    """The SOP Instance UID of the image the draft was made from.

    Parameters
    ----------
    store
        Where the instance files are.
    instances
        The study's image instances (SR instances excluded), any order.
    draft
        The study's draft; ``None`` gives ``None``.

    Returns
    -------
    str or None
        ``None`` without a draft or when no image qualifies.
    """
    if draft is None:
        return None
    drafted = sorted(instances, key=lambda i: i.id)
    if not drafted:
        return None
    choice = select_frontal([_header(store, instance) for instance in drafted])
    return None if choice.index is None else drafted[choice.index].sop_instance_uid


__all__ = ["draft_source_uid"]
