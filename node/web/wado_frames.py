"""WADO-RS frames and bulk data resources (PS3.18 §10.4, retrieve of pixel data).

* ``GET …/instances/{instance}/frames/{list}`` — the frames of a comma-separated list of
  1-based frame numbers, one part each, in the order listed.
* ``GET …/instances/{instance}/bulkdata/{path}`` — a value that metadata gave as a
  ``BulkDataURI`` (:mod:`node.web.wado_bulkdata`); for Pixel Data, all frames.

Both answer ``multipart/related``: native bytes as ``application/octet-stream`` by
default, or a compressed instance's stored bitstream (see
:func:`node.web.wado_pixels.choose_pixel_form`). A frame past the last answers 404, a
malformed list 400, an Accept header the node cannot satisfy 406, an image over the size
limits 413, pixel data that cannot be decoded 422.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from node.dicom.qr_keys import StoredObject
from node.logs import log_event
from node.web.wado_bulkdata import PIXEL_DATA, chunks, find_element, parse_bulk_path
from node.web.wado_media import (
    MULTIPART,
    OCTET_STREAM,
    Part,
    multipart_body,
    multipart_media_type,
    read_accept,
)
from node.web.wado_pixels import (
    PixelForm,
    StoredPixels,
    choose_pixel_form,
    parse_frame_list,
)
from node.web.wado_source import InstanceSource, unreadable
from workers.inference.dicom_limits import LimitExceeded

logger = logging.getLogger(__name__)

_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


def stored_pixels(source: InstanceSource, item: StoredObject) -> StoredPixels:
    """The frames of a stored instance, its size limits checked (404 without pixels,
    413 over a limit, 422 unreadable)."""
    dataset = source.dataset(item, defer=True)
    try:
        return StoredPixels(dataset, source.limits, source.store.absolute(item.path))
    except LookupError:
        raise HTTPException(404, "the instance has no pixel data") from None
    except LimitExceeded as exc:
        raise HTTPException(413, f"the image is over a size limit ({exc.limit})") from exc
    except Exception as exc:
        unreadable(item, exc)


def _frames_parts(item: StoredObject, pixels: StoredPixels, numbers: Sequence[int],
                  form: PixelForm, *, one_part: bool) -> list[Part]:
    """The parts of a frames answer, decoded before the answer starts (so that a decoding
    failure can still answer 422)."""
    try:
        pixels.check_numbers(numbers)
    except LimitExceeded as exc:
        raise HTTPException(413, f"the frames asked for are over a size limit "
                                 f"({exc.limit})") from exc
    try:
        frames = [pixels.frame(number, form) for number in numbers]
    except HTTPException:
        raise
    except Exception as exc:
        unreadable(item, exc)
    if one_part:
        return [Part(form.content_type, frames, sum(len(f) for f in frames))]
    return [Part(form.content_type, [frame], len(frame)) for frame in frames]


def _multipart(parts: list[Part], part_type: str) -> StreamingResponse:
    boundary = uuid.uuid4().hex
    return StreamingResponse(multipart_body(parts, boundary),
                             media_type=multipart_media_type(part_type, boundary))


def retrieve_frames(source: InstanceSource, request: Request, study: str, series: str,
                    instance: str, frame_list: str) -> Response:
    """Answer a frames request (see the module docstring)."""
    numbers = parse_frame_list(frame_list)
    item = source.instance(request, study, series, instance, images_only=True)
    form = choose_pixel_form(read_accept(request.headers.get("accept")),
                             source.transfer_syntax(item))
    pixels = stored_pixels(source, item)
    parts = _frames_parts(item, pixels, numbers, form, one_part=False)
    source.audit_read(request, [item], "frames")
    log_event(logger, logging.INFO, "dicomweb_frames", frames=len(numbers),
              native=form.native)
    return _multipart(parts, form.media_type)


def retrieve_bulkdata(source: InstanceSource, request: Request, study: str, series: str,
                      instance: str, bulk_path: str) -> Response:
    """Answer a bulk data request (see the module docstring)."""
    path = parse_bulk_path(bulk_path)
    item = source.instance(request, study, series, instance)
    ranges = read_accept(request.headers.get("accept"))
    if path == (PIXEL_DATA,):
        form = choose_pixel_form(ranges, source.transfer_syntax(item))
        pixels = stored_pixels(source, item)
        numbers = list(range(1, pixels.frames + 1))
        parts = _frames_parts(item, pixels, numbers, form, one_part=form.native)
        source.audit_read(request, [item], "bulkdata")
        return _multipart(parts, form.media_type)
    if not any(r.kind == "*/*" or (r.matches(MULTIPART) and r.part_type in (None, OCTET_STREAM)
                                   and r.transfer_syntax in (None, "*",
                                                             "1.2.840.10008.1.2.1"))
               for r in ranges):
        raise HTTPException(406, 'bulk data is served as multipart/related; '
                                 'type="application/octet-stream"')
    dataset = source.dataset(item)
    value = bytes(find_element(dataset, path).value or b"")
    source.audit_read(request, [item], "bulkdata")
    part = Part(f"{OCTET_STREAM}; transfer-syntax=1.2.840.10008.1.2.1", chunks(value),
                len(value))
    return _multipart([part], OCTET_STREAM)


def add_pixel_routes(router: APIRouter, source: InstanceSource) -> None:
    """Add the frames and bulk data routes to the DICOMweb router."""

    @router.get(f"{_INSTANCE}/frames/{{frames}}", name="dicomweb_retrieve_frames")
    def frames_route(request: Request, study: str, series: str, instance: str,
                     frames: str) -> Response:
        return retrieve_frames(source, request, study, series, instance, frames)

    @router.get(f"{_INSTANCE}/bulkdata/{{bulk_path:path}}", name="dicomweb_bulkdata")
    def bulkdata_route(request: Request, study: str, series: str, instance: str,
                       bulk_path: str) -> Response:
        return retrieve_bulkdata(source, request, study, series, instance, bulk_path)


__all__ = ["add_pixel_routes", "retrieve_bulkdata", "retrieve_frames", "stored_pixels"]
