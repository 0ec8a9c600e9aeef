"""DICOMweb read services: QIDO-RS search and WADO-RS retrieve, as a FastAPI router.

:func:`build_dicomweb_router` returns an :class:`~fastapi.APIRouter` that the web app mounts
at ``/dicomweb``::

    app.include_router(
        build_dicomweb_router(database.sessions, store, dependencies=[Depends(require_user)]),
        prefix="/dicomweb",
    )

Security: the router authenticates no one by itself. Every route runs the
``dependencies`` given, and in production one of them must authenticate the caller (the
web app's login dependency); a router built without any logs a warning. The services are
read-only.

Search (QIDO-RS, ``application/dicom+json``)
    ``GET /studies``, ``/series``, ``/instances``, ``/studies/{study}/series``,
    ``/studies/{study}/instances``, ``/studies/{study}/series/{series}/instances``. Query
    parameters are attribute keywords or tags (``PatientID``, ``00100020``) matched as in
    :mod:`node.dicom.qr_query`; UID lists and ``ModalitiesInStudy`` take ``,`` or ``\\``
    between values. ``limit`` (at most :data:`MAX_RESULTS`), ``offset``, ``includefield``
    (keywords, tags or ``all``) and ``fuzzymatching`` (ignored) are understood. No match
    answers 204; a page with more to come carries a ``Warning: 299`` header.

Retrieve (WADO-RS)
    ``GET /studies/{study}``, ``/studies/{study}/series/{series}``,
    ``/studies/{study}/series/{series}/instances/{instance}`` answer
    ``multipart/related; type="application/dicom"`` with each stored Part 10 file as it is,
    or converted to the transfer syntax the Accept header names
    (:mod:`node.web.wado_transcode`); an instance asked for as single-part
    ``application/dicom`` is the bare file. The ``/metadata`` variants answer
    ``application/dicom+json`` with a ``BulkDataURI`` for Pixel Data and binary values over
    :data:`BULK_DATA_THRESHOLD` bytes (:mod:`node.web.wado_bulkdata`).

Pixels and WADO-URI
    Frames and bulk data (:mod:`node.web.wado_frames`), rendered images and thumbnails
    (:mod:`node.web.wado_rendered`), and WADO-URI at ``/wado`` (:mod:`node.web.wado_uri`).
    Each retrieve resource checks the signed evidence behind the instances, the size
    limits before a file is parsed, and audits the read (:mod:`node.web.wado_source`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, params
from fastapi.responses import Response, StreamingResponse
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.dicom.qr_keys import (
    SUPPORTED_KEYS,
    Matching,
    Query,
    QueryError,
    QueryLevel,
    StoredObject,
    keys_for_level,
    match_dataset,
)
from node.dicom.qr_query import find
from node.logs import log_event
from node.storage import InstanceStore
from node.web.wado_bulkdata import BULK_DATA_THRESHOLD, metadata_json, read_metadata
from node.web.wado_frames import add_pixel_routes
from node.web.wado_media import DICOM, Part, multipart_body, multipart_media_type, read_accept
from node.web.wado_rendered import add_rendered_routes
from node.web.wado_source import InstanceSource, check_uid
from node.web.wado_transcode import DicomForm, choose_syntax, instance_bytes
from node.web.wado_uri import add_wado_uri_route
from workers.inference.dicom_limits import DEFAULT_LIMITS, DatasetLimits

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"

#: The largest ``limit`` or ``offset`` accepted (a signed 64-bit integer); larger: 400.
MAX_QUERY_NUMBER = 2**63 - 1
#: The most matches one search returns; ask for the rest with ``offset``.
MAX_RESULTS = 1000
_CHUNK = 1 << 20
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_CONTROL_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

#: Attributes returned by default (PS3.18 Table 10.6.3-3), by level.
STUDY_DEFAULTS = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
    "NumberOfSeriesRelatedInstances", "RetrieveURL", "StudyInstanceUID",
)
INSTANCE_DEFAULTS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL", "InstanceNumber",
    "Rows", "Columns", "StudyInstanceUID", "SeriesInstanceUID",
)
_EXTRA_KEYS = ("InstanceAvailability", "RetrieveURL")


@dataclass
class _Search:
    """A QIDO-RS request, read."""

    filters: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = MAX_RESULTS
    offset: int = 0
    ignored: list[str] = field(default_factory=list)


def _keyword(name: str) -> str | None:
    """The DICOM keyword of a query parameter name (a keyword or an 8-digit tag)."""
    if _TAG.match(name):
        return keyword_for_tag(int(name, 16)) or None
    return name if tag_for_keyword(name) is not None else None


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if number < 0:
        raise HTTPException(400, f"{name} must not be negative")
    if number > MAX_QUERY_NUMBER:
        raise HTTPException(400, f"{name} is out of range")
    return number


def _read_search(request: Request, level: QueryLevel) -> _Search:
    search = _Search()
    usable = set(keys_for_level(level))
    values: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        lowered = name.lower()
        if lowered == "limit":
            search.limit = min(_non_negative(name, value), MAX_RESULTS)
        elif lowered == "offset":
            search.offset = _non_negative(name, value)
        elif lowered == "includefield":
            for item in (v.strip() for v in value.split(",") if v.strip()):
                if item.lower() == "all":
                    search.include_all = True
                    continue
                keyword = _keyword(item)
                if keyword is None:
                    raise HTTPException(400, f"unknown attribute in includefield: {item}")
                search.include.add(keyword)
        elif lowered in _CONTROL_PARAMS:
            continue
        else:
            keyword = _keyword(name)
            if keyword is None:
                raise HTTPException(400, f"unknown query parameter: {name}")
            if keyword not in usable or SUPPORTED_KEYS[keyword].matching is Matching.RETURN_ONLY:
                search.ignored.append(keyword)
                continue
            values.setdefault(keyword, []).append(value)
    for keyword, given in values.items():
        matching = SUPPORTED_KEYS[keyword].matching
        if matching in (Matching.UID, Matching.MODALITIES):
            given = [part for v in given for part in v.replace("\\", ",").split(",")]
        search.filters[keyword] = "\\".join(given)
    return search


def _return_keys(level: QueryLevel, scope: QueryLevel, search: _Search) -> list[str]:
    """Default attributes of ``level`` and of the levels between it and the URL's scope."""
    if search.include_all:
        keys = [*keys_for_level(level), *_EXTRA_KEYS]
    else:
        keys = list(INSTANCE_DEFAULTS if level is QueryLevel.IMAGE else
                    SERIES_DEFAULTS if level is QueryLevel.SERIES else STUDY_DEFAULTS)
        if level is QueryLevel.IMAGE and scope < QueryLevel.SERIES:
            keys.extend(SERIES_DEFAULTS)
        if level > QueryLevel.STUDY and scope < QueryLevel.STUDY:
            keys.extend(STUDY_DEFAULTS)
        keys.extend(search.include)
    keys.extend(search.filters)
    usable = set(keys_for_level(level)) | set(_EXTRA_KEYS)
    return list(dict.fromkeys(k for k in keys if k in usable))


def _accepts(request: Request, media_type: str) -> bool:
    """Whether the Accept header allows ``media_type`` (JSON answers: also application/json)."""
    for media_range in read_accept(request.headers.get("accept")):
        if media_range.matches(media_type) or (
                media_type == DICOM_JSON and media_range.kind == "application/json"):
            return True
    return False


class _DicomWeb:
    """The handlers, bound to the database and the store."""

    def __init__(self, sessions: sessionmaker[Session], store: InstanceStore,
                 limits: DatasetLimits) -> None:
        self.sessions = sessions
        self.store = store
        self.source = InstanceSource(sessions, store, limits)

    # -- QIDO-RS ---------------------------------------------------------------------------------

    def search(
        self, request: Request, level: QueryLevel, scope: QueryLevel | None,
        fixed: dict[str, str],
    ) -> Response:
        if not _accepts(request, DICOM_JSON):
            raise HTTPException(406, "search results are application/dicom+json")
        search = _read_search(request, level)
        search.filters.update(fixed)
        keys = _return_keys(level, scope if scope is not None else QueryLevel.PATIENT, search)
        query = Query(level, search.filters, return_keys=set(keys),
                      limit=search.limit + 1, offset=search.offset)
        try:
            with self.sessions() as session:
                matches = find(session, query)
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc
        except DataError as exc:  # a value the database refuses (a NUL byte)
            log_event(logger, logging.WARNING, "dicomweb_value_refused",
                      error=type(exc.orig or exc).__name__)
            raise HTTPException(400, "a search value the database cannot compare") from exc
        except SQLAlchemyError as exc:
            log_event(logger, logging.ERROR, "dicomweb_database_error",
                      error=type(exc).__name__)
            raise HTTPException(503, "database unavailable") from exc
        warnings = []
        if search.ignored:
            names = ", ".join(sorted(set(search.ignored)))
            warnings.append(f'299 radnode "The following query keys were ignored: {names}"')
        if len(matches) > search.limit:
            matches = matches[: search.limit]
            warnings.append('299 radnode "There are additional results that can be requested"')
        headers = {"Warning": ", ".join(warnings)} if warnings else {}
        log_event(logger, logging.INFO, "dicomweb_search", query_level=level.name,
                  matches=len(matches))
        if not matches:
            return Response(status_code=204, headers=headers)
        body = [self._search_result(request, level, match, keys) for match in matches]
        return Response(json.dumps(body), media_type=DICOM_JSON, headers=headers)

    def _search_result(
        self, request: Request, level: QueryLevel, match: dict[str, Any], keys: list[str]
    ) -> dict[str, Any]:
        dataset = match_dataset(match, [k for k in keys if k not in _EXTRA_KEYS])
        if "InstanceAvailability" in keys:
            dataset.InstanceAvailability = "ONLINE"
        if "RetrieveURL" in keys:
            study = match["StudyInstanceUID"]
            if level is QueryLevel.STUDY:
                url = request.url_for("dicomweb_retrieve_study", study=study)
            elif level is QueryLevel.SERIES:
                url = request.url_for("dicomweb_retrieve_series", study=study,
                                      series=match["SeriesInstanceUID"])
            else:
                url = request.url_for("dicomweb_retrieve_instance", study=study,
                                      series=match["SeriesInstanceUID"],
                                      instance=match["SOPInstanceUID"])
            dataset.RetrieveURL = str(url)
        result: dict[str, Any] = dataset.to_json_dict()
        # A study without a modality (no instances with Modality) leaves ModalitiesInStudy
        # out rather than empty: OHIF's study list reads its Value unguarded and fails on
        # the whole page for one such study.
        if "Value" not in result.get("00080061", {"Value": None}):
            del result["00080061"]
        return result

    # -- WADO-RS --------------------------------------------------------------------------------

    def retrieve(self, request: Request, filters: dict[str, str], *,
                 single_allowed: bool = False) -> Response:
        objects = self.source.objects(request, filters)
        ranges = read_accept(request.headers.get("accept"))
        forms = []
        for item in objects:
            form = choose_syntax(ranges, self.source.transfer_syntax(item),
                                 single_allowed=single_allowed)
            if form is None:
                raise HTTPException(
                    406, 'instances are served as multipart/related; type="application/dicom"'
                         " in their stored transfer syntax, an uncompressed little endian "
                         "one, or a lossless one the node encodes")
            forms.append(form)
        if len(objects) == 1 and forms[0].single_part:
            data = instance_bytes(self.source, objects[0], forms[0])
            self.source.audit_read(request, objects, "instances")
            return Response(data, media_type=f"{DICOM}; transfer-syntax="
                                             f"{forms[0].transfer_syntax}")
        ready: dict[int, bytes] = {}
        if len(objects) == 1 and not forms[0].as_stored:  # refusals before the answer starts
            ready[0] = instance_bytes(self.source, objects[0], forms[0])
        self.source.audit_read(request, objects, "instances")
        boundary = uuid.uuid4().hex
        log_event(logger, logging.INFO, "dicomweb_retrieve", instances=len(objects),
                  transcoded=sum(not f.as_stored for f in forms))
        return StreamingResponse(
            multipart_body(self._parts(objects, forms, ready), boundary),
            media_type=multipart_media_type(DICOM, boundary),
        )

    def _parts(self, objects: Sequence[StoredObject], forms: Sequence[DicomForm],
               ready: dict[int, bytes]) -> Iterator[Part]:
        for index, (item, form) in enumerate(zip(objects, forms, strict=True)):
            content_type = f"{DICOM}; transfer-syntax={form.transfer_syntax}"
            if form.as_stored:
                path = self.store.absolute(item.path)
                yield Part(content_type, _file_chunks(path), path.stat().st_size)
                continue
            try:
                data = ready.pop(index, None) or instance_bytes(self.source, item, form)
            except HTTPException as exc:  # the answer has started: leave this one out
                log_event(logger, logging.ERROR, "dicomweb_transcode_failed",
                          sop_instance_uid=item.sop_instance_uid, status=exc.status_code)
                continue
            yield Part(content_type, [data], len(data))

    def metadata(self, request: Request, filters: dict[str, str]) -> Response:
        if not _accepts(request, DICOM_JSON):
            raise HTTPException(406, "metadata is application/dicom+json")
        results = []
        read = []
        for item in self.source.objects(request, filters):
            try:
                self.source.check_limits(item)  # before any inflation
                dataset, bulk = read_metadata(self.store.absolute(item.path),
                                              self.source.transfer_syntax(item))
                base = request.url_for("dicomweb_retrieve_instance",
                                       study=item.study_instance_uid,
                                       series=item.series_instance_uid,
                                       instance=item.sop_instance_uid)
                results.append(metadata_json(dataset, bulk, str(base)))
                read.append(item)
            except Exception as exc:
                log_event(logger, logging.ERROR, "dicomweb_metadata_unreadable",
                          sop_instance_uid=item.sop_instance_uid, error=type(exc).__name__)
        if not results:
            raise HTTPException(404, "no readable instances")
        self.source.audit_read(request, read, "metadata")
        return Response(json.dumps(results), media_type=DICOM_JSON)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def build_dicomweb_router(
    sessions: sessionmaker[Session],
    store: InstanceStore,
    *,
    dependencies: Sequence[params.Depends] = (),
    limits: DatasetLimits = DEFAULT_LIMITS,
) -> APIRouter:
    """Build the QIDO-RS and WADO-RS routes, to be mounted at ``/dicomweb``.

    Parameters
    ----------
    sessions
        Database session factory (only read from).
    store
        The instance store the indexed paths are relative to.
    dependencies
        FastAPI dependencies run before every route, e.g. ``[Depends(require_user)]``.
        The router has no authentication of its own: in production, one of these must
        authenticate the caller.
    limits
        Size limits checked before a stored file is parsed or its pixels decoded (the
        node's ``dicom.limits``).

    Returns
    -------
    fastapi.APIRouter
        The routes, named ``dicomweb_*``.
    """
    if not dependencies:
        log_event(logger, logging.WARNING, "dicomweb_router_unauthenticated")
    web = _DicomWeb(sessions, store, limits)
    router = APIRouter(dependencies=list(dependencies))
    study_level, series_level, image_level = QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE

    @router.get("/studies", name="dicomweb_search_studies")
    def search_studies(request: Request) -> Response:
        return web.search(request, study_level, None, {})

    @router.get("/series", name="dicomweb_search_series")
    def search_series(request: Request) -> Response:
        return web.search(request, series_level, None, {})

    @router.get("/instances", name="dicomweb_search_instances")
    def search_instances(request: Request) -> Response:
        return web.search(request, image_level, None, {})

    @router.get("/studies/{study}/series", name="dicomweb_search_study_series")
    def search_study_series(request: Request, study: str) -> Response:
        return web.search(request, series_level, study_level,
                          {"StudyInstanceUID": check_uid(study)})

    @router.get("/studies/{study}/instances", name="dicomweb_search_study_instances")
    def search_study_instances(request: Request, study: str) -> Response:
        return web.search(request, image_level, study_level,
                          {"StudyInstanceUID": check_uid(study)})

    @router.get("/studies/{study}/series/{series}/instances",
                name="dicomweb_search_series_instances")
    def search_series_instances(request: Request, study: str, series: str) -> Response:
        return web.search(request, image_level, series_level, {
            "StudyInstanceUID": check_uid(study),
            "SeriesInstanceUID": check_uid(series),
        })

    @router.get("/studies/{study}", name="dicomweb_retrieve_study")
    def retrieve_study(request: Request, study: str) -> Response:
        return web.retrieve(request, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/metadata", name="dicomweb_study_metadata")
    def study_metadata(request: Request, study: str) -> Response:
        return web.metadata(request, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}", name="dicomweb_retrieve_series")
    def retrieve_series(request: Request, study: str, series: str) -> Response:
        return web.retrieve(request, {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    @router.get("/studies/{study}/series/{series}/metadata", name="dicomweb_series_metadata")
    def series_metadata(request: Request, study: str, series: str) -> Response:
        return web.metadata(request, {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    @router.get("/studies/{study}/series/{series}/instances/{instance}",
                name="dicomweb_retrieve_instance")
    def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
        return web.retrieve(request, {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                      "SOPInstanceUID": instance}, single_allowed=True)

    @router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
                name="dicomweb_instance_metadata")
    def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
        return web.metadata(request, {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                      "SOPInstanceUID": instance})

    add_pixel_routes(router, web.source)
    add_rendered_routes(router, web.source)
    add_wado_uri_route(router, web.source)
    return router


__all__ = [
    "BULK_DATA_THRESHOLD",
    "DICOM_JSON",
    "INSTANCE_DEFAULTS",
    "MAX_RESULTS",
    "SERIES_DEFAULTS",
    "STUDY_DEFAULTS",
    "build_dicomweb_router",
]
