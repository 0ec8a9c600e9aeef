"""WADO-URI (PS3.18 §9): ``GET /dicomweb/wado?requestType=WADO&…``.

Parameters:

``requestType=WADO``, ``studyUID``, ``seriesUID``, ``objectUID``
    required; anything else answers 400.
``contentType``
    ``application/dicom``, ``image/jpeg`` or ``image/png`` (a comma-separated list is
    tried in order); default ``image/jpeg`` for an image, ``application/dicom`` for a
    report SR. An image type for an object without pixels, or no usable type: 406.
``transferSyntax``
    with ``application/dicom``: the syntax to send (default Explicit VR Little Endian),
    converted as WADO-RS converts (:mod:`node.web.wado_transcode`); one the node cannot
    produce: 406.
``frameNumber``, ``windowCenter`` + ``windowWidth``, ``rows``, ``columns``,
``imageQuality``
    with an image type: the frame (1-based), window (modality units), the largest size
    (aspect ratio kept) and JPEG quality.
``anonymize=yes``, ``region``, ``presentationUID``
    not supported: 400. ``annotation`` and ``charset`` are ignored.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from node.logs import log_event
from node.web.wado_media import DICOM
from node.web.wado_rendered import (
    DEFAULT_QUALITY,
    JPEG,
    MAX_VIEWPORT,
    PNG,
    RenderRequest,
    render_item,
)
from node.web.wado_source import InstanceSource
from node.web.wado_transcode import DicomForm, can_produce, instance_bytes

logger = logging.getLogger(__name__)

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_UNSUPPORTED = ("region", "presentationUID", "presentationSeriesUID")


def _whole(request: Request, name: str, low: int, high: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or not low <= int(text) <= high:
        raise HTTPException(400, f"{name} is a whole number from {low} to {high}")
    return int(text)


def _window(request: Request) -> tuple[float, float, str] | None:
    center, width = (request.query_params.get(n) for n in ("windowCenter", "windowWidth"))
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise HTTPException(400, "windowCenter and windowWidth go together")
    try:
        values = float(center), float(width)
    except ValueError:
        raise HTTPException(400, "windowCenter and windowWidth are numbers") from None
    if not all(abs(v) <= 1e9 for v in values) or values[1] <= 0:
        raise HTTPException(400, "windowWidth must be positive, both in range")
    return values[0], max(values[1], 1.0), "LINEAR"


def wado_uri(source: InstanceSource, request: Request) -> Response:
    """Answer a WADO-URI request (see the module docstring)."""
    query = request.query_params
    if query.get("requestType") != "WADO":
        raise HTTPException(400, "requestType must be WADO")
    uids = [query.get(n) for n in ("studyUID", "seriesUID", "objectUID")]
    if any(uid is None for uid in uids):
        raise HTTPException(400, "studyUID, seriesUID and objectUID are required")
    if query.get("anonymize", "").lower() == "yes" or any(n in query for n in _UNSUPPORTED):
        raise HTTPException(400, "anonymize, region and presentation states are not supported")
    study, series, instance = (str(uid) for uid in uids)
    item = source.instance(request, study, series, instance)
    requested = [t.strip().lower() for t in query.get("contentType", "").split(",") if t.strip()]
    if not requested:
        requested = [DICOM if item.is_report else JPEG]
    stored = source.transfer_syntax(item)
    for content_type in requested:
        if content_type == DICOM or (content_type == "*/*" and item.is_report):
            wanted = query.get("transferSyntax", _EXPLICIT_LE)
            if not can_produce(stored, wanted):
                raise HTTPException(406, "the object cannot be sent in that transfer syntax")
            form = DicomForm(wanted, wanted == stored, single_part=True)
            data = instance_bytes(source, item, form)
            source.audit_read(request, [item], "wado_uri")
            return Response(data, media_type=DICOM)
        if content_type in (JPEG, PNG, "image/*", "*/*") and not item.is_report:
            rows = _whole(request, "rows", 1, MAX_VIEWPORT)
            columns = _whole(request, "columns", 1, MAX_VIEWPORT)
            viewport = None if rows is None and columns is None else (
                columns or MAX_VIEWPORT, rows or MAX_VIEWPORT)
            wanted_image = RenderRequest(
                PNG if content_type == PNG else JPEG, _window(request), viewport,
                _whole(request, "imageQuality", 1, 100) or DEFAULT_QUALITY)
            frame = _whole(request, "frameNumber", 1, 10**9) or 1
            data = render_item(source, item, frame, wanted_image)
            source.audit_read(request, [item], "wado_uri")
            log_event(logger, logging.INFO, "wado_uri_rendered",
                      media_type=wanted_image.media_type)
            return Response(data, media_type=wanted_image.media_type)
    raise HTTPException(406, "contentType must be application/dicom, image/jpeg or "
                             "image/png (an image type only for an image)")


def add_wado_uri_route(router: APIRouter, source: InstanceSource) -> None:
    """Add ``GET /wado`` to the DICOMweb router."""

    @router.get("/wado", name="dicomweb_wado_uri")
    def wado_route(request: Request) -> Response:
        return wado_uri(source, request)


__all__ = ["add_wado_uri_route", "wado_uri"]
