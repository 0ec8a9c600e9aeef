"""DICOMweb QIDO-RS and WADO-RS over a real uvicorn server, driven by dicomweb-client.

The router is mounted at ``/dicomweb`` behind a bearer-token dependency standing in for
the web app's login. One server per database backend serves the archive of
:mod:`tests.integration.qr_archive`.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from pydicom import dcmread

from node.dicom.qr_keys import COMPREHENSIVE_SR
from node.web.dicomweb import MAX_RESULTS
from tests.integration.dicomweb_server import (
    MODALITY,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    Server,
    dicomweb_server,
    multipart_parts,
    value,
    values,
)
from tests.integration.qr_archive import dataset_of
from tests.reliability.bombs import write_deflate_bomb

pytestmark = pytest.mark.usefixtures("dcmtk_installed")


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with dicomweb_server(request.param,
                         tmp_path_factory.mktemp(f"dicomweb-{request.param}")) as running:
        yield running


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


def test_search_tells_the_unverified_draft_by_description_and_flags(server: Server) -> None:
    """QIDO-RS matches the draft SR's series description and its status flags."""
    content = server.content
    client = server.client()
    [series] = client.search_for_series(search_filters={"SeriesDescription": "*UNVERIFIED*"})
    assert value(series, SERIES_UID) == content.report_series_uid
    assert value(series, "00200011") == 9001  # Series Number of the draft series
    assert "UNVERIFIED" in value(series, "0008103E")
    fields = ["CompletionFlag", "VerificationFlag", "ContentDate", "ContentTime"]
    [draft] = client.search_for_instances(
        search_filters={"VerificationFlag": "UNVERIFIED", "CompletionFlag": "PARTIAL"},
        fields=fields)
    assert value(draft, SOP_UID) == content.report_sop_uid
    assert value(draft, "00200013") == 1  # Instance Number
    assert (value(draft, "0040A491"), value(draft, "0040A493")) == ("PARTIAL", "UNVERIFIED")
    stored = dcmread(server.stored(content.report_sop_uid))
    assert value(draft, "00080023") == stored.ContentDate
    assert client.search_for_instances(search_filters={"VerificationFlag": "VERIFIED"}) == []


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
                  'transfer-syntax=1.2.840.10008.1.2.4.50'})  # lossy: never made here
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


def test_retrieve_study_metadata_refers_to_bulk_data(server: Server) -> None:
    content = server.content
    a1 = content.studies["A1"]
    metadata = server.client().retrieve_study_metadata(a1.uid)
    assert {value(m, SOP_UID) for m in metadata} == {*a1.sop_uids, content.report_sop_uid}
    images = [m for m in metadata if value(m, MODALITY) == "DX"]
    assert all(set(m["7FE00010"]) == {"vr", "BulkDataURI"} for m in images)
    assert all("7FE00010" not in m for m in metadata if value(m, MODALITY) == "SR")
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
