"""The Query/Retrieve SCP: C-FIND, C-GET and C-MOVE over what the node holds.

Patient Root and Study Root information models, hierarchical queries at the PATIENT
(Patient Root only), STUDY, SERIES and IMAGE levels. Matching is done in the database by
:mod:`node.dicom.qr_query` (the keys are in :mod:`node.dicom.qr_keys`); report SRs are
instances of their own series.

* C-FIND answers one Pending response per match with the requested keys.
* C-GET sends the matching instances back over the same association as C-STORE
  sub-operations; the requestor proposes the storage SOP classes with the SCP role
  (SCP/SCU role selection), which the listener accepts.
* C-MOVE sends them over a new association to a destination known by its AE title in
  ``settings.destinations``; any other Move Destination is answered 0xA801.

Each instance travels in its stored transfer syntax when the peer accepted it, converted
between Explicit and Implicit VR Little Endian, decompressed when only uncompressed
syntaxes were accepted, or losslessly encoded when only such a syntax was (see
:mod:`node.dicom.retrieve_transfer`, which also lets a C-GET requestor's order of
transfer syntaxes decide, and names the C-MOVE requestor as Move Originator). An
instance that cannot be read or sent counts as a failed sub-operation; the others are still sent.

Handlers speak DICOM statuses and never raise into pynetdicom. Logs carry AE titles,
levels and counts; retrievals are recorded as audit events per study.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.config import Destination, Settings, TlsSettings
from node.db.models import AuditEvent
from node.db.types import utcnow
from node.dicom.access import AccessPolicy, Permission
from node.dicom.export import (
    MAX_PRESENTATION_CONTEXTS,
    UNCOMPRESSED_LITTLE_ENDIAN,
    build_client_ssl_context,
)
from node.dicom.qr_keys import (
    UNIQUE_KEYS,
    Query,
    QueryError,
    QueryLevel,
    StoredObject,
    keys_for_level,
    match_dataset,
)
from node.dicom.qr_query import find, find_objects
from node.dicom.retrieve_transfer import fit_to_syntaxes, originate_from, prefer_requestor_syntaxes
from node.logs import log_event
from node.reports.evidence import audit_mismatch, changed_behind_signed_reports
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: The information models served, by C-FIND, C-GET and C-MOVE SOP class.
PATIENT_ROOT_MODELS = frozenset({
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
})
STUDY_ROOT_MODELS = frozenset({
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
})
QUERY_RETRIEVE_SOP_CLASSES: tuple[str, ...] = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
FIND_SOP_CLASSES: tuple[str, ...] = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
"""Classes a calling AE needs the query permission for."""
RETRIEVE_SOP_CLASSES: tuple[str, ...] = (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
"""Classes a calling AE needs the retrieve permission for."""

# DIMSE statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
PENDING = 0xFF00
CANCELLED = 0xFE00
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_MATCHES = 0xA701
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x general status: Refused, not authorized



class _Refusal(Exception):
    """The request is answered with a failure status before any sub-operation."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class QueryRequest:
    """A C-FIND, C-GET or C-MOVE identifier, read."""

    level: QueryLevel
    filters: dict[str, str]
    identifier: Dataset
    patient_root: bool


def _element_text(value: Any) -> str:
    """A DICOM element value as its string form (multiple values ``\\``-joined)."""
    if value is None or isinstance(value, bytes | bytearray):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def read_request(identifier: Dataset, sop_class_uid: str) -> QueryRequest:
    """Read the level and the matching keys of a C-FIND, C-GET or C-MOVE identifier.

    Raises
    ------
    QueryError
        If the level is missing or not allowed by the information model.
    """
    patient_root = sop_class_uid in PATIENT_ROOT_MODELS
    level = QueryLevel.parse(str(identifier.get("QueryRetrieveLevel", "") or ""))
    if level is QueryLevel.PATIENT and not patient_root:
        raise QueryError("the PATIENT level is only in the Patient Root information model")
    filters: dict[str, str] = {}
    for element in identifier:
        if element.VR == "SQ" or not element.keyword or element.keyword == "QueryRetrieveLevel":
            continue
        filters[element.keyword] = _element_text(element.value)
    return QueryRequest(level, filters, identifier, patient_root)


def find_response(request: QueryRequest, match: dict[str, Any], ae_title: str) -> Dataset:
    """Build the C-FIND response identifier of one match.

    Every requested key is returned: with its value when the node has one at the query
    level, zero-length otherwise. The unique keys of the level and the levels above
    are always returned.
    """
    supported = set(keys_for_level(request.level))
    top = QueryLevel.PATIENT if request.patient_root else QueryLevel.STUDY
    unique = [UNIQUE_KEYS[QueryLevel(n)] for n in range(top, request.level + 1)]
    wanted = [e.keyword for e in request.identifier if e.keyword in supported]
    response = match_dataset(match, [*wanted, *(k for k in unique if k not in wanted)])
    for element in request.identifier:
        if element.tag in response or element.keyword in ("SpecificCharacterSet",
                                                          "QueryRetrieveLevel"):
            continue
        if element.keyword == "RetrieveAETitle":
            response.RetrieveAETitle = ae_title
        elif element.keyword == "InstanceAvailability":
            response.InstanceAvailability = "ONLINE"
        else:
            response.add_new(element.tag, element.VR, [] if element.VR == "SQ" else None)
    response.QueryRetrieveLevel = request.level.name
    return response


def retrieve_filters(request: QueryRequest) -> dict[str, str]:
    """The unique keys a C-GET or C-MOVE identifier selects instances by.

    Raises
    ------
    QueryError
        If the unique key of the level is missing, empty or holds wildcards.
    """
    top = QueryLevel.PATIENT if request.patient_root else QueryLevel.STUDY
    filters: dict[str, str] = {}
    for number in range(top, request.level + 1):
        keyword = UNIQUE_KEYS[QueryLevel(number)]
        value = request.filters.get(keyword, "").strip()
        if "*" in value or "?" in value:
            raise QueryError(f"{keyword} takes no wildcards in a retrieve")
        if value:
            filters[keyword] = value
    if UNIQUE_KEYS[request.level] not in filters:
        raise QueryError(f"a {request.level.name} retrieve needs {UNIQUE_KEYS[request.level]}")
    return filters


def _failed_list(uids: Sequence[str] = ()) -> Dataset:
    dataset = Dataset()
    dataset.FailedSOPInstanceUIDList = list(uids)
    return dataset


def _unsendable(item: StoredObject) -> Dataset:
    """A dataset pynetdicom cannot send: it counts the sub-operation as failed.

    It lacks its SOP Class UID, so the C-STORE is never attempted, and keeps the SOP
    Instance UID, which pynetdicom adds to the Failed SOP Instance UID List.
    """
    dataset = Dataset()
    dataset.SOPInstanceUID = item.sop_instance_uid
    return dataset


class QueryRetrieveService:
    """Query/Retrieve SCP handlers over the index and the instance store.

    Parameters
    ----------
    sessions
        Database session factory.
    store
        The instance store the indexed paths are relative to.
    ae_title
        The node's AE title (Retrieve AE Title in C-FIND responses).
    destinations
        The peers C-MOVE may send to, by AE title.
    tls
        The node's TLS settings, for destinations that speak TLS.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        *,
        ae_title: str,
        destinations: Sequence[Destination] = (),
        tls: TlsSettings | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.ae_title = ae_title
        self.destinations = {d.ae_title: d for d in destinations}
        self.tls = tls or TlsSettings()
        self.policy: AccessPolicy | None = None
        """Who may query and retrieve; the listener sets it (``None``: anyone)."""

    def _authorized(self, event: Any, permission: Permission) -> bool:
        calling_ae = _calling_ae(event)
        if self.policy is None or self.policy.allows(calling_ae, permission):
            return True
        log_event(logger, logging.WARNING, f"{permission.value}_not_authorized",
                  calling_ae=calling_ae)
        return False

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], store: InstanceStore
    ) -> QueryRetrieveService:
        """Build the service from the node's settings."""
        return cls(sessions, store, ae_title=settings.dicom.ae_title,
                   destinations=settings.destinations, tls=settings.dicom.tls)

    def add_contexts(self, ae: AE) -> None:
        """Accept the Query/Retrieve SOP classes (default transfer syntaxes) on ``ae``.

        pynetdicom's own logging of request identifiers, which hold patient data, is
        switched off for the process.
        """
        _config.LOG_REQUEST_IDENTIFIERS = False
        for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(sop_class)

    def handlers(self) -> list[tuple[Any, Callable[[Any], Any]]]:
        """The pynetdicom event handlers, for ``AE.start_server(evt_handlers=...)``."""
        return [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_REQUESTED, prefer_requestor_syntaxes),
        ]

    # -- C-FIND -----------------------------------------------------------------------------

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        """Answer a C-FIND: one Pending response per match, then Success."""
        calling_ae = _calling_ae(event)
        if not self._authorized(event, Permission.QUERY):
            yield NOT_AUTHORIZED, None
            return
        try:
            request = read_request(event.identifier, str(event.request.AffectedSOPClassUID))
            query = Query(request.level, request.filters, return_keys=set(request.filters))
            with self.sessions() as session:
                matches = find(session, query)
        except QueryError as exc:
            log_event(logger, logging.WARNING, "find_refused", calling_ae=calling_ae,
                      reason=str(exc))
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        except SQLAlchemyError as exc:
            log_event(logger, logging.ERROR, "find_database_error", calling_ae=calling_ae,
                      error=type(exc).__name__)
            yield OUT_OF_RESOURCES, None
            return
        except Exception:
            logger.exception("find_failed", extra={"calling_ae": calling_ae})
            yield UNABLE_TO_PROCESS, None
            return
        log_event(logger, logging.INFO, "find_answered", calling_ae=calling_ae,
                  query_level=request.level.name, matches=len(matches))
        for match in matches:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            try:
                response = find_response(request, match, self.ae_title)
            except Exception:
                logger.exception("find_response_failed", extra={"calling_ae": calling_ae})
                yield UNABLE_TO_PROCESS, None
                return
            yield PENDING, response

    # -- C-GET ------------------------------------------------------------------------------

    def on_get(self, event: Any) -> Iterator[Any]:
        """Answer a C-GET: the number of sub-operations, then one instance per yield."""
        calling_ae = _calling_ae(event)
        if not self._authorized(event, Permission.RETRIEVE):
            yield 1
            yield NOT_AUTHORIZED, _failed_list()
            return
        try:
            plan, withheld = self._plan(event, action="instances_retrieved", destination_ae=None)
        except _Refusal as refusal:
            log_event(logger, logging.WARNING, "get_refused", calling_ae=calling_ae,
                      status=f"0x{refusal.status:04X}", reason=refusal.reason)
            yield 1
            yield refusal.status, _failed_list()
            return
        log_event(logger, logging.INFO, "get_started", calling_ae=calling_ae,
                  instances=len(plan))
        yield len(plan)
        for item in plan:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            if item.sop_instance_uid in withheld:
                yield PENDING, _unsendable(item)
                continue
            yield PENDING, self._prepare(event.assoc, item)

    # -- C-MOVE -----------------------------------------------------------------------------

    def on_move(self, event: Any) -> Iterator[Any]:
        """Answer a C-MOVE: the destination, the number of sub-operations, the instances."""
        calling_ae = _calling_ae(event)
        destination_ae = str(event.move_destination or "").strip()
        destination = self.destinations.get(destination_ae)
        if not self._authorized(event, Permission.RETRIEVE):
            destination = None
        if destination is None:
            log_event(logger, logging.WARNING, "move_destination_unknown",
                      calling_ae=calling_ae, destination_ae=destination_ae)
            yield None, None
            return
        try:
            plan, withheld = self._plan(event, action="instances_moved",
                                        destination_ae=destination_ae)
        except _Refusal as refusal:
            # pynetdicom only answers a failure after associating with the destination.
            log_event(logger, logging.WARNING, "move_refused", calling_ae=calling_ae,
                      destination_ae=destination_ae, status=f"0x{refusal.status:04X}",
                      reason=refusal.reason)
            yield destination.host, destination.port, self._association_options(
                destination, [], [], calling_ae)
            yield 1
            yield refusal.status, _failed_list()
            return
        established: list[Association] = []
        yield destination.host, destination.port, self._association_options(
            destination, plan, established, calling_ae)
        log_event(logger, logging.INFO, "move_started", calling_ae=calling_ae,
                  destination_ae=destination_ae, instances=len(plan))
        yield len(plan)
        for item in plan:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            if not established or item.sop_instance_uid in withheld:
                # (no association: not reached, pynetdicom stops when it fails)
                yield PENDING, _unsendable(item)
                continue
            yield PENDING, self._prepare(established[0], item)

    def _association_options(
        self,
        destination: Destination,
        plan: Sequence[StoredObject],
        established: list[Association],
        requestor_ae: str,
    ) -> dict[str, Any]:
        """``AE.associate`` keyword arguments for the C-MOVE sub-operations.

        The sub-operations name ``requestor_ae`` as their Move Originator.
        """

        def _on_established(event: Any) -> None:
            originate_from(event.assoc, requestor_ae)
            established.append(event.assoc)

        options: dict[str, Any] = {
            "contexts": self._proposed_contexts(plan),
            "evt_handlers": [(evt.EVT_ESTABLISHED, _on_established)],
        }
        if destination.tls:
            context: ssl.SSLContext = build_client_ssl_context(self.tls)
            options["tls_args"] = (context, destination.host)
        return options

    def _proposed_contexts(self, plan: Sequence[StoredObject]) -> list[PresentationContext]:
        """Per SOP class: uncompressed little endian, plus each stored transfer syntax."""
        wanted: dict[tuple[str, tuple[str, ...]], None] = {}
        for item in plan:
            wanted[(item.sop_class_uid, UNCOMPRESSED_LITTLE_ENDIAN)] = None
            syntax = self._transfer_syntax(item)
            if syntax is not None and syntax not in UNCOMPRESSED_LITTLE_ENDIAN:
                wanted[(item.sop_class_uid, (syntax,))] = None
        if not wanted:  # a refused request still needs one context to associate
            wanted[(Verification, UNCOMPRESSED_LITTLE_ENDIAN)] = None
        # Beyond the limit, the instances without a context fail as sub-operations.
        chosen = list(wanted)[:MAX_PRESENTATION_CONTEXTS]
        return [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in chosen]

    def _transfer_syntax(self, item: StoredObject) -> str | None:
        if item.transfer_syntax_uid:
            return item.transfer_syntax_uid
        try:
            meta = read_file_meta_info(self.store.absolute(item.path))
        except Exception:
            return None  # the sub-operation fails when the file is read
        syntax = meta.get("TransferSyntaxUID")
        return str(syntax) if syntax else None

    # -- shared -----------------------------------------------------------------------------

    def _plan(
        self, event: Any, *, action: str, destination_ae: str | None
    ) -> tuple[list[StoredObject], set[str]]:
        """Select the instances to retrieve and record the retrieval per study.

        Images that no longer hold what a signed report was signed on are withheld: they
        are returned in the second set (SOP Instance UIDs), answered as failed
        sub-operations, and the mismatch is audited.

        Raises
        ------
        _Refusal
            With the failure status to answer.
        """
        calling_ae = _calling_ae(event)
        try:
            request = read_request(event.identifier, str(event.request.AffectedSOPClassUID))
            filters = retrieve_filters(request)
            with self.sessions.begin() as session:
                plan = find_objects(session, filters)
                withheld = self._withhold_changed_evidence(session, plan, calling_ae, action)
                per_study: dict[int, int] = {}
                for item in plan:
                    per_study[item.study_id] = per_study.get(item.study_id, 0) + 1
                now = utcnow()
                for study_id, count in per_study.items():
                    details: dict[str, Any] = {"instances": count, "level": request.level.name}
                    if destination_ae is not None:
                        details["destination_ae"] = destination_ae
                    session.add(AuditEvent(
                        at=now, actor=f"ae:{calling_ae}", action=action, object_type="study",
                        object_id=str(study_id), study_id=study_id, details=details,
                    ))
        except QueryError as exc:
            raise _Refusal(IDENTIFIER_DOES_NOT_MATCH, str(exc)) from exc
        except SQLAlchemyError as exc:
            raise _Refusal(OUT_OF_RESOURCES_MATCHES,
                           f"database unavailable: {type(exc).__name__}") from exc
        except Exception as exc:
            logger.exception("retrieve_plan_failed", extra={"calling_ae": calling_ae})
            raise _Refusal(UNABLE_TO_PROCESS, type(exc).__name__) from exc
        return plan, withheld

    def _withhold_changed_evidence(
        self, session: Session, plan: Sequence[StoredObject], calling_ae: str, action: str
    ) -> set[str]:
        """Audit and return the planned images whose signed evidence no longer matches."""
        wanted: dict[int, set[str]] = {}
        for item in plan:
            if not item.is_report:
                wanted.setdefault(item.study_id, set()).add(item.sop_instance_uid)
        withheld: set[str] = set()
        for study_id, error in changed_behind_signed_reports(session, self.store, wanted):
            audit_mismatch(session, study_id, error, actor=f"ae:{calling_ae}", user_id=None,
                           during=action)
            withheld.update(error.changed)
        return withheld

    def _prepare(self, assoc: Association, item: StoredObject) -> Dataset:
        """Read one instance and fit it to the contexts ``assoc`` accepted for it."""
        accepted = [
            UID(cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == item.sop_class_uid and cx.as_scu and cx.transfer_syntax
        ]
        if not accepted:
            log_event(logger, logging.WARNING, "retrieve_no_context",
                      sop_instance_uid=item.sop_instance_uid, sop_class_uid=item.sop_class_uid)
            return _unsendable(item)
        try:
            dataset = dcmread(self.store.absolute(item.path))
            syntax = UID(dataset.file_meta.TransferSyntaxUID)
        except Exception as exc:
            log_event(logger, logging.ERROR, "retrieve_unreadable",
                      sop_instance_uid=item.sop_instance_uid, error=type(exc).__name__)
            return _unsendable(item)
        try:
            fitted = fit_to_syntaxes(dataset, accepted)
        except Exception as exc:
            log_event(logger, logging.WARNING, "retrieve_transcode_failed",
                      sop_instance_uid=item.sop_instance_uid,
                      transfer_syntax_uid=str(syntax), error=type(exc).__name__)
            return _unsendable(item)
        if fitted is None:
            log_event(logger, logging.WARNING, "retrieve_no_context",
                      sop_instance_uid=item.sop_instance_uid, transfer_syntax_uid=str(syntax))
            return _unsendable(item)
        return fitted


def _calling_ae(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:
        return ""


__all__ = [
    "FIND_SOP_CLASSES",
    "PATIENT_ROOT_MODELS",
    "QUERY_RETRIEVE_SOP_CLASSES",
    "RETRIEVE_SOP_CLASSES",
    "STUDY_ROOT_MODELS",
    "QueryRequest",
    "QueryRetrieveService",
    "find_response",
    "read_request",
    "retrieve_filters",
]
