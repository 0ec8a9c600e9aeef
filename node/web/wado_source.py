"""What every WADO resource does before it serves image data: find, check, audit, read.

:class:`InstanceSource` finds the stored instances a retrieve URL names, refuses the whole
request (409, audited ``signed_evidence_mismatch``) when a file behind a signed report no
longer holds its signed digest, writes the read to the audit trail, and reads a stored
file only after the size limits of :mod:`workers.inference.dicom_limits` (a file over
them answers 413, an unreadable one 422).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NoReturn

from fastapi import HTTPException, Request
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import AuditEvent
from node.db.types import utcnow
from node.dicom.qr_keys import StoredObject
from node.dicom.qr_query import find_objects
from node.logs import log_event
from node.reports.evidence import EvidenceChanged, audit_mismatch, changed_behind_signed_reports
from node.storage import InstanceStore, is_valid_uid
from workers.inference.dicom_limits import (
    DEFAULT_LIMITS,
    DatasetLimits,
    LimitExceeded,
    check_encoded,
)

logger = logging.getLogger(__name__)

#: Values longer than this (bytes) stay on disk until used when a file is read deferred.
DEFER_BYTES = 64 * 1024
#: Audit action of a DICOMweb read of stored instances (data, pixels or metadata).
READ_ACTION = "dicomweb_read"
#: Routes whose reads by a worker's token the authentication dependency already audits.
_AUDITED_BY_TOKEN = frozenset({
    "dicomweb_retrieve_study", "dicomweb_retrieve_series", "dicomweb_retrieve_instance",
})


def check_uid(value: str) -> str:
    """``value`` when it is a valid DICOM UID; 400 otherwise."""
    if not is_valid_uid(value):
        raise HTTPException(400, "not a valid DICOM UID")
    return value


class InstanceSource:
    """Stored instances for the WADO resources, checked and audited.

    Parameters
    ----------
    sessions
        Database session factory.
    store
        The instance store the indexed paths are relative to.
    limits
        Size limits checked before a stored file is parsed.
    """

    def __init__(self, sessions: sessionmaker[Session], store: InstanceStore,
                 limits: DatasetLimits = DEFAULT_LIMITS) -> None:
        self.sessions = sessions
        self.store = store
        self.limits = limits

    def objects(self, request: Request, filters: dict[str, str], *,
                images_only: bool = False) -> list[StoredObject]:
        """The stored instances matching the URL's UIDs, their signed evidence checked.

        Parameters
        ----------
        request
            The request (for the audit trail's actor).
        filters
            ``StudyInstanceUID`` and optionally ``SeriesInstanceUID``, ``SOPInstanceUID``.
        images_only
            Leave report SRs out (rendered resources, thumbnails).

        Raises
        ------
        fastapi.HTTPException
            400 for a malformed UID, 404 when nothing is left, 409 when a file behind a
            signed report changed, 503 when the database cannot answer.
        """
        for value in filters.values():
            check_uid(value)
        try:
            with self.sessions() as session:
                found = find_objects(session, filters)
                if images_only:
                    found = [item for item in found if not item.is_report]
                wanted: dict[int, set[str]] = {}
                for item in found:
                    if not item.is_report:
                        wanted.setdefault(item.study_id, set()).add(item.sop_instance_uid)
                changed = changed_behind_signed_reports(session, self.store, wanted)
            if changed:
                self.refuse_changed_evidence(request, changed)
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

    def instance(self, request: Request, study: str, series: str, instance: str, *,
                 images_only: bool = False) -> StoredObject:
        """The one stored instance a URL names (see :meth:`objects`)."""
        [item] = self.objects(request, {"StudyInstanceUID": study,
                                        "SeriesInstanceUID": series,
                                        "SOPInstanceUID": instance}, images_only=images_only)
        return item

    def refuse_changed_evidence(
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

    def audit_read(self, request: Request, objects: Sequence[StoredObject],
                   resource: str) -> None:
        """Write the read to the audit trail: one ``dicomweb_read`` event per study.

        The actor is the signed-in user (``dicomweb`` when the router's dependency sets
        none). A worker token's instance retrieve is audited by its authentication
        (``instances_fetched``) and not again here. A read is served even when its event
        cannot be written (full database volume): it is then logged at ERROR as
        ``audit_unrecorded`` with ids only.
        """
        viewer = getattr(request.state, "viewer", None)
        route = getattr(request.scope.get("route"), "name", None)
        if viewer is None and route in _AUDITED_BY_TOKEN and "authorization" in request.headers:
            return
        actor = getattr(viewer, "username", None) or "dicomweb"
        user_id = getattr(viewer, "id", None)
        studies: dict[int, tuple[str, int]] = {}
        for item in objects:
            uid, count = studies.get(item.study_id, (item.study_instance_uid, 0))
            studies[item.study_id] = (uid, count + 1)
        client = request.client.host if request.client else "unknown"
        token_id = getattr(viewer, "token_id", None)
        how = {"via": "session"} if token_id is None else {"via": "token", "token_id": token_id}
        now = utcnow()
        try:
            with self.sessions.begin() as session:
                for study_id, (uid, count) in studies.items():
                    session.add(AuditEvent(
                        at=now, actor=actor, user_id=user_id, action=READ_ACTION,
                        object_type="study", object_id=uid[:128], study_id=study_id,
                        details={"resource": resource, "instances": count, "client": client,
                                 **(how if viewer is not None else {})},
                    ))
        except DBAPIError as exc:
            log_event(logger, logging.ERROR, "audit_unrecorded", action=READ_ACTION,
                      user_id=user_id, resource=resource, studies=len(studies),
                      error=type(exc.orig or exc).__name__)

    def transfer_syntax(self, item: StoredObject) -> str:
        """The stored transfer syntax of an instance."""
        if item.transfer_syntax_uid:
            return item.transfer_syntax_uid
        meta = read_file_meta_info(self.store.absolute(item.path))
        return str(meta.TransferSyntaxUID)

    def check_limits(self, item: StoredObject) -> None:
        """Refuse (413) a stored file over the size limits, before it is parsed."""
        try:
            check_encoded(self.store.absolute(item.path), self.limits)
        except LimitExceeded as exc:
            log_event(logger, logging.WARNING, "dicomweb_over_limit",
                      sop_instance_uid=item.sop_instance_uid, limit=exc.limit)
            raise HTTPException(413, f"the stored instance is over a size limit "
                                     f"({exc.limit})") from exc

    def dataset(self, item: StoredObject, *, pixels: bool = True,
                defer: bool = False) -> Dataset:
        """Read a stored instance after checking its size limits.

        Parameters
        ----------
        item
            The instance.
        pixels
            Read Pixel Data too (it is left out otherwise).
        defer
            Leave values over :data:`DEFER_BYTES` on disk until used (not for a deflated
            file, which is read whole).

        Raises
        ------
        fastapi.HTTPException
            413 over a size limit, 422 when the file cannot be parsed.
        """
        self.check_limits(item)
        defer_size = (DEFER_BYTES if defer and not UID(self.transfer_syntax(item)).is_deflated
                      else None)
        try:
            return dcmread(self.store.absolute(item.path), stop_before_pixels=not pixels,
                           defer_size=defer_size)
        except Exception as exc:
            unreadable(item, exc)


def unreadable(item: StoredObject, exc: BaseException) -> NoReturn:
    """Log a stored instance that cannot be parsed or decoded, and answer 422."""
    log_event(logger, logging.ERROR, "dicomweb_instance_unreadable",
              sop_instance_uid=item.sop_instance_uid, error=type(exc).__name__)
    raise HTTPException(422, "the stored instance cannot be read or decoded") from exc


__all__ = ["DEFER_BYTES", "READ_ACTION", "InstanceSource", "check_uid", "unreadable"]
