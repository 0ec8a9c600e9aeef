"""DICOMweb QIDO-RS and WADO-RS over a real uvicorn server, driven by dicomweb-client.

The router is mounted at ``/dicomweb`` behind a bearer-token dependency standing in for
the web app's login. One server per database backend serves the archive of
:mod:`tests.integration.qr_archive`.
"""

from __future__ import annotations

import re
import resource
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi import Depends, FastAPI, Header, HTTPException
from pydicom import dcmread

from node.dicom.ingest import InstanceIngestor
from node.dicom.qr_keys import COMPREHENSIVE_SR
from node.runtime import Database
from node.storage import InstanceStore
from node.web.dicomweb import MAX_RESULTS, build_dicomweb_router
from tests.conftest import free_port, make_settings
from tests.integration.dicom_net import wait_for
from tests.integration.qr_archive import (
    ArchiveContent,
    all_files,
    build_files,
    database_url_for,
    dataset_of,
    finish_archive,
    ingest_files,
    stored_path,
)
from tests.reliability.bombs import write_deflate_bomb

pytestmark = pytest.mark.usefixtures("dcmtk_installed")

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


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp(f"dicomweb-{request.param}")
    with database_url_for(request.param, folder) as url:
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


# -- QIDO-RS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, {"A1", "A2", "B1", "C1"}),
    ({"PatientID": "QR-A"}, {"A1", "A2"}),
    ({"PatientName": "beta*"}, {"B1"}),
    ({"StudyDate": "20240101-20240331"}, {"A1", "A2"}),
    ({"StudyDate": "-20221231"}, {"C1"}),
    ({"ModalitiesInStudy": "CR"}, {"A2", "B1"}),
    ({"ModalitiesInStudy": "SR,CR"}, {"A1", "A2", "B1"}),
    ({"00080050": "ACC-?1"}, {"A1", "B1", "C1"}),
])
def test_search_for_studies(server: Server, filters: dict[str, str],
                            expected: set[str]) -> None:
    results = server.client().search_for_studies(search_filters=filters)
    assert {value(r, STUDY_UID) for r in results} == server.content.study_uids(*expected)


def test_search_for_studies_by_uid_list(server: Server) -> None:
    a1, b1 = server.content.studies["A1"].uid, server.content.studies["B1"].uid
    results = server.client().search_for_studies(search_filters={"StudyInstanceUID": f"{a1},{b1}"})
    assert {value(r, STUDY_UID) for r in results} == {a1, b1}


def test_study_results_carry_the_default_attributes(server: Server) -> None:
    a1 = server.content.studies["A1"]
    [result] = server.client().search_for_studies(search_filters={"StudyInstanceUID": a1.uid})
    assert values(result, "00080061") == ["DX", "SR"]
    assert value(result, "00201206") == 2 and value(result, "00201208") == 3
    assert value(result, "00100010") == {"Alphabetic": "ALPHA^ANNA"}
    assert value(result, "00100020") == "QR-A" and value(result, "00080020") == "20240105"
    assert value(result, "00080056") == "ONLINE"
    # dicomweb-client sends a Host header without the port; the path is what counts here
    assert urlsplit(value(result, "00081190")).path == f"/dicomweb/studies/{a1.uid}"
    [raw] = server.get("/studies", params={"StudyInstanceUID": a1.uid}).json()
    assert value(raw, "00081190") == f"{server.base_url}/studies/{a1.uid}"
    assert "00081030" not in result  # StudyDescription only when asked for
    [described] = server.client().search_for_studies(
        search_filters={"StudyInstanceUID": a1.uid}, fields=["StudyDescription"])
    assert value(described, "00081030") == "CHEST 2 VIEWS"


def test_search_pages_with_limit_and_offset(server: Server) -> None:
    client = server.client()
    first = client.search_for_studies(limit=3, offset=0)
    rest = client.search_for_studies(limit=3, offset=3)
    assert (len(first), len(rest)) == (3, 1)
    assert client.search_for_studies(offset=4) == []
    everything = {value(r, STUDY_UID) for r in client.search_for_studies(limit=1,
                                                                         get_remaining=True)}
    assert everything == {s.uid for s in server.content.studies.values()}
    paged = server.get("/studies", params={"limit": "2"})
    assert paged.status_code == 200 and "additional results" in paged.headers["warning"]
    assert server.get("/studies", params={"offset": "10"}).status_code == 204
    assert MAX_RESULTS >= 1000


def test_search_for_series_lists_the_report_series(server: Server) -> None:
    content = server.content
    a1 = content.studies["A1"]
    results = server.client().search_for_series(study_instance_uid=a1.uid)
    found = {value(r, SERIES_UID): (value(r, MODALITY), value(r, "00201209")) for r in results}
    assert found == {a1.series_uid: ("DX", 2), content.report_series_uid: ("SR", 1)}
    reports = server.client().search_for_series(search_filters={"Modality": "SR"})
    assert [value(r, SERIES_UID) for r in reports] == [content.report_series_uid]
    assert value(reports[0], STUDY_UID) == a1.uid
    assert value(reports[0], "00100020") == "QR-A"  # study attributes on /series


def test_search_for_instances(server: Server) -> None:
    content = server.content
    a1 = content.studies["A1"]
    client = server.client()
    [sr] = client.search_for_instances(study_instance_uid=a1.uid,
                                       series_instance_uid=content.report_series_uid)
    assert value(sr, SOP_UID) == content.report_sop_uid
    assert value(sr, "00080016") == COMPREHENSIVE_SR
    in_study = client.search_for_instances(study_instance_uid=a1.uid)
    assert {value(r, SOP_UID) for r in in_study} == {*a1.sop_uids, content.report_sop_uid}
    numbered = client.search_for_instances(study_instance_uid=a1.uid,
                                           search_filters={"InstanceNumber": "2"})
    assert [value(r, SOP_UID) for r in numbered] == [a1.sop_uids[1]]
    everywhere = client.search_for_instances(search_filters={"Modality": "CR"},
                                             fields=["all"])
    cr_uids = {*content.studies["A2"].sop_uids, *content.studies["B1"].sop_uids}
    assert {value(r, SOP_UID) for r in everywhere} == cr_uids
    assert all(value(r, "00280010") == 48 for r in everywhere)  # Rows, from includefield=all


# -- WADO-RS ----------------------------------------------------------------------------------


def test_retrieve_instance_returns_the_stored_file(server: Server) -> None:
    b1 = server.content.studies["B1"]
    path = f"/studies/{b1.uid}/series/{b1.series_uid}/instances/{b1.sop_uids[0]}"
    response = server.get(path, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"; boundary=')
    [(content_type, data)] = multipart_parts(response)
    assert content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert data == server.stored(b1.sop_uids[0]).read_bytes()

    instance = server.client().retrieve_instance(b1.uid, b1.series_uid, b1.sop_uids[0])
    original = dcmread(b1.files[0])
    assert instance.SOPInstanceUID == b1.sop_uids[0]
    np.testing.assert_array_equal(instance.pixel_array, original.pixel_array)


def test_retrieve_keeps_the_stored_transfer_syntax(server: Server) -> None:
    a2 = server.content.studies["A2"]
    response = server.get(f"/studies/{a2.uid}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    [(content_type, data)] = multipart_parts(response)
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.4.80")  # JPEG-LS lossless
    assert data == server.stored(a2.sop_uids[0]).read_bytes()
    refused = server.get(f"/studies/{a2.uid}", headers={
        "Accept": 'multipart/related; type="application/dicom"; '
                  'transfer-syntax=1.2.840.10008.1.2.1'})
    assert refused.status_code == 406


def test_retrieve_study_and_series(server: Server) -> None:
    content = server.content
    a1 = content.studies["A1"]
    client = server.client()
    study = client.retrieve_study(a1.uid)
    assert {str(ds.SOPInstanceUID) for ds in study} == {*a1.sop_uids, content.report_sop_uid}
    series = client.retrieve_series(a1.uid, content.report_series_uid)
    assert [str(ds.SOPInstanceUID) for ds in series] == [content.report_sop_uid]
    assert series[0].Modality == "SR"
    raw = server.get(f"/studies/{a1.uid}")
    by_uid = {str(dataset_of(data).SOPInstanceUID): data for _, data in multipart_parts(raw)}
    assert all(data == server.stored(uid).read_bytes() for uid, data in by_uid.items())


def test_retrieve_study_metadata_has_no_bulk_data(server: Server) -> None:
    content = server.content
    a1 = content.studies["A1"]
    metadata = server.client().retrieve_study_metadata(a1.uid)
    assert {value(m, SOP_UID) for m in metadata} == {*a1.sop_uids, content.report_sop_uid}
    assert all("7FE00010" not in m for m in metadata)
    images = [m for m in metadata if value(m, MODALITY) == "DX"]
    assert all(value(m, "00280010") == 48 for m in images)
    instance = server.client().retrieve_instance_metadata(
        a1.uid, content.report_series_uid, content.report_sop_uid)
    assert value(instance, "0040A496") == "PRELIMINARY"  # the draft SR's Preliminary Flag
    response = server.get(f"/studies/{a1.uid}/series/{a1.series_uid}/metadata")
    assert response.headers["content-type"] == "application/dicom+json"
    assert len(response.json()) == 2


def test_metadata_of_a_deflate_bomb_is_refused_before_inflation(
        server: Server, tmp_path: Path) -> None:
    """A stored instance whose deflated body inflates past the limit (1.5 GB) is skipped
    by WADO-RS metadata without being inflated: 404 for it alone, nothing held."""
    a1 = server.content.studies["A1"]
    sop_uid = sorted(a1.sop_uids)[0]
    path = server.stored(sop_uid)
    original = path.read_bytes()
    write_deflate_bomb(tmp_path / "bomb.dcm")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        path.write_bytes((tmp_path / "bomb.dcm").read_bytes())
        response = server.get(f"/studies/{a1.uid}/series/{a1.series_uid}/instances/"
                              f"{sop_uid}/metadata")
    finally:
        path.write_bytes(original)
    assert response.status_code == 404
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024


# -- refusals ---------------------------------------------------------------------------------


def test_the_router_runs_its_authentication_dependency(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/studies", timeout=10)
    assert response.status_code == 401
    a1 = server.content.studies["A1"]
    assert httpx.get(f"{server.base_url}/studies/{a1.uid}", timeout=10).status_code == 401


@pytest.mark.parametrize(("path", "params", "status"), [
    ("/studies/1.2.3.4.5", {}, 404),
    ("/studies/1.2.3.4.5/metadata", {}, 404),
    ("/studies/not-a-uid", {}, 400),
    ("/studies/not-a-uid/series", {}, 400),
    ("/studies", {"NoSuchAttribute": "x"}, 400),
    ("/studies", {"StudyDate": "2024-01-01"}, 400),
    ("/studies", {"limit": "-1"}, 400),
    ("/studies", {"includefield": "Bogus"}, 400),
])
def test_bad_requests(server: Server, path: str, params: dict[str, str], status: int) -> None:
    assert server.get(path, params=params).status_code == status


def test_unsupported_keys_are_ignored_with_a_warning(server: Server) -> None:
    response = server.get("/studies", params={"PatientID": "QR-B", "Modality": "CR"})
    assert response.status_code == 200
    assert "ignored: Modality" in response.headers["warning"]
    assert [value(r, "00100020") for r in response.json()] == ["QR-B"]


def test_search_refuses_other_media_types(server: Server) -> None:
    response = server.get("/studies", headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406
