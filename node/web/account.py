"""The account page: a person's own bearer tokens for DICOMweb.

``GET /account`` lists the signed-in person's tokens (label, scopes, created, expires,
last used, revoked); ``POST /account/tokens`` issues one, shown once on the page that
answers (never stored, never sent again); ``POST /account/tokens/{id}/revoke`` revokes
one of the person's own tokens. Uploaders, who have no other page, land here after
signing in. Tokens are accepted on DICOMweb only, never instead of the login on a page.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from node.db.models import User
from node.db.types import utcnow
from node.states import ROLE_SCOPES, TokenScope
from node.users import UserError
from node.web.access_tokens import (
    IssuedToken,
    issue_access_token,
    list_access_tokens,
    revoke_access_token,
)
from node.web.deps import (
    RowId,
    Viewer,
    get_context,
    render,
    require_person,
    require_person_csrf,
)

router = APIRouter()

PersonDep = Annotated[Viewer, Depends(require_person)]
CsrfPersonDep = Annotated[Viewer, Depends(require_person_csrf)]


def _page(request: Request, viewer: Viewer, *, issued: IssuedToken | None = None,
          error: str | None = None, status_code: int = 200) -> Response:
    ctx = get_context(request)
    with ctx.database.sessions() as session:
        tokens = list_access_tokens(session, viewer.id)
        session.expunge_all()
    max_days = ctx.settings.web.token_max_days
    return render(request, "account.html", {
        "nav": "account", "tokens": tokens, "now": utcnow(), "issued": issued,
        "error": error, "max_days": max_days, "default_days": min(30, max_days),
        "scopes": sorted(ROLE_SCOPES[viewer.role], key=lambda s: s.value),
        "dicomweb_url": str(request.base_url).rstrip("/") + "/dicomweb",
    }, status_code=status_code)


@router.get("/account")
def account(request: Request, viewer: PersonDep) -> Response:
    """The signed-in person's tokens and the form to issue one."""
    return _page(request, viewer)


@router.post("/account/tokens")
def issue_token(
    request: Request,
    viewer: CsrfPersonDep,
    days: Annotated[int, Form(ge=1, le=3650)],
    label: Annotated[str, Form(max_length=200)] = "",
    scope: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Issue a token for the signed-in person; the answer shows it once."""
    ctx = get_context(request)
    try:
        scopes = frozenset(TokenScope(value) for value in scope or [])
    except ValueError:
        return _page(request, viewer, error="Unknown scope.", status_code=400)
    now = utcnow()
    try:
        with ctx.database.sessions.begin() as session:
            user = session.get_one(User, viewer.id)
            issued = issue_access_token(
                session, user, lifetime=dt.timedelta(days=days),
                max_days=ctx.settings.web.token_max_days, scopes=scopes or None,
                label=label, actor=viewer.username, now=now)
    except UserError as exc:
        return _page(request, viewer, error=str(exc), status_code=400)
    return _page(request, viewer, issued=issued, status_code=201)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: RowId, viewer: CsrfPersonDep) -> Response:
    """Revoke one of the signed-in person's tokens."""
    ctx = get_context(request)
    with ctx.database.sessions.begin() as session:
        revoked = revoke_access_token(session, token_id, actor=viewer.username,
                                      actor_id=viewer.id, holder_id=viewer.id, now=utcnow())
    if not revoked:
        raise HTTPException(404, "No live token of yours has this id.")
    return RedirectResponse("/account", status_code=303)
