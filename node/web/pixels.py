"""Full-depth image values for window/level in the browser.

* ``GET /studies/{id}/pixels/{instance_id}.json`` — size, value mapping, windows and
  presets, Photometric Interpretation, orientation markers, view position and measurement
  spacing (:mod:`node.web.pixel_data`); no patient identity;
* ``GET /studies/{id}/pixels/{instance_id}.u16`` — the first frame's Modality-LUT values as
  little-endian unsigned 16-bit samples, row by row (``value = offset + scale * sample``),
  gzip-encoded when the browser accepts it. Audited as ``image_pixels_viewed``.

Both need a login, check the stored file against the digest of a signed report
(:mod:`node.reports.evidence`: a changed image answers 409, audited) on every request, and
the size limits of :mod:`workers.inference.dicom_limits` before decoding (422), and answer
``Cache-Control: no-store``. The decoded image comes from the renderer's cache of prepared
images (:meth:`node.web.imaging.ImageRenderer.prepared`, keyed by the file's identity on
disk), which the study page fills ahead for the next study of the worklist.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from node.web.deps import RowId, UserDep, audit_view, get_context
from node.web.imaging import ImageDecodeError, PreparedPixels
from node.web.stored_images import StoredImage, stored_image

logger = logging.getLogger(__name__)
router = APIRouter()

NO_STORE = {"Cache-Control": "private, no-store"}


def _prepared(request: Request, stored: StoredImage) -> PreparedPixels:
    try:
        return get_context(request).renderer.prepared(stored.path)
    except ImageDecodeError as exc:
        raise HTTPException(422, "the image cannot be decoded") from exc
    except FileNotFoundError as exc:
        raise HTTPException(404, "the image file is missing") from exc


@router.get("/studies/{study_id}/pixels/{instance_id}.json")
def pixel_description(study_id: RowId, instance_id: RowId, request: Request,
                      viewer: UserDep) -> Response:
    """How to read and display the image's samples."""
    stored = stored_image(request, viewer, study_id, instance_id, "pixels")
    return Response(_prepared(request, stored).description_json,
                    media_type="application/json", headers=NO_STORE)


@router.get("/studies/{study_id}/pixels/{instance_id}.u16")
def pixel_samples(study_id: RowId, instance_id: RowId, request: Request,
                  viewer: UserDep) -> Response:
    """The image's Modality-LUT values as little-endian unsigned 16-bit samples."""
    stored = stored_image(request, viewer, study_id, instance_id, "pixels")
    prepared = _prepared(request, stored)
    audit_view(get_context(request).database, viewer, "image_pixels_viewed", "instance",
               instance_id, study_id=study_id)
    headers = {**NO_STORE, "X-Image-Rows": str(prepared.rows),
               "X-Image-Columns": str(prepared.columns), "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        data = prepared.samples_gzip
        headers["Content-Encoding"] = "gzip"
    else:
        data = prepared.samples()
    return Response(data, media_type="application/octet-stream", headers=headers)
