"""The OHIF Viewer (v3) at ``/viewer/``, on the node's own origin and behind its login.

The viewer is the prebuilt ``dist`` folder of the npm package ``@ohif/app``, installed by
``make ohif`` (pinned version and SHA-512) into ``[web] ohif_dist``; nothing is fetched
while the node runs. Without that folder the viewer is off: ``/viewer/`` answers 404 and
the study page links nowhere.

The dist is built for the root of a site (its public path is ``/``); the node serves it
under :data:`MOUNT` by rewriting, as the files are served (once per file, then kept in
memory with a gzipped copy for browsers that accept it):

* ``index.html``: ``window.PUBLIC_URL`` and every root-relative ``src``/``href``;
* JavaScript bundles (the app and its web workers): the bundler's public path
  ``__webpack_require__.p = "/"``, from which chunks, workers and WebAssembly codecs load;
* style sheets: root-relative ``url(/…)`` (fonts).

``/viewer/app-config.js`` is generated here, not taken from the dist: one DICOMweb data
source, the node's own ``/dicomweb`` (QIDO-RS, WADO-RS) on the page's origin, so the
browser sends the login cookie (``SameSite=Strict`` allows it: same site, same origin)
with every request OHIF makes. Every other path that names no file of the dist is one of
OHIF's client-side routes (``/viewer/viewer?StudyInstanceUIDs=…``) and answers
``index.html``; that page needs a login (a browser is sent to the login page and back).

The viewer's pages carry their own Content Security Policy (:func:`content_security_policy`):
still nothing from another origin, but WebAssembly compilation (the image codecs), workers
from ``blob:`` URLs, inline styles (set by the viewer's components) and the inline scripts
of ``index.html`` by their SHA-256. Script responses carry the policy of a web worker,
which also lets the codecs' WebAssembly glue evaluate strings; the page never may.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select

from node.db.models import Study
from node.logs import log_event
from node.storage import is_valid_uid
from node.web.deps import Viewer, audit_view, get_context, require_user

logger = logging.getLogger(__name__)

#: Where the viewer is served (with a trailing slash: OHIF's public URL).
MOUNT = "/viewer/"
#: OHIF's router base name (no trailing slash).
ROUTER_BASENAME = MOUNT.rstrip("/")
#: The data source's name in the generated configuration.
DATA_SOURCE = "radnode"
#: What the node says when the viewer is not installed.
NOT_INSTALLED = "The OHIF Viewer is not installed on this node (run `make ohif`)."

_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_PUBLIC_PATH_MOUNTED = f'__webpack_require__.p = "{MOUNT}";'.encode("ascii")
_CSS_ROOT_URL = re.compile(rb"url\((['\"]?)/(?!/)")
_HTML_ROOT_REF = re.compile(r'\b(src|href|content)="/(?!/)')
_HTML_PUBLIC_URL = re.compile(r"""window\.PUBLIC_URL\s*=\s*(["'])/\1""")
_APP_BUNDLE = re.compile(rf'src="{re.escape(MOUNT)}(app\.bundle\.[0-9a-f]+\.js)"')
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)
#: A file name with a content hash (``app.bundle.0f6159c501addfe9.js``, ``…5130ccb17e3f3f5b.wasm``):
#: its content never changes under that name.
_HASHED_NAME = re.compile(r"(^|\.)[0-9a-f]{16}\.[a-z0-9]+$")
_IMMUTABLE = "public, max-age=31536000, immutable"
#: Files served gzipped to clients that accept it (and their media types).
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".wasm": "application/wasm", ".svg": "image/svg+xml", ".map": "application/json",
}
_REVALIDATE = "no-cache"


def content_security_policy(script_hashes: tuple[str, ...] = (), *, worker: bool = False) -> str:
    """The viewer's Content Security Policy.

    Parameters
    ----------
    script_hashes
        ``'sha256-…'`` sources of the inline scripts of ``index.html``.
    worker
        The policy of a script response: it governs the script only when the script is a
        web worker's (a page's scripts run under the page's policy). The image codecs'
        WebAssembly glue (Emscripten ``embind``) builds functions from strings, so a worker
        may also evaluate strings (``'unsafe-eval'``); the page itself may not.

    Returns
    -------
    str
        Only this origin for scripts, styles, images, fonts, connections and workers;
        additionally WebAssembly compilation, ``blob:`` workers and images, inline styles.
    """
    sources = ["'self'", "'wasm-unsafe-eval'", *(["'unsafe-eval'"] if worker else []),
               *script_hashes]
    scripts = " ".join(sources)
    return (
        f"default-src 'self'; script-src {scripts}; worker-src 'self' blob:; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
        "connect-src 'self' data: blob:; media-src 'self' blob:; manifest-src 'self'; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )


def app_config() -> dict[str, Any]:
    """OHIF's ``window.config``: one DICOMweb data source, the node's ``/dicomweb``.

    The roots are paths; :func:`app_config_js` puts the page's origin in front of them.
    """
    return {
        "routerBasename": ROUTER_BASENAME,
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        # No guided tour over the first study opened.
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": DATA_SOURCE,
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": DATA_SOURCE,
            "configuration": {
                "friendlyName": "radnode",
                "name": DATA_SOURCE,
                "qidoRoot": "/dicomweb",
                "wadoRoot": "/dicomweb",
                "wadoUriRoot": "/dicomweb/wado",
                "qidoSupportsIncludeField": True,
                "imageRendering": "wadors",
                "thumbnailRendering": "thumbnail",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "supportsReject": False,
                "dicomUploadEnabled": False,
                "staticWado": False,
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }


def app_config_js() -> str:
    """``app-config.js``: :func:`app_config` with the DICOMweb roots on the page's origin."""
    config = json.dumps(app_config(), indent=2)
    return (
        "// Generated by radnode (node/web/ohif.py).\n"
        f"window.config = {config};\n"
        "for (const source of window.config.dataSources) {\n"
        "  for (const root of ['qidoRoot', 'wadoRoot', 'wadoUriRoot']) {\n"
        "    source.configuration[root] = window.location.origin + source.configuration[root];\n"
        "  }\n"
        "}\n"
    )


def mount_index_html(html: str) -> tuple[str, tuple[str, ...]]:
    """``index.html`` served under :data:`MOUNT`, and the CSP hashes of its inline scripts."""
    html = _HTML_PUBLIC_URL.sub(f'window.PUBLIC_URL="{MOUNT}"', html)
    html = _HTML_ROOT_REF.sub(lambda m: f'{m.group(1)}="{MOUNT}', html)
    hashes = tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        + "'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    return html, hashes


def mount_asset(name: str, data: bytes) -> bytes | None:
    """A script or style sheet of the dist rewritten for :data:`MOUNT`; ``None`` when it
    needs no change."""
    if name.endswith(".js") and _PUBLIC_PATH in data:
        return data.replace(_PUBLIC_PATH, _PUBLIC_PATH_MOUNTED)
    if name.endswith(".css") and _CSS_ROOT_URL.search(data):
        return _CSS_ROOT_URL.sub(rb"url(\1" + MOUNT.encode("ascii"), data)
    return None


@dataclass(frozen=True)
class _Prepared:
    """A compressible file of the dist as served, made from one version of the file."""

    mtime_ns: int
    size: int
    body: bytes | None
    """The rewritten content; ``None``: the file as it is."""
    gzipped: bytes
    digest: str


class OhifDist:
    """The installed dist (or its absence) and its files as served under :data:`MOUNT`.

    Parameters
    ----------
    root
        The dist folder (``[web] ohif_dist``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._cache: dict[str, _Prepared] = {}
        self._index: tuple[int, int, str, tuple[str, ...]] | None = None

    @property
    def installed(self) -> bool:
        """Whether the dist is there (its ``index.html``)."""
        return (self.root / "index.html").is_file()

    def study_url(self, study_instance_uid: str) -> str | None:
        """The viewer's URL for one study, or ``None`` when the viewer is not installed."""
        if not self.installed or not is_valid_uid(study_instance_uid):
            return None
        return f"{MOUNT}viewer?StudyInstanceUIDs={quote(study_instance_uid, safe='')}"

    def file(self, relative: str) -> Path | None:
        """The dist's file at ``relative`` (a URL path below :data:`MOUNT`), or ``None``."""
        parts = PurePosixPath(relative).parts
        if not parts or any(part in ("..", ".") or part.startswith(".") for part in parts):
            return None
        candidate = self.root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_file() or not resolved.is_relative_to(self.root):
            return None
        return resolved

    def index(self) -> tuple[str, tuple[str, ...]]:
        """``index.html`` for :data:`MOUNT` and the hashes of its inline scripts."""
        path = self.root / "index.html"
        stat = path.stat()
        with self._lock:
            cached = self._index
            if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):
                html, hashes = mount_index_html(path.read_text(encoding="utf-8"))
                cached = self._index = (stat.st_mtime_ns, stat.st_size, html, hashes)
                self._check_public_path(html)
        return cached[2], cached[3]

    def _check_public_path(self, html: str) -> None:
        """Log an error when the app bundle has no public path to rewrite (a dist built
        otherwise than the pinned one: its chunks would load from the site's root)."""
        for name in _APP_BUNDLE.findall(html):
            bundle = self.file(name)
            if bundle is not None and _PUBLIC_PATH not in bundle.read_bytes():
                log_event(logger, logging.ERROR, "ohif_public_path_not_found", bundle=name)

    def _prepared(self, relative: str, path: Path) -> _Prepared:
        """The file rewritten (if it must be) and gzipped, made once per file version."""
        stat = path.stat()
        with self._lock:
            entry = self._cache.get(relative)
        if entry is None or (entry.mtime_ns, entry.size) != (stat.st_mtime_ns, stat.st_size):
            data = path.read_bytes()
            body = mount_asset(path.name, data)
            served = data if body is None else body
            entry = _Prepared(stat.st_mtime_ns, stat.st_size, body,
                              gzip.compress(served, compresslevel=6, mtime=0),
                              hashlib.sha256(served).hexdigest()[:32])
            with self._lock:
                self._cache[relative] = entry
        return entry

    def asset(self, request: Request, relative: str, path: Path) -> Response:
        """A file of the dist: rewritten for :data:`MOUNT` where it must be, gzipped for
        clients that accept it when it compresses (scripts, styles, WebAssembly)."""
        cache_control = _IMMUTABLE if _HASHED_NAME.search(path.name) else _REVALIDATE
        script = path.suffix in (".js", ".mjs")
        headers = {"Cache-Control": cache_control,
                   "Content-Security-Policy": content_security_policy(worker=script)}
        media_type = _MEDIA_TYPES.get(path.suffix)
        if media_type is None:
            return FileResponse(path, headers=headers)
        entry = self._prepared(relative, path)
        compressed = "gzip" in request.headers.get("accept-encoding", "").lower()
        headers["Vary"] = "Accept-Encoding"
        headers["ETag"] = f'"{entry.digest}{"-gzip" if compressed else ""}"'
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        if compressed:
            headers["Content-Encoding"] = "gzip"
            return Response(entry.gzipped, media_type=media_type, headers=headers)
        if entry.body is None:
            return FileResponse(path, media_type=media_type, headers=headers)
        return Response(entry.body, media_type=media_type, headers=headers)


def ohif_dist(request: Request) -> OhifDist:
    """The app's :class:`OhifDist`."""
    dist: OhifDist = request.app.state.ohif
    return dist


DistDep = Annotated[OhifDist, Depends(ohif_dist)]


def ohif_study_url(request: Request, study_instance_uid: str) -> str | None:
    """The viewer's URL for a study (for a link on the study page), or ``None`` when the
    viewer is not installed."""
    dist: OhifDist | None = getattr(request.app.state, "ohif", None)
    return None if dist is None else dist.study_url(study_instance_uid)


def _not_installed() -> HTTPException:
    return HTTPException(404, NOT_INSTALLED)


def build_ohif_router() -> APIRouter:
    """The routes below ``/viewer``; the app keeps an :class:`OhifDist` in
    ``app.state.ohif``."""
    router = APIRouter()

    @router.get("/viewer", include_in_schema=False, name="ohif_root")
    def viewer_root(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(MOUNT + query, status_code=307)

    @router.get(MOUNT + "app-config.js", name="ohif_app_config")
    def config_js(request: Request, dist: DistDep) -> Response:
        if not dist.installed:
            raise _not_installed()
        return Response(app_config_js(),
                        media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache",
                                 "Content-Security-Policy": content_security_policy()})

    @router.get(MOUNT + "{relative:path}", name="ohif_file")
    def viewer_file(request: Request, relative: str, dist: DistDep) -> Response:
        if not dist.installed:
            raise _not_installed()
        path = dist.file(relative) if relative else None
        if path is not None and path.name != "index.html":
            return dist.asset(request, relative, path)
        last = PurePosixPath(relative).name
        if "." in last and last != "index.html":
            raise HTTPException(404, "no such file in the viewer")
        return _index_page(request, dist)

    return router


def _index_page(request: Request, dist: OhifDist) -> Response:
    """``index.html`` for one of OHIF's routes, to a signed-in user (audited when it opens
    studies)."""
    viewer: Viewer = require_user(request)
    uids = [uid for value in request.query_params.getlist("StudyInstanceUIDs")
            for uid in value.split(",") if uid]
    if uids:
        database = get_context(request).database
        with database.sessions() as session:
            found = {uid: study_id for uid, study_id in session.execute(
                select(Study.study_instance_uid, Study.id)
                .where(Study.study_instance_uid.in_([u for u in uids if is_valid_uid(u)])))}
        for uid in uids:
            audit_view(database, viewer, "ohif_opened", "study",
                       uid if uid in found else None, study_id=found.get(uid),
                       details=None if uid in found else {"known": False})
    log_event(logger, logging.INFO, "ohif_page", studies=len(uids))
    html, hashes = dist.index()
    return Response(html, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-store",
        "Content-Security-Policy": content_security_policy(hashes),
    })


__all__ = [
    "MOUNT",
    "NOT_INSTALLED",
    "OhifDist",
    "app_config",
    "app_config_js",
    "build_ohif_router",
    "content_security_policy",
    "mount_asset",
    "mount_index_html",
    "ohif_study_url",
]
