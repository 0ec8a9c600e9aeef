"""The web application: worklist, study view and sign-off, admin triage and monitoring,
DICOMweb (QIDO-RS/WADO-RS at ``/dicomweb``) for viewers, and the OHIF Viewer at ``/viewer/``
(:mod:`node.web.ohif`), behind the same login.

:func:`create_app` builds a FastAPI app over the node's services. Pages are rendered on the
server (Jinja2) with a little vanilla JavaScript and one stylesheet served from
``node/web/static``; nothing is loaded from another origin, and the Content Security Policy
says so.
"""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.config import Settings
from node.logs import log_event
from node.operations import OperationsMonitor
from node.storage import InstanceStore
from node.web import (
    admin,
    audit,
    auth,
    live,
    metrics,
    pixels,
    quarantine_view,
    reading,
    study,
    worklist,
)
from node.web.deps import Forbidden, LoginRequired, WebContext, render
from node.web.dicomweb import build_dicomweb_router
from node.web.errors import STORAGE_FULL_MESSAGE, database_full
from node.web.formatting import install_filters
from node.web.imaging import ImageRenderer
from node.web.ohif import OhifDist, build_ohif_router
from node.web.security import CookieSigner, resolve_secret_key
from node.web.service_auth import ServiceTokenRefused, require_instance_reader
from node.web.throttle import LoginThrottle
from node.web.viewer_access import install_viewer_access
from workers.inference.dicom_limits import DatasetLimits

if TYPE_CHECKING:
    from node.db.engine import Database
    from node.exports.service import ExportService
    from node.jobs.queue import WorkQueue

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
#: Every response but the static files may carry patient data: no cache keeps a copy.
NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    """Add the security headers to every response (pure ASGI, works with streaming), and
    ``Cache-Control: no-store`` to every response outside ``/static`` that sets no
    ``Cache-Control`` of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        cacheable = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if not cacheable and NO_STORE[0] not in present:
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def render_error(request: Request, title: str, message: str, status_code: int) -> Response:
    """The error page; a bare one when the page itself cannot be made (database down)."""
    try:
        return render(request, "error.html", {"title": title, "message": message},
                      status_code=status_code)
    except DBAPIError:
        return HTMLResponse(f"<!doctype html><title>{escape(title)}</title>"
                            f"<h1>{escape(title)}</h1><p>{escape(message)}</p>",
                            status_code=status_code)


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def create_app(
    settings: Settings,
    database: Database,
    store: InstanceStore,
    exporter: ExportService | None = None,
    work_queue: WorkQueue | None = None,
    operations: OperationsMonitor | None = None,
) -> FastAPI:
    """Build the web app.

    Parameters
    ----------
    settings
        The node's settings (``[web]`` for cookies and login throttling, destinations for
        sign-off exports, the model bundle for licence and intended use).
    database
        The node's database.
    store
        Instance storage (images to render, SRs to read and write).
    exporter
        Woken after a sign-off or an export retry, for immediate delivery.
    work_queue
        Where a retried drafting job is enqueued; without one the reconciler picks it up.
    operations
        Broker, destination and alert checks shared with the node (a new one when not
        given).

    Returns
    -------
    fastapi.FastAPI
        The app; serve it with uvicorn (see :class:`node.web.server.WebServer`).
    """
    templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))
    install_filters(templates.env)
    ctx = WebContext(
        settings=settings, database=database, store=store, exporter=exporter,
        work_queue=work_queue,
        signer=CookieSigner(resolve_secret_key(settings.web)),
        throttle=LoginThrottle(database.sessions, settings.web.login_max_failures,
                               settings.web.login_window_seconds,
                               settings.web.login_max_failures_per_address),
        templates=templates, renderer=ImageRenderer(store),
        operations=operations or OperationsMonitor(settings, database.sessions),
    )
    app = FastAPI(title="radnode", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")
    for module in (auth, worklist, live, study, pixels, reading, admin, quarantine_view, audit,
                   metrics):
        app.include_router(module.router)
    app.include_router(
        build_dicomweb_router(database.sessions, store,
                              dependencies=[Depends(require_instance_reader)],
                              limits=DatasetLimits(**settings.dicom.limits.model_dump())),
        prefix="/dicomweb",
    )
    app.state.ohif = OhifDist(settings.web.ohif_dist)
    app.include_router(build_ohif_router())
    install_viewer_access(app, settings)  # CORS, tokens' account page, STOW-RS

    @app.exception_handler(LoginRequired)
    def _login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse({"detail": "login required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Cookie realm="radnode"'})

    @app.exception_handler(ServiceTokenRefused)
    def _token_refused(request: Request, exc: ServiceTokenRefused) -> Response:
        return JSONResponse({"detail": "invalid or revoked token"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="radnode"'})

    @app.exception_handler(Forbidden)
    def _forbidden(request: Request, exc: Forbidden) -> Response:
        if "text/html" in request.headers.get("accept", "") or request.method == "POST":
            return render(request, "error.html", {"title": "Forbidden",
                                                  "message": exc.message}, status_code=403)
        return JSONResponse({"detail": exc.message}, status_code=403)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # The default answer echoes the input (possibly patient data); name the fields only.
        fields = sorted({str(error["loc"][-1]) for error in exc.errors() if error.get("loc")})
        message = "Invalid or out-of-range value: " + ", ".join(fields)
        if _wants_html(request) or request.method == "POST":
            return render(request, "error.html", {"title": "Bad request",
                                                  "message": message}, status_code=400)
        return JSONResponse({"detail": message}, status_code=400)

    @app.exception_handler(DBAPIError)
    def _database_error(request: Request, exc: DBAPIError) -> Response:
        # The engine hides statement parameters; log only the error class and route.
        route = request.scope.get("route")
        refused = isinstance(exc, DataError)
        full = database_full(exc)
        log_event(logger, logging.WARNING if refused else logging.ERROR, "database_error",
                  error=type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                  route=getattr(route, "name", "?"), method=request.method, disk_full=full)
        status = 400 if refused else 503
        message = ("The request contains a value the database cannot store or search for."
                   if refused else STORAGE_FULL_MESSAGE if full
                   else "The database cannot answer right now. Try again shortly.")
        if _wants_html(request) or request.method == "POST":
            return render_error(request, "Bad request" if refused else "Unavailable",
                                message, status)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _wants_html(request) or (request.method == "POST"
                                    and "text/html" in request.headers.get("accept", "")):
            titles = {404: "Not found", 409: "Conflict", 400: "Bad request"}
            return render(request, "error.html", {
                "title": titles.get(exc.status_code, "Error"), "message": str(exc.detail),
            }, status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


__all__ = ["create_app", "render_error"]
