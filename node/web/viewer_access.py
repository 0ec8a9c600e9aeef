"""Viewer access wired into the web app: CORS for DICOMweb, the account page, STOW-RS.

:func:`install_viewer_access` is called once by :func:`node.web.app.create_app`:

* with ``[web] cors_origins`` set, browsers on those origins may call ``/dicomweb`` and
  its WADO-URI (``/dicomweb/wado``) — only that path — with an ``Authorization`` header (GET, and
  POST for STOW-RS; preflights answered). Credentials (cookies) are never allowed
  cross-origin: the login cookie is SameSite=Strict, so a viewer on another origin
  presents a personal bearer token. Without origins no CORS header is ever sent;
* a bearer token refused too often from one address answers 429 with ``Retry-After``;
* the account page (personal tokens) and STOW-RS (:mod:`node.web.stow`) are mounted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from node.config import Settings
from node.dicom.ingest import InstanceIngestor
from node.web import account
from node.web.deps import WebContext
from node.web.service_auth import BearerThrottled
from node.web.stow import StowService, build_stow_router
from workers.inference.dicom_limits import DatasetLimits

#: Paths browsers on ``[web] cors_origins`` may call (each with what lies below it).
CORS_PATHS = ("/dicomweb",)
CORS_METHODS = ("GET", "HEAD", "POST")
CORS_REQUEST_HEADERS = ("Authorization", "Accept", "Content-Type")
CORS_EXPOSED_HEADERS = ("Warning", "Content-Location", "Location", "Retry-After",
                        "WWW-Authenticate")
#: How long a browser may keep a preflight's answer (seconds).
CORS_MAX_AGE = 600


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


class DicomWebCors:
    """Starlette's CORS middleware, applied to :data:`CORS_PATHS` only (pure ASGI).

    Parameters
    ----------
    app
        The app to wrap.
    origins
        Exact origins allowed (``[web] cors_origins``, validated by the settings).
    """

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app, allow_origins=list(origins), allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_REQUEST_HEADERS), allow_credentials=False,
            expose_headers=list(CORS_EXPOSED_HEADERS), max_age=CORS_MAX_AGE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _under(str(scope.get("path", "")), CORS_PATHS):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install_viewer_access(app: FastAPI, settings: Settings) -> None:
    """Add CORS (when origins are configured), the 429 answer, the account page and
    STOW-RS (after ``app.state.ctx`` is set)."""
    if settings.web.cors_origins:
        app.add_middleware(DicomWebCors, origins=settings.web.cors_origins)
    app.include_router(account.router)
    ctx: WebContext = app.state.ctx
    ingestor = InstanceIngestor(ctx.store, ctx.database.sessions,
                                DatasetLimits(**settings.dicom.limits.model_dump()))
    app.include_router(build_stow_router(StowService(
        ingestor, settings.web.stow_max_request_mb * 2**20,
        settings.web.stow_max_instance_mb * 2**20)), prefix="/dicomweb")

    @app.exception_handler(BearerThrottled)
    def _throttled(request: Request, exc: BearerThrottled) -> Response:
        return JSONResponse({"detail": "too many refused tokens from this address"},
                            status_code=429,
                            headers={"Retry-After": str(math.ceil(exc.retry_after))})


__all__ = ["CORS_PATHS", "DicomWebCors", "install_viewer_access"]
