"""WADO-RS frames, bulk data, rendered and thumbnail resources, driven by dicomweb-client
and plain HTTP, over the archive of :mod:`tests.integration.qr_archive` plus a few images
made here (a multi-frame image stored uncompressed and RLE, MONOCHROME1, an icon image).
"""

from __future__ import annotations

import datetime as dt
import io
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RLELossless
from sqlalchemy import func, select

from node.db.models import AuditEvent, Report, Study
from node.dicom.ingest import InstanceIngestor
from node.states import ReportState
from node.web.wado_source import DEFER_BYTES
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicomweb_server import Server, dicomweb_server, multipart_parts
from tests.integration.qr_archive import ingest_files
from tests.reliability.bombs import write_deflate_bomb, write_rle_bomb
from workers.inference.preprocess import load_display_image

pytestmark = pytest.mark.usefixtures("dcmtk_installed")

OCTET = "application/octet-stream"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LS = "1.2.840.10008.1.2.4.80"
OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@dataclass
class Image_:
    """An image put into the node here: its UIDs and the dataset as sent."""

    study: str
    series: str
    sop: str
    dataset: Dataset

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Extra:
    multi: Image_
    rle: Image_
    mono1: Image_
    mono2: Image_
    icon: Image_


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with dicomweb_server(request.param,
                         tmp_path_factory.mktemp(f"pixels-{request.param}")) as running:
        yield running


def _image(ds: Dataset) -> Image_:
    return Image_(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                  str(ds.SOPInstanceUID), ds)


@pytest.fixture(scope="module")
def extra(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Extra:
    folder = tmp_path_factory.mktemp("extra")
    multi = make_cxr_dataset(rows=40, cols=32, frames=3, patient_id="PX-M", seed=3)
    rle = make_cxr_dataset(rows=256, cols=256, frames=3, patient_id="PX-R", seed=4)
    rle.compress(RLELossless, generate_instance_uid=False)
    windows = [(2000.0, 3000.0)]
    mono1 = make_cxr_dataset(rows=36, cols=36, bits=12, photometric="MONOCHROME1",
                             windows=[(4095 - 2000.0, 3000.0)], modality="CR",
                             patient_id="PX-1", seed=5)  # the same window, mirrored
    mono2 = make_cxr_dataset(rows=36, cols=36, bits=12, windows=windows, modality="CR",
                             patient_id="PX-2", seed=5)
    icon = make_cxr_dataset(rows=200, cols=300, patient_id="PX-I", seed=6)
    item = Dataset()
    item.Rows, item.Columns, item.SamplesPerPixel = 64, 64, 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.BitsAllocated, item.BitsStored, item.HighBit, item.PixelRepresentation = 8, 8, 7, 0
    item.PixelData = bytes(range(256)) * 16
    item["PixelData"].VR = "OB"
    icon.IconImageSequence = DicomSequence([item])
    files = [write_dataset(ds, folder / f"{n}.dcm")
             for n, ds in enumerate((multi, rle, mono1, mono2, icon))]
    ingest_files(InstanceIngestor(server.store, server.database.sessions), files)
    return Extra(*(_image(ds) for ds in (multi, rle, mono1, mono2, icon)))


def _archive_image(server: Server, name: str) -> Image_:
    study = server.content.studies[name]
    return _image(dcmread(study.files[0]))


def _native(ds: Dataset, frame: int) -> bytes:
    """The native bytes of 1-based ``frame`` of an image, decoded by pydicom."""
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[frame - 1]
    return np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()


def _reads(server: Server, resource_name: str) -> list[AuditEvent]:
    with server.database.sessions() as session:
        return [e for e in session.scalars(select(AuditEvent).where(
            AuditEvent.action == "dicomweb_read").order_by(AuditEvent.id))
            if e.details and e.details.get("resource") == resource_name]


# -- frames -----------------------------------------------------------------------------------


def test_frames_of_an_uncompressed_image_are_its_native_bytes(server: Server) -> None:
    b1 = _archive_image(server, "B1")
    [frame] = server.client().retrieve_instance_frames(
        b1.study, b1.series, b1.sop, frame_numbers=[1], media_types=(OCTET,))
    assert frame == b1.dataset.PixelData
    response = server.get(f"{b1.path}/frames/1", headers={"Accept": OHIF_ACCEPT})
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"; boundary=')
    [(content_type, data)] = multipart_parts(response)
    assert content_type == f"{OCTET}; transfer-syntax={EXPLICIT_LE}"
    assert data == b1.dataset.PixelData


def test_frames_of_a_jpeg_ls_image_decoded_by_default(server: Server) -> None:
    a2 = _archive_image(server, "A2")
    stored = dcmread(server.stored(a2.sop))
    assert stored.file_meta.TransferSyntaxUID == JPEG_LS
    [frame] = server.client().retrieve_instance_frames(a2.study, a2.series, a2.sop,
                                                       frame_numbers=[1])
    assert frame == _native(stored, 1)
    original = dcmread(server.content.studies["A2"].files[0].with_name("A2-1.dcm"))
    assert frame == original.PixelData  # lossless: the pixels as sent before compression


def test_ohif_accept_gets_the_stored_bitstream_with_its_media_type(server: Server) -> None:
    a2 = _archive_image(server, "A2")
    response = server.get(f"{a2.path}/frames/1", headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="image/jls"')
    [(content_type, data)] = multipart_parts(response)
    assert content_type == f"image/jls; transfer-syntax={JPEG_LS}"
    stored = dcmread(server.stored(a2.sop))
    assert data == get_frame(stored.PixelData, 0, number_of_frames=1)
    [same] = server.client().retrieve_instance_frames(
        a2.study, a2.series, a2.sop, frame_numbers=[1], media_types=(("image/jls", JPEG_LS),))
    assert same == data


@pytest.mark.parametrize(("name", "accept"), [
    ("B1", "multipart/related; type=image/jls"),
    ("A2", "multipart/related; type=image/jp2"),
    ("A2", f"multipart/related; type=image/jls; transfer-syntax={EXPLICIT_LE}"),
    ("A2", "application/dicom"),
    ("A2", "image/png"),
])
def test_frames_refuse_what_they_cannot_serve(server: Server, name: str, accept: str) -> None:
    image = _archive_image(server, name)
    assert server.get(f"{image.path}/frames/1", headers={"Accept": accept}).status_code == 406


def test_frames_of_a_multi_frame_image_in_the_order_asked(server: Server,
                                                          extra: Extra) -> None:
    multi = extra.multi
    frames = server.client().retrieve_instance_frames(multi.study, multi.series, multi.sop,
                                                      frame_numbers=[3, 1])
    assert frames == [_native(multi.dataset, 3), _native(multi.dataset, 1)]
    assert frames[0] != frames[1]


def test_frames_of_an_rle_image_stored_or_decoded(server: Server, extra: Extra) -> None:
    rle = extra.rle
    response = server.get(f"{rle.path}/frames/2,3", headers={"Accept": OHIF_ACCEPT})
    parts = multipart_parts(response)
    assert [t for t, _ in parts] == [f"image/dicom-rle; transfer-syntax={RLELossless}"] * 2
    assert [d for _, d in parts] == [get_frame(rle.dataset.PixelData, i, number_of_frames=3)
                                     for i in (1, 2)]
    [decoded] = server.client().retrieve_instance_frames(rle.study, rle.series, rle.sop,
                                                         frame_numbers=[2])
    assert decoded == _native(rle.dataset, 2)


@pytest.mark.parametrize(("frames", "status"), [
    ("4", 404), ("1,4", 404), ("0", 400), ("-1", 400), ("a", 400), ("1,,2", 400),
    ("1.5", 400), ("99999999999", 400),
])
def test_frame_numbers_out_of_range_or_malformed(server: Server, extra: Extra, frames: str,
                                                 status: int) -> None:
    assert server.get(f"{extra.multi.path}/frames/{frames}").status_code == status


def test_frames_of_a_report_or_an_unknown_instance_are_not_found(server: Server) -> None:
    content = server.content
    a1 = content.studies["A1"]
    report = (f"/studies/{a1.uid}/series/{content.report_series_uid}/instances/"
              f"{content.report_sop_uid}/frames/1")
    assert server.get(report).status_code == 404
    unknown = f"/studies/{a1.uid}/series/{a1.series_uid}/instances/1.2.3.4/frames/1"
    assert server.get(unknown).status_code == 404


# -- bulk data --------------------------------------------------------------------------------


def test_metadata_refers_to_pixel_data_and_large_values_by_uri(server: Server,
                                                               extra: Extra) -> None:
    icon = extra.icon
    [metadata] = server.client().retrieve_series_metadata(icon.study, icon.series)
    pixel = metadata["7FE00010"]
    assert set(pixel) == {"vr", "BulkDataURI"} and pixel["vr"] == "OW"
    assert urlsplit(pixel["BulkDataURI"]).path == (
        f"/dicomweb{icon.path}/bulkdata/7FE00010")
    [item] = metadata["00880200"]["Value"]
    assert item["00280010"]["Value"] == [64]
    assert urlsplit(item["7FE00010"]["BulkDataURI"]).path.endswith(
        "/bulkdata/00880200/0/7FE00010")
    assert "InlineBinary" not in str(metadata)


def test_bulk_data_uris_answer_the_values(server: Server, extra: Extra) -> None:
    icon = extra.icon
    assert len(icon.dataset.PixelData) > DEFER_BYTES  # read from the file, frame by frame
    [metadata] = server.client().retrieve_series_metadata(icon.study, icon.series)
    pixel_uri = urlsplit(metadata["7FE00010"]["BulkDataURI"]).path.removeprefix("/dicomweb")
    icon_uri = urlsplit(metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]).path
    response = server.get(pixel_uri)
    [(content_type, data)] = multipart_parts(response)
    assert content_type == f"{OCTET}; transfer-syntax={EXPLICIT_LE}"
    assert data == icon.dataset.PixelData
    [(_, nested)] = multipart_parts(server.get(icon_uri.removeprefix("/dicomweb")))
    assert nested == bytes(range(256)) * 16
    client = server.client()
    assert client.retrieve_bulkdata(f"{server.base_url}{pixel_uri}") == [
        icon.dataset.PixelData]


def test_bulk_data_of_a_multi_frame_rle_image(server: Server, extra: Extra) -> None:
    rle = extra.rle
    native = multipart_parts(server.get(f"{rle.path}/bulkdata/7FE00010"))
    assert [d for _, d in native] == [b"".join(_native(rle.dataset, n) for n in (1, 2, 3))]
    stored = multipart_parts(server.get(f"{rle.path}/bulkdata/7FE00010",
                                        headers={"Accept": OHIF_ACCEPT}))
    assert len(stored) == 3 and stored[0][0].startswith("image/dicom-rle")


@pytest.mark.parametrize(("path", "status"), [
    ("00100010", 404),  # Patient's Name: not a binary value
    ("00880200/1/7FE00010", 404),  # no second item
    ("00880200/0", 400),
    ("7FE0001", 400),
    ("00880200/x/7FE00010", 400),
])
def test_bad_bulk_data_paths(server: Server, extra: Extra, path: str, status: int) -> None:
    assert server.get(f"{extra.icon.path}/bulkdata/{path}").status_code == status


# -- rendered and thumbnails ------------------------------------------------------------------


def _png(response_content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response_content)))


def test_rendered_is_the_display_pipeline(server: Server, extra: Extra) -> None:
    b1 = _archive_image(server, "B1")
    response = server.get(f"{b1.path}/rendered", headers={"Accept": "image/png"})
    assert response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(_png(response.content), load_display_image(b1.dataset).pixels)
    jpeg = server.get(f"{b1.path}/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (48, 48)
    rendered = server.client().retrieve_instance_rendered(b1.study, b1.series, b1.sop,
                                                          media_types=("image/png",))
    np.testing.assert_array_equal(_png(rendered), load_display_image(b1.dataset).pixels)


def test_rendered_window_monochrome1_and_frames(server: Server, extra: Extra) -> None:
    one = _png(server.get(f"{extra.mono1.path}/rendered", params={"accept": "image/png"}).content)
    two = _png(server.get(f"{extra.mono2.path}/rendered", params={"accept": "image/png"}).content)
    # MONOCHROME1 inverted back to what was meant (a rounding step apart at most)
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
    assert np.abs(one.astype(int) - (255 - two.astype(int))).mean() > 20
    windowed = _png(server.get(f"{extra.mono2.path}/rendered", params={
        "accept": "image/png", "window": "1000,500,linear"}).content)
    reference = extra.mono2.dataset.copy()
    reference.WindowCenter, reference.WindowWidth = "1000", "500"
    np.testing.assert_array_equal(windowed, load_display_image(reference).pixels)
    assert not np.array_equal(windowed, two)
    multi = extra.multi
    second = _png(server.get(f"{multi.path}/frames/2/rendered",
                             headers={"Accept": "image/png"}).content)
    frame2 = make_cxr_dataset(image=multi.dataset.pixel_array[1])
    np.testing.assert_array_equal(second, load_display_image(frame2).pixels)


def test_rendered_viewport_and_quality(server: Server, extra: Extra) -> None:
    multi = extra.multi  # 32 columns, 40 rows
    small = server.get(f"{multi.path}/rendered", params={"viewport": "16,16"})
    assert Image.open(io.BytesIO(small.content)).size == (13, 16)
    large = server.get(f"{multi.path}/rendered", params={"viewport": "100,80"})
    assert Image.open(io.BytesIO(large.content)).size == (64, 80)
    b1 = _archive_image(server, "B1")
    low = server.get(f"{b1.path}/rendered", params={"quality": "5"}).content
    high = server.get(f"{b1.path}/rendered", params={"quality": "100"}).content
    assert len(low) < len(high)


@pytest.mark.parametrize(("params", "accept", "status"), [
    ({"viewport": "0,10"}, None, 400),
    ({"viewport": "10"}, None, 400),
    ({"viewport": "5000,5000"}, None, 400),
    ({"quality": "101"}, None, 400),
    ({"window": "10,0"}, None, 400),
    ({"window": "10,20,cubic"}, None, 400),
    ({"window": "nan,20"}, None, 400),
    ({}, "image/gif", 406),
    ({}, "application/dicom", 406),
])
def test_bad_rendering_requests(server: Server, extra: Extra, params: dict[str, str],
                                accept: str | None, status: int) -> None:
    headers = {"Accept": accept} if accept else {}
    response = server.get(f"{extra.multi.path}/rendered", params=params, headers=headers)
    assert response.status_code == status


def test_thumbnails_are_small(server: Server, extra: Extra) -> None:
    icon = extra.icon  # 300 columns, 200 rows
    for path in (f"/studies/{icon.study}/thumbnail",
                 f"/studies/{icon.study}/series/{icon.series}/thumbnail",
                 f"{icon.path}/thumbnail", f"{icon.path}/frames/1/thumbnail"):
        response = server.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (128, 85)
    multi = extra.multi  # 32 x 40: never enlarged
    assert Image.open(io.BytesIO(server.get(f"{multi.path}/frames/3/thumbnail").content)
                      ).size == (32, 40)
    tiny = server.get(f"{multi.path}/thumbnail", params={"viewport": "20,20"})
    assert Image.open(io.BytesIO(tiny.content)).size == (16, 20)
    assert server.get(f"{multi.path}/thumbnail", params={"viewport": "512,512"}
                      ).status_code == 400
    a1 = server.content.studies["A1"]
    report_series = server.get(f"/studies/{a1.uid}/series/"
                               f"{server.content.report_series_uid}/thumbnail")
    assert report_series.status_code == 404  # a report has no image
    png = server.get(f"/studies/{icon.study}/thumbnail", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    frame = server.client().retrieve_instance_frames_rendered(
        multi.study, multi.series, multi.sop, frame_numbers=[2], media_types=("image/png",))
    assert Image.open(io.BytesIO(frame)).size == (32, 40)


# -- limits, evidence, audit, authentication --------------------------------------------------


@pytest.mark.parametrize("bomb", ["deflate", "rle"])
def test_decompression_bombs_are_refused_before_decoding(
        server: Server, extra: Extra, tmp_path: Path, bomb: str) -> None:
    """A stored file swapped for a bomb (1.5 GB inflated, or 16384 x 16384 RLE): every
    pixel resource answers 413 without inflating or decoding it (renderings of the file
    made before are not served from the cache)."""
    target = extra.mono2
    for suffix in ("/rendered", "/thumbnail"):
        assert server.get(f"{target.path}{suffix}").status_code == 200
    path = server.stored(target.sop)
    original = path.read_bytes()
    (write_deflate_bomb if bomb == "deflate" else write_rle_bomb)(tmp_path / "bomb.dcm")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        path.write_bytes((tmp_path / "bomb.dcm").read_bytes())
        statuses = {p: server.get(p).status_code for p in (
            f"{target.path}/frames/1", f"{target.path}/rendered", f"{target.path}/thumbnail",
            f"{target.path}/bulkdata/7FE00010")}
    finally:
        path.write_bytes(original)
    assert statuses == dict.fromkeys(statuses, 413)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024


def test_reads_are_audited(server: Server, extra: Extra) -> None:
    multi = extra.multi
    before = {name: len(_reads(server, name)) for name in ("frames", "rendered", "thumbnail",
                                                          "metadata", "bulkdata")}
    server.get(f"{multi.path}/frames/1")
    server.get(f"{multi.path}/rendered")
    server.get(f"{multi.path}/thumbnail")
    server.get(f"{multi.path}/metadata")
    server.get(f"{multi.path}/bulkdata/7FE00010")
    server.get(f"{multi.path}/frames/9")  # refused: not a read
    for name, count in before.items():
        events = _reads(server, name)
        assert len(events) == count + 1, name
        assert events[-1].object_id == multi.study and events[-1].study_id is not None
        assert events[-1].actor == "dicomweb"


def _sign(server: Server, study_uid: str) -> None:
    with server.database.sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        evidence = {i.sop_instance_uid: i.sha256 for i in study.instances}
        session.add(Report(study_id=study.id, state=ReportState.FINAL, findings="F.",
                           impression="I.", signed_at=dt.datetime.now(dt.UTC),
                           signed_evidence=evidence))


def test_a_changed_file_behind_a_signed_report_is_never_served(server: Server,
                                                               extra: Extra) -> None:
    """Other pixel bytes in a signed image's file: every pixel resource answers 409 and
    audits the refusal; once the file is back, it is served again."""
    multi = extra.multi
    _sign(server, multi.study)
    path = server.stored(multi.sop)
    original = path.read_bytes()
    paths = [f"{multi.path}/frames/1", f"{multi.path}/rendered",
             f"{multi.path}/frames/2/rendered", f"{multi.path}/thumbnail",
             f"/studies/{multi.study}/thumbnail", f"{multi.path}/bulkdata/7FE00010",
             f"{multi.path}/metadata", multi.path,
             f"/wado?requestType=WADO&studyUID={multi.study}&seriesUID={multi.series}"
             f"&objectUID={multi.sop}&contentType=image/png"]
    with server.database.sessions() as session:
        before = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "signed_evidence_mismatch"))
    try:
        path.write_bytes(original[:-10] + bytes(10))
        statuses = {p: server.get(p).status_code for p in paths}
    finally:
        path.write_bytes(original)
    assert statuses == dict.fromkeys(paths, 409)
    with server.database.sessions() as session:
        events = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "signed_evidence_mismatch").order_by(AuditEvent.id)))
    assert len(events) - (before or 0) == len(paths)
    assert all(e.details and e.details["sop_instance_uids"] == [multi.sop]
               for e in events[-len(paths):])
    assert {p: server.get(p).status_code for p in paths} == dict.fromkeys(paths, 200)


@pytest.mark.parametrize("suffix", [
    "/frames/1", "/rendered", "/frames/1/rendered", "/thumbnail", "/frames/1/thumbnail",
    "/bulkdata/7FE00010",
])
def test_every_pixel_route_runs_the_authentication_dependency(
        server: Server, extra: Extra, suffix: str) -> None:
    url = f"{server.base_url}{extra.multi.path}{suffix}"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10
                     ).status_code == 401
    multi = extra.multi
    for path in (f"/studies/{multi.study}/thumbnail",
                 f"/studies/{multi.study}/series/{multi.series}/thumbnail",
                 f"/wado?requestType=WADO&studyUID={multi.study}&seriesUID={multi.series}"
                 f"&objectUID={multi.sop}"):
        assert httpx.get(f"{server.base_url}{path}", timeout=10).status_code == 401
