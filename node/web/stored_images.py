"""The stored file behind an image route of the study page, checked before it is served.

Every route that sends an image's pixels to a browser (the server-rendered PNG, the viewer's
full-depth values) first finds the instance in the study and checks its file against the
digests recorded when the study's report was signed (:mod:`node.reports.evidence`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from node.db.models import Instance
from node.reports.evidence import EvidenceChanged, audit_mismatch, verify_evidence
from node.web.deps import Viewer, get_context


@dataclass(frozen=True)
class StoredImage:
    """Where an instance's file is, and which instance it is."""

    path: str
    sop_instance_uid: str


def stored_image(request: Request, viewer: Viewer, study_id: int, instance_id: int,
                 during: str) -> StoredImage:
    """The instance's file, once it is known to be what any signed report was signed on.

    Parameters
    ----------
    request, viewer
        The request and the signed-in user (the actor of an audited refusal).
    study_id, instance_id
        The study of the page and the instance asked for.
    during
        What was being served, for the audit event of a refusal (``"image"``, ``"pixels"``).

    Returns
    -------
    StoredImage
        The file to serve.

    Raises
    ------
    HTTPException
        404 when the instance is not in the study, 410 when retention removed it, 409
        (audited ``signed_evidence_mismatch``) when the file differs from what was signed.
    """
    ctx = get_context(request)
    with ctx.database.sessions() as session:
        instance = session.get(Instance, instance_id)
        if instance is None or instance.study_id != study_id:
            raise HTTPException(404, "no such image in this study")
        if instance.purged_at is not None:
            raise HTTPException(410, "the image was removed by the retention policy")
        stored = StoredImage(instance.path, instance.sop_instance_uid)
        try:
            verify_evidence(session, ctx.store, study_id, {stored.sop_instance_uid})
        except EvidenceChanged as exc:
            changed = exc
        else:
            return stored
    with ctx.database.sessions.begin() as session:
        audit_mismatch(session, study_id, changed, actor=viewer.username, user_id=viewer.id,
                       during=during)
    raise HTTPException(409, str(changed))
