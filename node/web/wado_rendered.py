"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4).

* ``GET …/instances/{instance}/rendered`` and ``…/frames/{n}/rendered`` — the image
  (frame 1 of a multi-frame instance, or frame ``n``) rendered for display;
* ``GET /studies/{study}/thumbnail``, ``…/series/{series}/thumbnail``,
  ``…/instances/{instance}/thumbnail`` and ``…/frames/{n}/thumbnail`` — the same, fitted
  within :data:`THUMBNAIL_SIZE` pixels (a study's or series' first image).

Rendering is the node's display pipeline (:func:`workers.inference.preprocess.load_display_image`:
Modality LUT, VOI LUT sequence or window with its VOI LUT Function, MONOCHROME1 and
Presentation LUT Shape inversion, 8 bits, colour to grey). Query parameters:

``window=center,width[,function]``
    replaces the file's VOI (modality units; function ``linear``, ``linear-exact`` or
    ``sigmoid``, default ``linear``);
``viewport=vw,vh``
    scales the image to fit ``vw`` x ``vh`` pixels, keeping its aspect ratio (at most
    :data:`MAX_VIEWPORT`; for thumbnails at most :data:`THUMBNAIL_SIZE`, the default,
    and never enlarged);
``quality=1..100``
    JPEG quality (default :data:`DEFAULT_QUALITY`).

The answer is ``image/jpeg`` unless the Accept header (or an ``accept`` query parameter)
prefers ``image/png``; another media type answers 406, another parameter's bad value 400.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from PIL import Image
from pydicom.dataset import Dataset

from node.dicom.qr_keys import StoredObject
from node.logs import log_event
from node.web.imaging import _LRU, _with_window
from node.web.wado_frames import stored_pixels
from node.web.wado_media import MediaRange, read_accept
from node.web.wado_source import InstanceSource, unreadable
from workers.inference.preprocess import ImageDecodeError, load_display_image

logger = logging.getLogger(__name__)

JPEG, PNG = "image/jpeg", "image/png"
#: Largest viewport width or height of a rendered image.
MAX_VIEWPORT = 4096
#: Longest side of a thumbnail (and the largest viewport one may ask for).
THUMBNAIL_SIZE = 128
DEFAULT_QUALITY = 90
#: Bytes of rendered images kept for repeated requests (thumbnails, window presets).
RENDERED_CACHE_BYTES = 32 * 2**20
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


@dataclass(frozen=True)
class RenderRequest:
    """What a rendered or thumbnail request asks for."""

    media_type: str = JPEG
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = DEFAULT_QUALITY
    enlarge: bool = True
    """Whether an image smaller than the viewport is scaled up to fit it."""


def _media_type(ranges: list[MediaRange]) -> str:
    for media_range in ranges:
        for candidate in (JPEG, PNG):
            if media_range.matches(candidate):
                return candidate
    raise HTTPException(406, "rendered images are image/jpeg or image/png")


def _numbers(name: str, text: str, count: int) -> list[float]:
    parts = text.split(",")
    if len(parts) != count:
        raise HTTPException(400, f"{name} takes {count} comma-separated values")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise HTTPException(400, f"{name} takes numbers") from None
    if not all(math.isfinite(v) and abs(v) <= 1e9 for v in values):
        raise HTTPException(400, f"{name} is out of range")
    return values


def read_render_request(request: Request, *, largest: int = MAX_VIEWPORT) -> RenderRequest:
    """The media type and rendering parameters of a request (400/406 when unusable)."""
    query = request.query_params
    accept = query.get("accept") or request.headers.get("accept")
    media_type = _media_type(read_accept(accept))
    window = None
    if (text := query.get("window")) is not None:
        parts = text.split(",")
        function = "linear"
        if len(parts) == 3:
            function = parts.pop().strip().lower()
        if function not in _FUNCTIONS:
            raise HTTPException(400, "window function is linear, linear-exact or sigmoid")
        center, width = _numbers("window", ",".join(parts), 2)
        if width <= 0:
            raise HTTPException(400, "window width must be positive")
        window = (center, max(width, 1.0), _FUNCTIONS[function])
    viewport = None
    if (text := query.get("viewport")) is not None:
        width_px, height_px = _numbers("viewport", text, 2)
        if not (1 <= width_px <= largest and 1 <= height_px <= largest):
            raise HTTPException(400, f"viewport sides are 1 to {largest} pixels")
        viewport = (int(width_px), int(height_px))
    elif largest < MAX_VIEWPORT:
        viewport = (largest, largest)
    quality = DEFAULT_QUALITY
    if (text := query.get("quality")) is not None:
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 100:
            raise HTTPException(400, "quality is a whole number from 1 to 100")
        quality = int(text)
    return RenderRequest(media_type, window, viewport, quality,
                         enlarge=largest >= MAX_VIEWPORT)


def render_dataset(dataset: Dataset, wanted: RenderRequest) -> bytes:
    """Render a single-frame data set as ``wanted`` says.

    Raises
    ------
    ImageDecodeError
        When the pixels cannot be decoded or rendered.
    """
    source = dataset
    if wanted.window is not None:
        center, width, function = wanted.window
        source = _with_window(dataset, center, width)
        if "VOILUTFunction" in source:  # an element shared with ``dataset``: replace it
            del source.VOILUTFunction
        source.VOILUTFunction = function
    image = Image.fromarray(load_display_image(source).pixels, mode="L")
    if wanted.viewport is not None:
        scale = min(wanted.viewport[0] / image.width, wanted.viewport[1] / image.height)
        if scale < 1 or (scale > 1 and wanted.enlarge):
            size = (max(round(image.width * scale), 1), max(round(image.height * scale), 1))
            image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if wanted.media_type == PNG:
        image.save(buffer, format="PNG", compress_level=3)
    else:
        image.save(buffer, format="JPEG", quality=wanted.quality)
    return buffer.getvalue()


#: Rendered images kept, keyed by stored file (path, size, modification time), frame and
#: request; the signed-evidence check runs before the cache is looked at.
_RENDERED: _LRU[tuple[str, int, int, int, RenderRequest], bytes] = _LRU(
    RENDERED_CACHE_BYTES, len)


def forget_renderings() -> None:
    """Empty the cache of rendered images (to measure rendering itself)."""
    global _RENDERED
    _RENDERED = _LRU(RENDERED_CACHE_BYTES, len)


def render_item(source: InstanceSource, item: StoredObject, frame: int,
                wanted: RenderRequest) -> bytes:
    """Render frame ``frame`` of a stored instance (404 past the last frame, 413 over a
    size limit, 422 when it cannot be decoded); recent renderings come from a cache."""
    stat = source.store.absolute(item.path).stat()
    key = (item.path, stat.st_size, stat.st_mtime_ns, frame, wanted)
    cached = _RENDERED.get(key)
    if cached is not None:
        return cached
    pixels = stored_pixels(source, item)
    if frame > pixels.frames:
        raise HTTPException(404, f"the instance has {pixels.frames} frame(s)")
    try:
        data = render_dataset(pixels.single_frame(frame), wanted)
    except (ImageDecodeError, ValueError, NotImplementedError, RuntimeError) as exc:
        unreadable(item, exc)
    _RENDERED.put(key, data)
    return data


def _frame_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise HTTPException(400, "a frame number is a positive whole number")
    return int(text)


def _answer(source: InstanceSource, request: Request, objects: list[StoredObject],
            frame: int, wanted: RenderRequest, resource: str) -> Response:
    item = objects[0]
    data = render_item(source, item, frame, wanted)
    source.audit_read(request, [item], resource)
    log_event(logger, logging.INFO, "dicomweb_rendered", resource=resource,
              media_type=wanted.media_type)
    return Response(data, media_type=wanted.media_type)


def add_rendered_routes(router: APIRouter, source: InstanceSource) -> None:
    """Add the rendered and thumbnail routes to the DICOMweb router."""

    def instance_of(request: Request, study: str, series: str,
                    instance: str) -> list[StoredObject]:
        return [source.instance(request, study, series, instance, images_only=True)]

    @router.get(f"{_INSTANCE}/rendered", name="dicomweb_rendered_instance")
    def rendered_instance(request: Request, study: str, series: str,
                          instance: str) -> Response:
        wanted = read_render_request(request)
        return _answer(source, request, instance_of(request, study, series, instance), 1,
                       wanted, "rendered")

    @router.get(f"{_INSTANCE}/frames/{{frame}}/rendered", name="dicomweb_rendered_frame")
    def rendered_frame(request: Request, study: str, series: str, instance: str,
                       frame: str) -> Response:
        number = _frame_number(frame)
        wanted = read_render_request(request)
        return _answer(source, request, instance_of(request, study, series, instance),
                       number, wanted, "rendered")

    @router.get("/studies/{study}/thumbnail", name="dicomweb_study_thumbnail")
    def study_thumbnail(request: Request, study: str) -> Response:
        wanted = read_render_request(request, largest=THUMBNAIL_SIZE)
        objects = source.objects(request, {"StudyInstanceUID": study}, images_only=True)
        return _answer(source, request, objects, 1, wanted, "thumbnail")

    @router.get("/studies/{study}/series/{series}/thumbnail",
                name="dicomweb_series_thumbnail")
    def series_thumbnail(request: Request, study: str, series: str) -> Response:
        wanted = read_render_request(request, largest=THUMBNAIL_SIZE)
        objects = source.objects(request, {"StudyInstanceUID": study,
                                           "SeriesInstanceUID": series}, images_only=True)
        return _answer(source, request, objects, 1, wanted, "thumbnail")

    @router.get(f"{_INSTANCE}/thumbnail", name="dicomweb_instance_thumbnail")
    def instance_thumbnail(request: Request, study: str, series: str,
                           instance: str) -> Response:
        wanted = read_render_request(request, largest=THUMBNAIL_SIZE)
        return _answer(source, request, instance_of(request, study, series, instance), 1,
                       wanted, "thumbnail")

    @router.get(f"{_INSTANCE}/frames/{{frame}}/thumbnail", name="dicomweb_frame_thumbnail")
    def frame_thumbnail(request: Request, study: str, series: str, instance: str,
                        frame: str) -> Response:
        number = _frame_number(frame)
        wanted = read_render_request(request, largest=THUMBNAIL_SIZE)
        return _answer(source, request, instance_of(request, study, series, instance),
                       number, wanted, "thumbnail")


__all__ = [
    "DEFAULT_QUALITY",
    "MAX_VIEWPORT",
    "THUMBNAIL_SIZE",
    "RenderRequest",
    "add_rendered_routes",
    "forget_renderings",
    "read_render_request",
    "render_dataset",
    "render_item",
]
