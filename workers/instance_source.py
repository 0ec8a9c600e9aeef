"""Where a drafting job reads its study's instances: the shared folder, or the node over HTTP.

A worker on the node's host (or with the storage folder mounted) reads the stored files in
place (:class:`SharedFolderInstances`). A worker on another host without that folder
fetches each instance from the node's WADO-RS service with its service account's bearer
token (:class:`HttpInstances`) into a temporary folder of its own, checks that every part
is the instance it asked for, and removes the folder when the job attempt ends, whatever
its outcome. Connection errors and 5xx answers are tried again a few times; then the
attempt fails with :class:`~workers.errors.InstanceFetchError`, which the job retries
with back-off like any transient error.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.logs import log_event
from node.storage import InstanceStore, is_valid_uid
from workers.errors import InstanceFetchError

logger = logging.getLogger(__name__)

#: What the fetcher asks for: the stored Part 10 file, in whatever syntax it was stored.
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_RETRIED_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class InstanceRef:
    """One stored instance of the study being drafted (from the node's database)."""

    sop_instance_uid: str
    series_instance_uid: str
    path: str
    """Relative to the node's storage root."""


class InstanceProvider(Protocol):
    """Makes a study's instances readable as local files for the length of a job attempt."""

    @property
    def shares_storage(self) -> bool:
        """Whether the worker writes into the node's storage folder (draft SRs)."""
        ...

    def local_copies(self, study_uid: str,
                     instances: Sequence[InstanceRef]) -> AbstractContextManager[list[Path]]:
        """Local paths of ``instances``, in the same order, valid inside the ``with``."""
        ...


class SharedFolderInstances:
    """Read the stored files in place from the (shared) storage folder.

    Parameters
    ----------
    store
        The node's instance store, at the same root as the node's.
    """

    shares_storage = True

    def __init__(self, store: InstanceStore) -> None:
        self.store = store

    @contextmanager
    def local_copies(self, study_uid: str,
                     instances: Sequence[InstanceRef]) -> Iterator[list[Path]]:
        """The absolute paths of the stored files (nothing is copied or removed)."""
        yield [self.store.absolute(item.path) for item in instances]


def multipart_parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a ``multipart/related`` body into (headers, content) pairs.

    Parameters
    ----------
    body
        The whole response body.
    content_type
        The response's Content-Type, which names the boundary.

    Raises
    ------
    InstanceFetchError
        When the body is not multipart or is cut short.
    """
    media, *parameters = [part.strip() for part in content_type.split(";")]
    options = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        options[name.strip().lower()] = value.strip().strip('"')
    boundary = options.get("boundary")
    if media.lower() != "multipart/related" or not boundary:
        raise InstanceFetchError(f"expected multipart/related with a boundary, got {media!r}")
    delimiter = b"--" + boundary.encode("ascii")
    start = body.find(delimiter)
    if start < 0:
        raise InstanceFetchError("the multipart body holds no part")
    position = start + len(delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    while not body.startswith(b"--", position):
        line_end = body.find(b"\r\n", position)
        headers_end = body.find(b"\r\n\r\n", line_end)
        if line_end < 0 or headers_end < 0:
            raise InstanceFetchError("a multipart part is cut short")
        headers = {}
        for line in body[line_end + 2:headers_end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        content_start = headers_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise InstanceFetchError("the multipart body has no closing boundary")
        parts.append((headers, body[content_start:content_end]))
        position = content_end + 2 + len(delimiter)
    return parts


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a redirect with its own status instead of following it: urllib would send the
    bearer token on to wherever the redirect points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


class HttpInstances:
    """Fetch a study's instances from the node's WADO-RS service into a per-job folder.

    Parameters
    ----------
    node_url
        The node's web address (``https://host:port``), without a trailing slash.
    token
        The worker's service token, sent as ``Authorization: Bearer``.
    timeout_seconds
        Connection and read timeout of one request.
    attempts
        Tries per instance on connection errors and 5xx answers.
    retry_pause_seconds
        Pause before the second try, doubling for each further one.
    scratch_dir
        Parent of the per-job folders (the system's temporary folder when ``None``).
    ssl_context
        TLS settings for an ``https://`` node (the system's CAs when ``None``).
    """

    shares_storage = False

    def __init__(self, node_url: str, token: str, *, timeout_seconds: float = 60.0,
                 attempts: int = 3, retry_pause_seconds: float = 0.5,
                 scratch_dir: Path | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not node_url.startswith(("http://", "https://")):
            raise ValueError(f"node_url {node_url!r} must be an http:// or https:// address")
        if not token:
            raise ValueError("a service token is needed to fetch instances from the node")
        self.node_url = node_url.rstrip("/")
        self._token = token
        self.timeout_seconds = timeout_seconds
        self.attempts = attempts
        self.retry_pause_seconds = retry_pause_seconds
        self.scratch_dir = scratch_dir
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ssl_context), _RefuseRedirects())

    def instance_url(self, study_uid: str, item: InstanceRef) -> str:
        """The WADO-RS address of one instance."""
        for uid in (study_uid, item.series_instance_uid, item.sop_instance_uid):
            if not is_valid_uid(uid):
                raise InstanceFetchError("not a valid DICOM UID in the instance list")
        return (f"{self.node_url}/dicomweb/studies/{quote(study_uid)}/series/"
                f"{quote(item.series_instance_uid)}/instances/{quote(item.sop_instance_uid)}")

    def _get(self, url: str) -> tuple[bytes, str]:
        request = urllib.request.Request(url, headers={
            "Accept": ACCEPT, "Authorization": f"Bearer {self._token}",
        })
        last_error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                with self._opener.open(request, timeout=self.timeout_seconds) as response:
                    return response.read(), str(response.headers.get("Content-Type", ""))
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRIED_STATUSES:
                    raise InstanceFetchError(
                        f"the node answered {exc.code} {exc.reason} to a retrieve") from exc
                last_error = f"the node answered {exc.code} {exc.reason}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last_error = f"{type(exc).__name__}: {reason}"
            if attempt < self.attempts:
                log_event(logger, logging.WARNING, "instance_fetch_retry", attempt=attempt,
                          error=last_error)
                time.sleep(self.retry_pause_seconds * 2 ** (attempt - 1))
        raise InstanceFetchError(
            f"could not fetch an instance from {self.node_url} in {self.attempts} tries: "
            f"{last_error}")

    def fetch(self, study_uid: str, item: InstanceRef, target: Path) -> Path:
        """Fetch one instance into ``target`` and check it is the one asked for."""
        body, content_type = self._get(self.instance_url(study_uid, item))
        parts = multipart_parts(body, content_type)
        if len(parts) != 1:
            raise InstanceFetchError(f"expected one instance, the node sent {len(parts)}")
        target.write_bytes(parts[0][1])
        try:
            header = dcmread(target, stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise InstanceFetchError("the node sent a part that is not a DICOM file") from exc
        if (str(header.get("SOPInstanceUID", "")) != item.sop_instance_uid
                or str(header.get("StudyInstanceUID", "")) != study_uid):
            raise InstanceFetchError("the node sent a different instance than the one asked for")
        return target

    @contextmanager
    def local_copies(self, study_uid: str,
                     instances: Sequence[InstanceRef]) -> Iterator[list[Path]]:
        """Fetch every instance into a new temporary folder; remove it afterwards."""
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="radnode-job-", dir=self.scratch_dir))
        try:
            started = time.monotonic()
            paths = [self.fetch(study_uid, item, folder / f"{index:04d}.dcm")
                     for index, item in enumerate(instances)]
            log_event(logger, logging.INFO, "instances_fetched", instances=len(paths),
                      bytes=sum(p.stat().st_size for p in paths),
                      seconds=round(time.monotonic() - started, 3))
            yield paths
        finally:
            shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "ACCEPT",
    "HttpInstances",
    "InstanceProvider",
    "InstanceRef",
    "SharedFolderInstances",
    "multipart_parts",
]
