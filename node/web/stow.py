"""STOW-RS (PS3.18 §10.5): store instances over HTTP, through the C-STORE ingest path.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take
``multipart/related; type="application/dicom"``: one Part 10 file per part. Each instance
goes through :class:`~node.dicom.ingest.InstanceIngestor`, as a C-STORE does: the same
size limits before any inflation or decoding (``[dicom.limits]``), the same storage
watermark, file and folder fsynced and the index row committed before the answer, the
same overwrite, identity and quarantine policies, the same audit trail (with the user as
actor), and the same hand-off to assembly (the study is RECEIVING; its quiet timer
decides when it is complete). Callers: an uploader's login cookie from this origin, or a
personal token with the ``dicomweb-store`` scope (:func:`~node.web.service_auth.
require_instance_writer`).

The body is streamed, never held whole: parts go to one anonymous temporary file on the
storage volume (gone with the process) as they arrive, at most ``[web]
stow_max_request_mb`` in all (413 beyond, nothing stored) and ``stow_max_instance_mb``
per instance (beyond, that instance fails with 0xA700 and only its first bytes are kept to
name it). Instances are then ingested one at a time, each read into memory once, as a
C-STORE's data set is.

Each part is stored as C-STORE stores an instance: its 128-byte preamble replaced by zeros
(a preamble can hold another file format), added when a client sends the file meta first.

The answer is ``application/dicom+json`` (the Store Instances Response Module, PS3.18
Annex I): ``ReferencedSOPSequence`` for instances stored (with their WADO-RS URL; a
quarantined one with Warning Reason :data:`WARNING_QUARANTINED` and no URL),
``FailedSOPSequence`` with the C-STORE status as Failure Reason (0xA700, 0xA900, 0xC210,
0x0110), 0xC122 for a transfer syntax the node does not accept, 0x0122 for a SOP class
that is not a storage class and 0xC409 for an instance of another study than the URL's.
HTTP 200 when every instance was stored without warning, 409 when none was, 202 otherwise.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO, Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom.presentation import AllStoragePresentationContexts
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from node.db.models import AccessToken, AuditEvent, Instance, Study
from node.db.types import utcnow
from node.dicom.ingest import IngestOutcome, InstanceIngestor, ReceivedInstance
from node.dicom.scp import ACCEPTED_TRANSFER_SYNTAXES
from node.dicom.statuses import StoreStatus
from node.logs import log_event
from node.storage import is_valid_uid
from node.web.deps import Viewer, client_address, get_context
from node.web.service_auth import require_instance_writer

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: The calling AE title recorded for instances received over STOW-RS.
STOW_CALLING_AE = "STOW-RS"
#: Failure Reason: the transfer syntax is not one the node stores (PS3.18 Table I.2-2).
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
#: Failure Reason: not a storage SOP class (PS3.18 Table I.2-2).
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: Warning Reason (radnode): kept aside for an administrator, not joined to its study —
#: it conflicts with a stored instance or with the study's patient identity.
WARNING_QUARANTINED = 0xB100
#: At most this many instances in one request (413 beyond).
MAX_PARTS = 10_000
#: Bytes of an oversized part kept to read its file meta (its UIDs).
HEAD_BYTES = 64 * 1024
#: Bytes handed to the multipart parser at a time (on a worker thread).
_PARSE_BATCH = 1 << 20
_STORAGE_CLASSES = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)
_ACCEPTED_SYNTAXES = frozenset(ACCEPTED_TRANSFER_SYNTAXES)


class PayloadTooLarge(Exception):
    """The request body, or its number of parts, is over the limit."""


@dataclass
class _Part:
    """One part of the body, kept in the spool file."""

    offset: int
    length: int = 0
    kept: int = 0
    content_type: bytes | None = None
    oversize: bool = False


@dataclass
class _Body:
    """The parts of a request as they arrive (the parser's callbacks)."""

    spool: IO[bytes]
    max_instance: int
    parts: list[_Part] = field(default_factory=list)
    ended: bool = False
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _headers: dict[bytes, bytes] = field(default_factory=dict)

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise PayloadTooLarge(f"more than {MAX_PARTS} instances in one request")
        self.parts.append(_Part(offset=self.spool.tell()))
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _headers_done(self) -> None:
        self.parts[-1].content_type = self._headers.get(b"content-type")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.length += end - start
        limit = HEAD_BYTES if part.length > self.max_instance else self.max_instance
        if part.length > self.max_instance:
            part.oversize = True
        room = max(limit - part.kept, 0)
        if room:
            chunk = data[start:min(end, start + room)]
            self.spool.write(chunk)
            part.kept += len(chunk)

    def _end(self) -> None:
        self.ended = True

    def read(self, part: _Part) -> bytes:
        self.spool.seek(part.offset)
        return self.spool.read(part.kept)


@dataclass(frozen=True)
class _Result:
    """What became of one instance."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    warning: int | None = None
    reason: str = ""


_PREAMBLE = b"\0" * 128 + b"DICM"


def _as_part10(data: bytes) -> bytes:
    """The part as C-STORE stores an instance: a zeroed preamble, ``DICM``, file meta,
    data set. A preamble is replaced by zeros (it may carry another file format), and one
    that is missing (some clients send the file meta first) is added."""
    if data[128:132] == b"DICM":
        return _PREAMBLE + data[132:]
    if data[:2] == b"\x02\x00":  # group 0002 first: file meta without a preamble
        return _PREAMBLE + data
    return data


def _media_type(value: bytes | None) -> str:
    return parse_options_header(value)[0].decode("latin-1") if value else ""


class StowService:
    """The store handler, bound to an ingestor and the size limits.

    Parameters
    ----------
    ingestor
        The C-STORE ingest path.
    max_request_bytes
        Largest request body.
    max_instance_bytes
        Largest instance in it.
    """

    def __init__(self, ingestor: InstanceIngestor, max_request_bytes: int,
                 max_instance_bytes: int) -> None:
        self.ingestor = ingestor
        self.max_request_bytes = max_request_bytes
        self.max_instance_bytes = max_instance_bytes

    async def store(self, request: Request, viewer: Viewer, study: str | None) -> Response:
        """Answer one STOW-RS request (see the module's description)."""
        if study is not None and not is_valid_uid(study):
            raise HTTPException(400, "not a valid DICOM UID")
        boundary = self._check_request(request)
        with tempfile.TemporaryFile(dir=self.ingestor.store.root) as spool:
            body = _Body(spool, self.max_instance_bytes)
            try:
                await self._receive(request, body, boundary)
            except PayloadTooLarge as exc:
                log_event(logger, logging.WARNING, "stow_refused", reason="too_large")
                raise HTTPException(413, str(exc)) from None
            except MultipartParseError:
                raise HTTPException(400, "the multipart body is malformed") from None
            except ClientDisconnect:
                log_event(logger, logging.WARNING, "stow_refused", reason="disconnected")
                raise HTTPException(400, "the request ended early") from None
            except OSError as exc:
                log_event(logger, logging.ERROR, "stow_spool_failed", error=type(exc).__name__)
                raise HTTPException(503, "the node's storage cannot take the request now") \
                    from None
            if not body.ended:
                raise HTTPException(400, "the multipart body ends before its closing "
                                         "boundary")
            if not body.parts:
                raise HTTPException(400, "the request holds no instance")
            for part in body.parts:
                if part.content_type is not None \
                        and _media_type(part.content_type) != "application/dicom":
                    raise HTTPException(415, "every part must be application/dicom")
            results = await run_in_threadpool(self._store_all, body, viewer, study)
        # The answer queries and audits the database: off the event loop too.
        return await run_in_threadpool(self._answer, request, viewer, study, results)

    def _check_request(self, request: Request) -> bytes:
        media, options = parse_options_header(request.headers.get("content-type"))
        if media != b"multipart/related":
            raise HTTPException(415, 'STOW-RS takes multipart/related; type="application/dicom"')
        if options.get(b"type", b"").lower() != b"application/dicom":
            raise HTTPException(415, 'only type="application/dicom" parts are stored '
                                     "(no metadata and bulk data parts)")
        boundary = options.get(b"boundary")
        if not boundary or len(boundary) > 70:
            raise HTTPException(400, "the multipart boundary is missing or too long")
        accept = request.headers.get("accept", "")
        if accept and not any(kind in accept for kind in (DICOM_JSON, "application/json",
                                                          "*/*", "application/*")):
            raise HTTPException(406, "the response is application/dicom+json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() \
                and int(declared) > self.max_request_bytes:
            raise HTTPException(413, f"the request is larger than "
                                     f"{self.max_request_bytes} bytes")
        return boundary

    async def _receive(self, request: Request, body: _Body, boundary: bytes) -> None:
        parser = MultipartParser(boundary, body.callbacks())  # type: ignore[arg-type]
        total = 0
        batch = bytearray()
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.max_request_bytes:
                raise PayloadTooLarge(f"the request is larger than {self.max_request_bytes} "
                                      "bytes")
            batch += chunk
            if len(batch) >= _PARSE_BATCH:
                await run_in_threadpool(parser.write, bytes(batch))
                batch.clear()
        if batch:
            await run_in_threadpool(parser.write, bytes(batch))
        parser.finalize()

    def _store_all(self, body: _Body, viewer: Viewer, study: str | None) -> list[_Result]:
        return [self._store_one(body.read(part), part, viewer, study) for part in body.parts]

    def _store_one(self, data: bytes, part: _Part, viewer: Viewer,
                   study: str | None) -> _Result:
        data = _as_part10(data)
        try:  # the file meta alone: nothing is inflated or decoded here
            stream = BytesIO(data)
            read_preamble(stream, force=False)
            meta = _read_file_meta_info(stream)
            sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
            sop_instance = str(meta.get("MediaStorageSOPInstanceUID", ""))
            syntax = str(meta.get("TransferSyntaxUID", ""))
        except Exception:
            sop_class = sop_instance = syntax = ""
        if not syntax or not sop_instance:
            return _Result(sop_class, sop_instance, int(StoreStatus.CANNOT_UNDERSTAND),
                           reason="not a DICOM Part 10 file")
        if part.oversize:
            return _Result(sop_class, sop_instance, int(StoreStatus.OUT_OF_RESOURCES),
                           reason="over stow_max_instance_mb")
        if syntax not in _ACCEPTED_SYNTAXES:
            return _Result(sop_class, sop_instance, TRANSFER_SYNTAX_NOT_SUPPORTED,
                           reason="transfer syntax not accepted")
        if sop_class not in _STORAGE_CLASSES:
            return _Result(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED,
                           reason="not a storage SOP class")
        outcome: IngestOutcome = self.ingestor.ingest(ReceivedInstance(
            encoded=data, requested_sop_class_uid=sop_class,
            requested_sop_instance_uid=sop_instance, calling_ae=STOW_CALLING_AE,
            actor=viewer.username, expected_study_uid=study))
        if outcome.status != StoreStatus.SUCCESS:
            return _Result(sop_class, sop_instance, int(outcome.status), reason=outcome.reason)
        if outcome.quarantined is not None:
            return _Result(sop_class, sop_instance, warning=WARNING_QUARANTINED,
                           reason=outcome.reason)
        return _Result(sop_class, sop_instance, reason=outcome.reason)

    def _answer(self, request: Request, viewer: Viewer, study: str | None,
                results: list[_Result]) -> Response:
        ctx = get_context(request)
        stored = [r for r in results if r.failure is None]
        failed = [r for r in results if r.failure is not None]
        where: dict[str, tuple[str, str]] = {}
        with ctx.database.sessions() as session:
            for row in session.execute(
                    select(Instance.sop_instance_uid, Study.study_instance_uid,
                           Instance.series_instance_uid)
                    .join(Study, Study.id == Instance.study_id)
                    .where(Instance.sop_instance_uid.in_(
                        [r.sop_instance_uid for r in stored if r.warning is None]))):
                where[row[0]] = (row[1], row[2])
        answer = Dataset()
        studies = {where[r.sop_instance_uid][0] for r in stored if r.sop_instance_uid in where}
        only_study = study or (studies.pop() if len(studies) == 1 else None)
        answer.RetrieveURL = (str(request.url_for("dicomweb_retrieve_study", study=only_study))
                              if only_study else None)
        if failed:
            answer.FailedSOPSequence = [self._item(r) for r in failed]
        if stored:
            items = []
            for result in stored:
                item = self._item(result)
                location = where.get(result.sop_instance_uid)
                item.RetrieveURL = None
                if location is not None and result.warning is None:
                    study_uid, series_uid = location
                    item.RetrieveURL = str(request.url_for(
                        "dicomweb_retrieve_instance", study=study_uid, series=series_uid,
                        instance=result.sop_instance_uid))
                items.append(item)
            answer.ReferencedSOPSequence = items
        warned = [r for r in stored if r.warning is not None]
        status = 200 if not failed and not warned else 409 if not stored else 202
        self._audit(request, viewer, study, stored, failed, warned)
        log_event(logger, logging.INFO if status == 200 else logging.WARNING, "stow_received",
                  stored=len(stored), failed=len(failed), warnings=len(warned),
                  status=status, user_id=viewer.id,
                  failures=sorted({f"0x{r.failure:04X}" for r in failed if r.failure}))
        return Response(json.dumps(answer.to_json_dict()), status_code=status,
                        media_type=DICOM_JSON)

    @staticmethod
    def _item(result: _Result) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = result.sop_class_uid
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        if result.failure is not None:
            item.FailureReason = result.failure
        if result.warning is not None:
            item.WarningReason = result.warning
        return item

    @staticmethod
    def _audit(request: Request, viewer: Viewer, study: str | None, stored: list[_Result],
               failed: list[_Result], warned: list[_Result]) -> None:
        ctx = get_context(request)
        details = {"client": client_address(request),
                   "via": "session" if viewer.token_id is None else "token",
                   "stored": len(stored), "failed": len(failed), "quarantined": len(warned),
                   "failures": {r.sop_instance_uid or "?": f"0x{r.failure:04X}"
                                for r in failed[:100] if r.failure is not None}}
        if viewer.token_id is not None:
            details["token_id"] = viewer.token_id
        touch = getattr(request.state, "touch_token", None)
        try:  # each stored instance has its own event already (written by the ingest)
            with ctx.database.sessions.begin() as session:
                now = utcnow()
                session.add(AuditEvent(at=now, actor=viewer.username, user_id=viewer.id,
                                       action="stow_request",
                                       object_type="study" if study else "dicomweb",
                                       object_id=study, details=details))
                if touch is not None:
                    session.execute(update(AccessToken).where(AccessToken.id == touch)
                                    .values(last_used_at=now))
        except DBAPIError as exc:
            log_event(logger, logging.ERROR, "audit_unrecorded", action="stow_request",
                      user_id=viewer.id, error=type(exc.orig or exc).__name__)


WriterDep = Annotated[Viewer, Depends(require_instance_writer)]


def build_stow_router(service: StowService) -> APIRouter:
    """The two STOW-RS routes, to be mounted at ``/dicomweb``."""
    router = APIRouter()

    @router.post("/studies", name="dicomweb_store")
    async def store(request: Request, viewer: WriterDep) -> Response:
        return await service.store(request, viewer, None)

    @router.post("/studies/{study}", name="dicomweb_store_study")
    async def store_study(request: Request, study: str, viewer: WriterDep) -> Response:
        return await service.store(request, viewer, study)

    return router


__all__ = [
    "SOP_CLASS_NOT_SUPPORTED",
    "TRANSFER_SYNTAX_NOT_SUPPORTED",
    "WARNING_QUARANTINED",
    "StowService",
    "build_stow_router",
]
