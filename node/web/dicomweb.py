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
    ``multipart/related; type="application/dicom"`` with each stored Part 10 file as it is
    (no transcoding); the ``/metadata`` variants answer ``application/dicom+json`` without
    bulk data (Pixel Data and binary values over :data:`BULK_DATA_THRESHOLD` bytes are
    omitted).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fastapi import APIRouter, HTTPException, Request, params
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
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
from node.dicom.qr_query import find, find_objects
from node.logs import log_event
from node.reports.evidence import EvidenceChanged, audit_mismatch, changed_behind_signed_reports
from node.storage import InstanceStore, is_valid_uid
from workers.inference.dicom_limits import check_encoded

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'

#: The largest ``limit`` or ``offset`` accepted (a signed 64-bit integer); larger: 400.
MAX_QUERY_NUMBER = 2**63 - 1
#: The most matches one search returns; ask for the rest with ``offset``.
MAX_RESULTS = 1000
#: Binary values longer than this (bytes) are left out of metadata.
BULK_DATA_THRESHOLD = 1024
_CHUNK = 1 << 20
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_SPLIT_MEDIA_RANGES = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
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


def _accepts(request: Request, media_type: str, syntaxes: set[str] | None = None) -> bool:
    """Whether the Accept header allows ``media_type`` (and the stored transfer syntaxes)."""
    header = request.headers.get("accept", "").strip()
    if not header:
        return True
    main = media_type.split(";")[0]
    for media_range in _SPLIT_MEDIA_RANGES.split(header):
        kind, *parameters = [part.strip() for part in media_range.split(";")]
        options = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            options[name.strip().lower()] = value.strip().strip('"')
        kind = kind.lower()
        if kind in ("*/*", f"{main.split('/')[0]}/*"):
            return True
        if kind == main == "multipart/related":
            if options.get("type", "application/dicom") not in ("application/dicom",):
                continue
            wanted = options.get("transfer-syntax", "*")
            if wanted == "*" or (syntaxes is not None and syntaxes == {wanted}):
                return True
        elif kind == main or (main == DICOM_JSON and kind == "application/json"):
            return True
    return False


def _check_uid(value: str) -> str:
    if not is_valid_uid(value):
        raise HTTPException(400, "not a valid DICOM UID")
    return value


def _strip_bulk_data(dataset: Dataset) -> None:
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                _strip_bulk_data(item)
        elif element.VR in _BINARY_VRS and (element.tag == 0x7FE00010
                                            or len(element.value or b"") > BULK_DATA_THRESHOLD):
            del dataset[element.tag]


class _DicomWeb:
    """The handlers, bound to the database and the store."""

    def __init__(self, sessions: sessionmaker[Session], store: InstanceStore) -> None:
        self.sessions = sessions
        self.store = store

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

    def _objects(self, request: Request, filters: dict[str, str]) -> list[StoredObject]:
        for value in filters.values():
            _check_uid(value)
        try:
            with self.sessions() as session:
                found = find_objects(session, filters)
                wanted: dict[int, set[str]] = {}
                for item in found:
                    if not item.is_report:
                        wanted.setdefault(item.study_id, set()).add(item.sop_instance_uid)
                changed = changed_behind_signed_reports(session, self.store, wanted)
            if changed:
                self._refuse_changed_evidence(request, changed)
        except SQLAlchemyError as exc:
            log_event(logger, logging.ERROR, "dicomweb_database_error",
                      error=type(exc).__name__)
            raise HTTPException(503, "database unavailable") from exc
        present = []
        for item in found:
            if self.store.absolute(item.path).is_file():
                present.append(item)
            else:
                log_event(logger, logging.ERROR, "dicomweb_file_missing",
                          sop_instance_uid=item.sop_instance_uid)
        if not present:
            raise HTTPException(404, "no such instances")
        return present

    def _refuse_changed_evidence(
        self, request: Request, changed: Sequence[tuple[int, EvidenceChanged]]
    ) -> NoReturn:
        """Audit images that no longer hold what a report was signed on; answer 409."""
        viewer = getattr(request.state, "viewer", None)
        actor = getattr(viewer, "username", None) or "dicomweb"
        user_id = getattr(viewer, "id", None)
        with self.sessions.begin() as session:
            for study_id, error in changed:
                audit_mismatch(session, study_id, error, actor=actor, user_id=user_id,
                               during="wado_rs")
        raise HTTPException(409, str(changed[0][1]))

    def _transfer_syntax(self, item: StoredObject) -> str:
        if item.transfer_syntax_uid:
            return item.transfer_syntax_uid
        meta = read_file_meta_info(self.store.absolute(item.path))
        return str(meta.TransferSyntaxUID)

    def retrieve(self, request: Request, filters: dict[str, str]) -> Response:
        objects = self._objects(request, filters)
        syntaxes = [self._transfer_syntax(item) for item in objects]
        if not _accepts(request, "multipart/related", set(syntaxes)):
            raise HTTPException(
                406, 'instances are served as multipart/related; type="application/dicom" '
                     "in their stored transfer syntax")
        boundary = uuid.uuid4().hex
        log_event(logger, logging.INFO, "dicomweb_retrieve", instances=len(objects))
        return StreamingResponse(
            self._multipart(objects, syntaxes, boundary),
            media_type=f"{MULTIPART_DICOM}; boundary={boundary}",
        )

    def _multipart(
        self, objects: Sequence[StoredObject], syntaxes: Sequence[str], boundary: str
    ) -> Iterator[bytes]:
        for item, syntax in zip(objects, syntaxes, strict=True):
            path = self.store.absolute(item.path)
            yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}"
                   f"\r\nContent-Length: {path.stat().st_size}\r\n\r\n").encode("ascii")
            with path.open("rb") as stream:
                while chunk := stream.read(_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    def metadata(self, request: Request, filters: dict[str, str]) -> Response:
        if not _accepts(request, DICOM_JSON):
            raise HTTPException(406, "metadata is application/dicom+json")
        results = []
        for item in self._objects(request, filters):
            try:
                check_encoded(self.store.absolute(item.path))  # before any inflation
                dataset = dcmread(self.store.absolute(item.path), stop_before_pixels=True)
                _strip_bulk_data(dataset)
                results.append(dataset.to_json_dict())
            except Exception as exc:
                log_event(logger, logging.ERROR, "dicomweb_metadata_unreadable",
                          sop_instance_uid=item.sop_instance_uid, error=type(exc).__name__)
        if not results:
            raise HTTPException(404, "no readable instances")
        return Response(json.dumps(results), media_type=DICOM_JSON)


def build_dicomweb_router(
    sessions: sessionmaker[Session],
    store: InstanceStore,
    *,
    dependencies: Sequence[params.Depends] = (),
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

    Returns
    -------
    fastapi.APIRouter
        The routes, named ``dicomweb_*``.
    """
    if not dependencies:
        log_event(logger, logging.WARNING, "dicomweb_router_unauthenticated")
    web = _DicomWeb(sessions, store)
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
                          {"StudyInstanceUID": _check_uid(study)})

    @router.get("/studies/{study}/instances", name="dicomweb_search_study_instances")
    def search_study_instances(request: Request, study: str) -> Response:
        return web.search(request, image_level, study_level,
                          {"StudyInstanceUID": _check_uid(study)})

    @router.get("/studies/{study}/series/{series}/instances",
                name="dicomweb_search_series_instances")
    def search_series_instances(request: Request, study: str, series: str) -> Response:
        return web.search(request, image_level, series_level, {
            "StudyInstanceUID": _check_uid(study),
            "SeriesInstanceUID": _check_uid(series),
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
                                      "SOPInstanceUID": instance})

    @router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
                name="dicomweb_instance_metadata")
    def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
        return web.metadata(request, {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                      "SOPInstanceUID": instance})

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
