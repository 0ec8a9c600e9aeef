"""A uvicorn server with the DICOMweb router over the archive of
:mod:`tests.integration.qr_archive`, for the DICOMweb tests.

The router is mounted at ``/dicomweb`` behind a bearer-token dependency standing in for
the web app's login.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi import Depends, FastAPI, Header, HTTPException

from node.dicom.ingest import InstanceIngestor
from node.runtime import Database
from node.storage import InstanceStore
from node.web.dicomweb import build_dicomweb_router
from tests.conftest import free_port, make_settings
from tests.integration.dicom_net import wait_for
from tests.integration.qr_archive import (
    ArchiveContent,
    all_files,
    build_files,
    database_url_for,
    finish_archive,
    ingest_files,
    stored_path,
)

TOKEN = "test-token"


@dataclass
class Server:
    """A uvicorn server with the DICOMweb router, and what it serves."""

    base_url: str
    content: ArchiveContent
    database: Database
    store: InstanceStore

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.base_url, headers={"Authorization": f"Bearer {TOKEN}"})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return httpx.get(f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)

    def stored(self, sop_uid: str) -> Path:
        return stored_path(self.database.sessions, self.store, sop_uid)


def require_token(authorization: str | None = Header(default=None)) -> None:
    """The stand-in for the web app's authentication dependency."""
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "authentication required",
                            headers={"WWW-Authenticate": "Bearer"})


@contextmanager
def dicomweb_server(backend: str, folder: Path) -> Iterator[Server]:
    """Ingest the archive into a fresh database of ``backend`` and serve it."""
    with database_url_for(backend, folder) as url:
        settings = make_settings(folder, url)
        database = Database.from_settings(settings, migrate=True)
        store = InstanceStore(folder / "storage", min_free_mb=1, max_used_percent=100)
        content = build_files(folder / "files")
        ingest_files(InstanceIngestor(store, database.sessions), all_files(content))
        finish_archive(database.sessions, store, content)
        app = FastAPI()
        app.include_router(
            build_dicomweb_router(database.sessions, store,
                                  dependencies=[Depends(require_token)]),
            prefix="/dicomweb",
        )
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off")
        uvicorn_server = uvicorn.Server(config)
        thread = threading.Thread(target=uvicorn_server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: uvicorn_server.started, timeout=15, what="uvicorn")
            yield Server(f"http://127.0.0.1:{port}/dicomweb", content, database, store)
        finally:
            uvicorn_server.should_exit = True
            thread.join(timeout=10)
            database.engine.dispose()


def value(result: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object (``None`` when empty)."""
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


def values(result: dict[str, Any], tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value", []))


STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """Split a multipart/related body into (content type, bytes) parts."""
    match = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"])
    assert match is not None
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        content_type = re.search(rb"Content-Type: ([^\r\n]+)", head)
        assert content_type is not None
        parts.append((content_type.group(1).decode(), data.removesuffix(b"\r\n")))
    return parts
