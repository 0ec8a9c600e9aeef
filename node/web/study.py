"""The study view: image viewer, patient header, the draft or signed report, sign-off.

* ``GET /studies/{id}`` — the page (audited as ``study_viewed``);
* ``GET /studies/{id}/image/{instance_id}.png?wc=&ww=`` — the image rendered server-side,
  with the DICOM window by default or the centre/width given;
* ``POST /studies/{id}/sign``, ``/reject``, ``/amend`` — the sign-off actions (radiologists
  only, CSRF-checked), carried out by :mod:`node.reports.signoff`. An amendment needs a
  reason. ``/sign`` with ``next=1`` answers with the next study of the worklist instead of
  the signed one ("Sign and next").

The study page carries the worklist's filters it was opened from (``?wl=``, the worklist's
query string): its Back, Previous and Next links, and "Sign and next", walk the worklist in
its order under the same filters (:func:`node.web.worklist.adjacent_study_id`).

The page carries what the viewer needs to start on its first image without another round
trip: the image's description (what ``/pixels/{instance}.json`` answers; no patient
identity) in a ``<script type="application/json">`` data block, and a preload of its
samples (``.u16``) in the head. After the page is sent, the next study's images are
prepared ahead (:func:`warm_study_images`).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import threading
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from starlette.background import BackgroundTask

from node.db.models import Export, Instance, Report, Study, User
from node.db.types import utcnow
from node.jobs.bundle_identity import BundleIdentity, read_bundle_identity
from node.logs import log_event
from node.reports.evidence import EvidenceChanged, audit_mismatch, verify_evidence
from node.reports.signoff import (
    AlreadySigned,
    ConfirmationRequired,
    EvidenceMismatch,
    NotPermitted,
    SignoffError,
    amend_report,
    reject_draft,
    sign_report,
)
from node.states import ReportState
from node.storage import StorageFullError
from node.web.deps import (
    CsrfUserDep,
    Forbidden,
    FormRowId,
    RowId,
    UserDep,
    Viewer,
    WebContext,
    audit_view,
    get_context,
    render,
)
from node.web.draft_source import draft_source_uid
from node.web.errors import STORAGE_FULL_MESSAGE, database_full
from node.web.history import report_history
from node.web.imaging import ImageDecodeError, WindowInfo
from node.web.ohif import ohif_study_url
from node.web.priors import prior_studies
from node.web.reading import (
    forget_working_copies,
    readers_of,
    save_working_copy,
    stale_working_copy,
    working_copy_of,
)
from node.web.stored_images import stored_image
from node.web.worklist import WorklistFilters, adjacent_study_id

logger = logging.getLogger(__name__)
router = APIRouter()

#: The largest window centre or width accepted from the query string (beyond any pixel range).
MAX_WINDOW_VALUE = 1e9
_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
DONE_MESSAGES = {
    "signed": "Report signed. The verified report is queued for delivery.",
    "amended": "Amendment signed. It supersedes the previous report.",
    "rejected": "Draft rejected. The study stays on the worklist.",
    "discarded": "Your text was discarded.",
    "signed-next": "Previous report signed. This is the next study of your worklist.",
}
#: Longest worklist query string carried from the worklist to the study page.
MAX_WORKLIST_QUERY = 1024
#: Images of the next study decoded and rendered ahead of time, at most.
WARM_IMAGES = 4
#: One warm-up at a time: a burst of page views never queues decoding work.
_warming = threading.Lock()


@dataclass(frozen=True)
class ImageView:
    """One image of the study for the viewer."""

    instance: Instance
    window: WindowInfo | None
    error: str | None


def _bundle_for(ctx_bundle: BundleIdentity | None, report: Report | None) -> BundleIdentity | None:
    if ctx_bundle is None or report is None or report.device_uid != ctx_bundle.device_uid:
        return None
    return ctx_bundle


def _refuse_changed_evidence(request: Request, viewer: Viewer, study_id: int,
                             error: EvidenceChanged, during: str) -> HTTPException:
    """Audit a signed-evidence mismatch and return the 409 to raise."""
    ctx = get_context(request)
    with ctx.database.sessions.begin() as session:
        audit_mismatch(session, study_id, error, actor=viewer.username, user_id=viewer.id,
                       during=during)
    return HTTPException(409, str(error))


def _check_signed_evidence(request: Request, viewer: Viewer, study_id: int, during: str,
                           sop_instance_uids: set[str] | None = None) -> None:
    """Refuse (409, audited) when a stored image differs from what was signed."""
    ctx = get_context(request)
    try:
        with ctx.database.sessions() as session:
            verify_evidence(session, ctx.store, study_id, sop_instance_uids)
    except EvidenceChanged as exc:
        raise _refuse_changed_evidence(request, viewer, study_id, exc, during) from exc


def worklist_of(value: str | None) -> WorklistFilters:
    """The worklist filters a study page was opened from (its ``wl`` parameter)."""
    return WorklistFilters.from_query_string((value or "")[:MAX_WORKLIST_QUERY])


def study_url(study_id: int, filters: WorklistFilters, **params: str) -> str:
    """The study page's path, carrying the worklist filters (and ``params``)."""
    query = [f"wl={quote(filters.query_string(), safe='')}"] if filters.query_string() else []
    query += [f"{key}={quote(value, safe='')}" for key, value in params.items()]
    return f"/studies/{study_id}" + (f"?{'&'.join(query)}" if query else "")


def worklist_url(filters: WorklistFilters, **params: str) -> str:
    """The worklist's path with ``filters`` (and ``params``)."""
    query = "&".join(part for part in [filters.query_string()] + [
        f"{key}={quote(value, safe='')}" for key, value in params.items()] if part)
    return "/" + (f"?{query}" if query else "")


def _study_page(request: Request, viewer: Viewer, study_id: int, *,
                error: str | None = None, form: dict[str, str] | None = None,
                status_code: int = 200) -> Response:
    ctx = get_context(request)
    _check_signed_evidence(request, viewer, study_id, "study_page")
    filters = worklist_of(request.query_params.get("wl") or (form or {}).get("wl"))
    with ctx.database.sessions() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise HTTPException(404, "no such study")
        instances = [i for i in session.scalars(
            select(Instance).where(Instance.study_id == study_id)
            .order_by(Instance.series_number, Instance.instance_number, Instance.id))
            if not i.sop_class_uid.startswith(_SR_SOP_CLASS_PREFIX)]
        versions = list(session.scalars(
            select(Report).where(Report.study_id == study_id).order_by(Report.id)))
        user_ids = {u for r in versions for u in (r.signed_by_id, r.rejected_by_id) if u}
        users = {u.id: u for u in session.scalars(select(User).where(User.id.in_(user_ids)))}
        current = versions[-1] if versions else None
        exports = list(session.scalars(
            select(Export).where(Export.report_id == current.id).order_by(Export.id))
        ) if current is not None else []
        readers = readers_of(session, [study.id], exclude_user=viewer.id, now=utcnow(),
                             expiry_seconds=ctx.settings.web.presence_expiry_seconds)
        previous_id = adjacent_study_id(session, filters, study, forward=False)
        next_id = adjacent_study_id(session, filters, study, forward=True)
        working = stale = None
        if viewer.is_radiologist and current is not None:
            working = working_copy_of(session, viewer.id, current.id)
            stale = stale_working_copy(session, viewer.id, versions)
        priors = prior_studies(session, study)
    audit_view(ctx.database, viewer, "study_viewed", "study", study.id, study_id=study.id)
    if priors:
        audit_view(ctx.database, viewer, "prior_studies_listed", "study", study.id,
                   study_id=study.id, details={"prior_study_ids": [p.study_id for p in priors],
                                               "signed_texts_shown": sum(
                                                   p.findings != "" or p.impression != ""
                                                   for p in priors)})
    images: list[ImageView] = []
    for instance in instances:
        if instance.purged_at is not None:
            images.append(ImageView(instance, None, "This image was removed by the retention "
                                    f"policy on {instance.purged_at:%Y-%m-%d}."))
            continue
        try:
            images.append(ImageView(instance, ctx.renderer.window(instance.path), None))
        except (ImageDecodeError, OSError) as exc:
            logger.warning("image_unreadable", extra={"instance_id": instance.id,
                                                      "error": type(exc).__name__})
            images.append(ImageView(instance, None, "This image cannot be displayed."))
    first_image = _first_image_description(ctx, images)
    draft = next((r for r in reversed(versions) if r.state == ReportState.DRAFT), None)
    bundle = _bundle_for(read_bundle_identity(ctx.settings.model.bundle), draft or current)
    source_uid = draft_source_uid(ctx.store, instances, draft)
    editing = form or {}
    if not editing and working is not None:
        mode = "sign" if current is not None and current.state == ReportState.DRAFT else "amend"
        editing = {"findings": working.findings, "impression": working.impression,
                   "mode": mode}
    is_amendment = current is not None and current.state == ReportState.FINAL and any(
        v.id == current.predecessor_id and v.state != ReportState.DRAFT for v in versions)
    context: dict[str, Any] = {
        "study": study, "images": images, "versions": versions, "current": current,
        "draft": draft, "users": users, "exports": exports, "bundle": bundle,
        "error": error, "form": editing, "nav": "worklist",
        "done": DONE_MESSAGES.get(request.query_params.get("done", "")),
        "can_sign": viewer.is_radiologist, "is_amendment": is_amendment,
        "readers": readers.get(study.id, []), "working": working, "stale": stale,
        "web": ctx.settings.web,
        "ohif_url": ohif_study_url(request, study.study_instance_uid),
        "history": report_history(versions, users),
        "worklist_query": filters.query_string(),
        "worklist_url": worklist_url(filters),
        "previous_url": study_url(previous_id, filters) if previous_id else None,
        "next_url": study_url(next_id, filters) if next_id else None,
        "priors": priors, "draft_source_uid": source_uid,
        "first_image": first_image,
    }
    response = render(request, "study.html", context, status_code=status_code)
    if next_id is not None and status_code == 200:
        response.background = BackgroundTask(warm_study_images, ctx, next_id)
    return response


def _first_image_description(ctx: WebContext, images: list[ImageView]) -> dict[str, Any] | None:
    """The description of the image the viewer opens on (``None`` when it shows none)."""
    if not images or images[0].window is None:
        return None
    try:
        description = json.loads(ctx.renderer.prepared(images[0].instance.path)
                                 .description_json)
    except (ImageDecodeError, OSError):
        return None
    return description if isinstance(description, dict) else None


def warm_study_images(ctx: WebContext, study_id: int) -> None:
    """Prepare the images of the study the reader is likely to open next (the next one of
    the worklist) after the page was sent: the viewer's full-depth samples and description
    (:meth:`~node.web.imaging.ImageRenderer.prepared`), and the default window and PNG of
    the thumbnails, into the renderer's caches. Opening that study then serves from memory;
    nothing is sent or audited here, and the image routes still check each request (login,
    signed evidence) as always. Best effort: skipped while another warm-up runs, failures
    ignored."""
    if not _warming.acquire(blocking=False):
        return
    try:
        with ctx.database.sessions() as session:
            paths = session.scalars(
                select(Instance.path)
                .where(Instance.study_id == study_id, Instance.purged_at.is_(None),
                       ~Instance.sop_class_uid.startswith(_SR_SOP_CLASS_PREFIX))
                .order_by(Instance.series_number, Instance.instance_number, Instance.id)
                .limit(WARM_IMAGES)).all()
        for path in paths:
            try:
                ctx.renderer.prepared(path)
                ctx.renderer.png(path)  # also the default window the page asks for
                ctx.renderer.window(path)
            except (ImageDecodeError, OSError, ValueError):
                continue
    except DBAPIError:
        return
    finally:
        _warming.release()


@router.get("/studies/{study_id}")
def study_view(study_id: RowId, request: Request,
               viewer: UserDep) -> Response:
    """The study page."""
    return _study_page(request, viewer, study_id)


@router.get("/studies/{study_id}/image/{instance_id}.png")
def study_image(study_id: RowId, instance_id: RowId, request: Request,
                viewer: UserDep) -> Response:
    """An image of the study as PNG; ``wc`` and ``ww`` choose the window."""
    ctx = get_context(request)
    path = stored_image(request, viewer, study_id, instance_id, "image").path
    try:
        center = _number(request.query_params.get("wc"))
        width = _number(request.query_params.get("ww"))
        if (center is None) != (width is None):
            center = width = None
        data = ctx.renderer.png(path, center, width)
    except ValueError as exc:
        if isinstance(exc, ImageDecodeError):
            raise HTTPException(422, "the image cannot be decoded") from exc
        raise HTTPException(400, str(exc)) from exc
    except FileNotFoundError as exc:
        raise HTTPException(404, "the image file is missing") from exc
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "private, no-store"})


def _number(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError as exc:
        raise ValueError("window centre and width must be numbers") from exc
    if not math.isfinite(number) or abs(number) > MAX_WINDOW_VALUE:
        raise ValueError("window centre and width are out of range")
    return number


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _keep_text(request: Request, viewer: Viewer, report_id: int,
               form: dict[str, str]) -> None:
    """Save the text of a refused sign-off as the user's working copy (best effort)."""
    try:
        with get_context(request).database.sessions.begin() as session:
            successor = session.scalar(select(Report).where(Report.predecessor_id == report_id))
            if successor is not None and (successor.findings, successor.impression) == (
                    form["findings"].strip(), form["impression"].strip()):
                return  # the same text is signed already (a repeated submit): nothing to keep
            if session.get(Report, report_id) is not None:
                save_working_copy(session, viewer.id, report_id, form["findings"],
                                  form["impression"], utcnow())
    except Exception as exc:  # the page still holds the text
        logger.warning("working_copy_not_saved", extra={"report_id": report_id,
                                                        "error": type(exc).__name__})


def _refused(request: Request, viewer: Viewer, study_id: int, status_code: int,
             message: str, form: dict[str, str] | None, **extra: object) -> Response:
    """Answer a refused sign-off: JSON for the page's script, else the page with the text."""
    if _wants_json(request):
        return JSONResponse({"detail": message, **extra}, status_code=status_code,
                            headers={"Cache-Control": "no-store"})
    return _study_page(request, viewer, study_id, error=message, form=form,
                       status_code=status_code)


def _signoff(request: Request, viewer: Viewer, study_id: int, report_id: int,
             action: str, form: dict[str, str], *, confirmed: bool = False) -> Response:
    """Run one sign-off action in a transaction; on refusal keep the user's text."""
    ctx = get_context(request)
    if not viewer.is_radiologist:
        raise Forbidden("Only radiologists sign, amend or reject reports.")
    try:
        with ctx.database.sessions.begin() as session:
            report = session.get(Report, report_id)
            if report is None or report.study_id != study_id:
                raise HTTPException(404, "no such report in this study")
            user = session.get_one(User, viewer.id)
            if action == "sign":
                sign_report(session, ctx.store, report_id, user, form["findings"],
                            form["impression"], destinations=ctx.settings.destinations,
                            quality=ctx.settings.quality,
                            language=ctx.settings.reports.language,
                            confirm_unedited_urgent=ctx.settings.web.confirm_unedited_urgent,
                            unedited_urgent_confirmed=confirmed)
            elif action == "amend":
                amend_report(session, ctx.store, report_id, user, form["findings"],
                             form["impression"], reason=form["reason"],
                             destinations=ctx.settings.destinations,
                             language=ctx.settings.reports.language)
            else:
                reject_draft(session, report_id, user, form["reason"], store=ctx.store)
            if action != "reject":
                forget_working_copies(session, viewer.id, study_id)
    except NotPermitted as exc:
        raise Forbidden(str(exc)) from exc
    except ConfirmationRequired as exc:
        return _refused(request, viewer, study_id, 428, str(exc), form, confirm=True)
    except AlreadySigned as exc:
        if action != "reject":
            _keep_text(request, viewer, report_id, form)
        return _refused(request, viewer, study_id, 409, str(exc), form if action == "reject"
                        else None, redirect=f"/studies/{study_id}")
    except EvidenceMismatch as exc:
        raise _refuse_changed_evidence(request, viewer, study_id, exc.changed, action) from exc
    except SignoffError as exc:
        return _refused(request, viewer, study_id, 400, str(exc), form)
    except (OSError, DBAPIError) as exc:
        # Nothing was committed: the draft stands and the typed text is kept.
        if isinstance(exc, DBAPIError) and not database_full(exc):
            raise
        log_event(logger, logging.ERROR, "signoff_not_saved", study_id=study_id,
                  report_id=report_id, action=action, error=type(exc).__name__)
        full = isinstance(exc, DBAPIError) or exc.errno in (errno.ENOSPC, errno.EDQUOT) \
            or isinstance(exc, StorageFullError)
        reason = STORAGE_FULL_MESSAGE if full else (
            "The report could not be written to storage.")
        if action != "reject":
            _keep_text(request, viewer, report_id, form)
        return _refused(request, viewer, study_id, 503, f"Not saved: {reason} Your text is "
                        "kept here; try again once the problem is solved.", form)
    if ctx.exporter is not None:  # a rejection may have queued rejection notes
        ctx.exporter.notify()
    done = {"sign": "signed", "amend": "amended", "reject": "rejected"}[action]
    filters = worklist_of(form.get("wl"))
    target = study_url(study_id, filters, done=done)
    if action == "sign" and form.get("next") == "1":
        target = _next_target(request, study_id, filters)
    if _wants_json(request):
        return JSONResponse({"redirect": target}, headers={"Cache-Control": "no-store"})
    return RedirectResponse(target, status_code=303)


def _next_target(request: Request, study_id: int, filters: WorklistFilters) -> str:
    """Where "Sign and next" goes: the next study of the worklist, or the worklist."""
    with get_context(request).database.sessions() as session:
        study = session.get_one(Study, study_id)
        next_id = adjacent_study_id(session, filters, study, forward=True)
    if next_id is None:
        return worklist_url(filters, done="signed")
    return study_url(next_id, filters, done="signed-next")


@router.post("/studies/{study_id}/sign")
def sign(study_id: RowId, request: Request, viewer: CsrfUserDep,
         report_id: FormRowId, findings: Annotated[str, Form()] = "",
         impression: Annotated[str, Form()] = "",
         confirm_urgent: Annotated[str, Form()] = "",
         next_study: Annotated[str, Form(alias="next")] = "",
         wl: Annotated[str, Form(max_length=MAX_WORKLIST_QUERY)] = "") -> Response:
    """Sign the draft with the text as edited (``confirm_urgent`` for an unedited urgent one);
    with ``next=1`` the answer leads to the next study of the worklist ``wl``."""
    return _signoff(request, viewer, study_id, report_id, "sign",
                    {"findings": findings, "impression": impression, "mode": "sign",
                     "next": next_study, "wl": wl},
                    confirmed=confirm_urgent == "1")


@router.post("/studies/{study_id}/amend")
def amend(study_id: RowId, request: Request, viewer: CsrfUserDep,
          report_id: FormRowId, findings: Annotated[str, Form()] = "",
          impression: Annotated[str, Form()] = "",
          reason: Annotated[str, Form()] = "",
          wl: Annotated[str, Form(max_length=MAX_WORKLIST_QUERY)] = "") -> Response:
    """Sign an amendment of the current final report, with the reason for it."""
    return _signoff(request, viewer, study_id, report_id, "amend",
                    {"findings": findings, "impression": impression, "reason": reason,
                     "mode": "amend", "wl": wl})


@router.post("/studies/{study_id}/reject")
def reject(study_id: RowId, request: Request, viewer: CsrfUserDep,
           report_id: FormRowId, reason: Annotated[str, Form()] = "") -> Response:
    """Reject the draft with a reason."""
    return _signoff(request, viewer, study_id, report_id, "reject",
                    {"reason": reason, "mode": "reject"})
