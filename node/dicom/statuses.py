"""DIMSE status codes the node answers with (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

import enum


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    NOT_AUTHORIZED = 0x0124
    """Refused: the calling AE may not store (PS3.7 C.5.x general status)."""
    OUT_OF_RESOURCES = 0xA700
    """Also answered for an instance over a size limit (inflated size, pixel count)."""
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    STUDY_MISMATCH = 0xC409
    """STOW-RS only (never answered to C-STORE): the instance's Study Instance UID is not
    the study of the request URL (a radnode code in the Cannot understand range)."""
