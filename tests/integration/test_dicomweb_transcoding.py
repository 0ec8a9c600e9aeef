"""WADO-RS instance retrieve in other transfer syntaxes, single-part retrieve, and
WADO-URI, driven by dicomweb-client and plain HTTP over the archive of
:mod:`tests.integration.qr_archive` (A2 is stored JPEG-LS lossless, B1 uncompressed).
"""

from __future__ import annotations

import io
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node.dicom.ingest import InstanceIngestor
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicomweb_server import Server, dicomweb_server, multipart_parts
from tests.integration.qr_archive import StudyFiles, dataset_of, ingest_files
from tests.reliability.bombs import write_rle_bomb
from workers.inference.preprocess import load_display_image

pytestmark = pytest.mark.usefixtures("dcmtk_installed")

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with dicomweb_server(request.param,
                         tmp_path_factory.mktemp(f"transcode-{request.param}")) as running:
        yield running


@pytest.fixture(scope="module")
def multi(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A three-frame image, stored uncompressed."""
    ds = make_cxr_dataset(rows=40, cols=32, frames=3, patient_id="PX-M", seed=3)
    path = write_dataset(ds, tmp_path_factory.mktemp("multi") / "multi.dcm")
    ingest_files(InstanceIngestor(server.store, server.database.sessions), [path])
    return ds


def _original(study: StudyFiles) -> Dataset:
    """The first image of a study as made, before any compression."""
    name = study.files[0].name.removesuffix("-jls.dcm").removesuffix(".dcm")
    return dcmread(study.files[0].with_name(f"{name}.dcm"))


def _instance_path(study: StudyFiles) -> str:
    return f"/studies/{study.uid}/series/{study.series_uid}/instances/{study.sop_uids[0]}"


def _wado(study_uid: str, series_uid: str, sop_uid: str, **params: Any) -> dict[str, Any]:
    return {"requestType": "WADO", "studyUID": study_uid, "seriesUID": series_uid,
            "objectUID": sop_uid, **params}


# -- WADO-RS in other transfer syntaxes -------------------------------------------------------


def test_a_jpeg_ls_instance_asked_for_explicit_vr_little_endian(server: Server) -> None:
    a2 = server.content.studies["A2"]
    assert dcmread(server.stored(a2.sop_uids[0])).file_meta.TransferSyntaxUID == JPEGLSLossless
    instance = server.client().retrieve_instance(
        a2.uid, a2.series_uid, a2.sop_uids[0],
        media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert instance.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    original = _original(a2)
    np.testing.assert_array_equal(instance.pixel_array, original.pixel_array)
    assert instance.PixelData == original.PixelData
    assert instance.SOPInstanceUID == a2.sop_uids[0] and instance.PatientID == "QR-A"
    [study] = server.client().retrieve_study(
        a2.uid, media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert study.PixelData == original.PixelData


@pytest.mark.parametrize("syntax", [
    ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
    JPEG2000Lossless,
])
def test_an_uncompressed_instance_in_other_syntaxes(server: Server, syntax: str) -> None:
    b1 = server.content.studies["B1"]
    response = server.get(_instance_path(b1), headers={
        "Accept": f"{MULTIPART_DICOM}; transfer-syntax={syntax}"})
    assert response.status_code == 200
    [(content_type, data)] = multipart_parts(response)
    assert content_type == f"application/dicom; transfer-syntax={syntax}"
    received = dataset_of(data)
    assert received.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(received.pixel_array, _original(b1).pixel_array)


@pytest.mark.parametrize("syntax", [
    "1.2.840.10008.1.2.4.50",  # JPEG baseline: lossy, never made here
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 lossy
    "1.2.840.10008.1.2.2",  # big endian (retired)
    "1.2.3.4",
])
def test_syntaxes_the_node_does_not_make_are_refused(server: Server, syntax: str) -> None:
    b1 = server.content.studies["B1"]
    response = server.get(_instance_path(b1), headers={
        "Accept": f"{MULTIPART_DICOM}; transfer-syntax={syntax}"})
    assert response.status_code == 406


def test_the_preferred_syntax_the_node_can_make_is_chosen(server: Server) -> None:
    a2 = server.content.studies["A2"]
    accept = (f"{MULTIPART_DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50, "
              f"{MULTIPART_DICOM}; transfer-syntax={RLELossless}; q=0.5, "
              f"{MULTIPART_DICOM}; transfer-syntax={ExplicitVRLittleEndian}; q=0.9")
    [(content_type, data)] = multipart_parts(server.get(_instance_path(a2),
                                                        headers={"Accept": accept}))
    assert content_type.endswith(ExplicitVRLittleEndian)
    assert dataset_of(data).PixelData == _original(a2).PixelData


def test_single_part_application_dicom_is_the_bare_file(server: Server) -> None:
    b1, a2 = server.content.studies["B1"], server.content.studies["A2"]
    response = server.get(_instance_path(b1), headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert response.content == server.stored(b1.sop_uids[0]).read_bytes()
    assert response.content[128:132] == b"DICM"
    explicit = server.get(_instance_path(a2), headers={
        "Accept": f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"})
    assert explicit.headers["content-type"] == (
        f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}")
    assert dataset_of(explicit.content).PixelData == _original(a2).PixelData
    study = server.get(f"/studies/{b1.uid}", headers={"Accept": "application/dicom"})
    assert study.status_code == 406  # a study is several instances: multipart only


def test_a_bomb_asked_for_in_another_syntax_is_refused(server: Server,
                                                       tmp_path: Path) -> None:
    """A compressed instance's file swapped for an RLE bomb (16384 x 16384): asked for
    uncompressed (WADO-RS, WADO-URI), it answers 413 without being decoded."""
    a2 = server.content.studies["A2"]
    path = server.stored(a2.sop_uids[0])
    original = path.read_bytes()
    write_rle_bomb(tmp_path / "bomb.dcm")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        path.write_bytes((tmp_path / "bomb.dcm").read_bytes())
        refused = server.get(_instance_path(a2), headers={
            "Accept": f"{MULTIPART_DICOM}; transfer-syntax={ExplicitVRLittleEndian}"})
        uri = server.get("/wado", params=_wado(a2.uid, a2.series_uid, a2.sop_uids[0],
                                               contentType="application/dicom"))
    finally:
        path.write_bytes(original)
    assert (refused.status_code, uri.status_code) == (413, 413)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024


# -- WADO-URI ---------------------------------------------------------------------------------


def test_wado_uri_application_dicom(server: Server) -> None:
    a2 = server.content.studies["A2"]
    uids = (a2.uid, a2.series_uid, a2.sop_uids[0])
    response = server.get("/wado", params=_wado(*uids, contentType="application/dicom"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    received = dataset_of(response.content)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # the default
    assert received.PixelData == _original(a2).PixelData
    stored = server.get("/wado", params=_wado(*uids, contentType="application/dicom",
                                              transferSyntax=JPEGLSLossless))
    assert stored.content == server.stored(a2.sop_uids[0]).read_bytes()
    content = server.content
    report = server.get("/wado", params=_wado(a1_uid := content.studies["A1"].uid,
                                              content.report_series_uid,
                                              content.report_sop_uid))
    assert report.headers["content-type"] == "application/dicom"  # a report: no image
    assert dataset_of(report.content).SOPInstanceUID == content.report_sop_uid
    assert server.get("/wado", params=_wado(a1_uid, content.report_series_uid,
                                            content.report_sop_uid, contentType="image/jpeg")
                      ).status_code == 406


def test_wado_uri_images(server: Server, multi: Dataset) -> None:
    b1 = server.content.studies["B1"]
    uids = (b1.uid, b1.series_uid, b1.sop_uids[0])
    jpeg = server.get("/wado", params=_wado(*uids))
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    png = server.get("/wado", params=_wado(*uids, contentType="image/png",
                                           windowCenter="30000", windowWidth="20000"))
    reference = _original(b1)
    reference.WindowCenter, reference.WindowWidth = "30000", "20000"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))),
                                  load_display_image(reference).pixels)
    multi_uids = (str(multi.StudyInstanceUID), str(multi.SeriesInstanceUID),
                  str(multi.SOPInstanceUID))
    sized = server.get("/wado", params=_wado(*multi_uids, contentType="image/png",
                                             frameNumber="3", rows="20"))
    image = Image.open(io.BytesIO(sized.content))
    assert image.size == (16, 20)
    third = make_cxr_dataset(image=multi.pixel_array[2])
    expected = Image.fromarray(load_display_image(third).pixels).resize(
        (16, 20), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize(("params", "status"), [
    ({"requestType": None}, 400),
    ({"requestType": "WADO-RS"}, 400),
    ({"objectUID": None}, 400),
    ({"objectUID": "not-a-uid"}, 400),
    ({"objectUID": "1.2.3.4.5"}, 404),
    ({"anonymize": "yes"}, 400),
    ({"region": "0,0,0.5,0.5"}, 400),
    ({"windowCenter": "10"}, 400),
    ({"windowCenter": "10", "windowWidth": "0"}, 400),
    ({"rows": "0"}, 400),
    ({"frameNumber": "2"}, 404),
    ({"imageQuality": "0"}, 400),
    ({"contentType": "text/html"}, 406),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.50"}, 406),
])
def test_wado_uri_refusals(server: Server, params: dict[str, str | None],
                           status: int) -> None:
    b1 = server.content.studies["B1"]
    query = _wado(b1.uid, b1.series_uid, b1.sop_uids[0], **params)
    query = {k: v for k, v in query.items() if v is not None}
    assert server.get("/wado", params=query).status_code == status


def test_wado_uri_runs_the_authentication_dependency(server: Server) -> None:
    b1 = server.content.studies["B1"]
    response = httpx.get(f"{server.base_url}/wado",
                         params=_wado(b1.uid, b1.series_uid, b1.sop_uids[0]), timeout=10)
    assert response.status_code == 401
