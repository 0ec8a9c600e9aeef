"""Every stored transfer syntax the node accepts, through the DICOMweb pixel resources.

One 12-bit chest image is converted by DCMTK (and JPEG 2000 by pydicom's encoder) into
each syntax, ingested, and asked for as frames (native and stored), metadata, rendered
PNG and an Explicit VR Little Endian instance; each answer is checked against pydicom's
own reading of the stored file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID, ExplicitVRLittleEndian

from node.dicom.ingest import InstanceIngestor
from node.web.wado_media import PIXEL_MEDIA_TYPES
from tests.dicom_factory import (
    DcmtkSyntax,
    compress_jpeg2000,
    compress_with_dcmtk,
    make_cxr_dataset,
    write_dataset,
)
from tests.integration.dicomweb_server import Server, dicomweb_server, multipart_parts
from tests.integration.qr_archive import dataset_of, ingest_files
from workers.inference.preprocess import load_display_image

pytestmark = pytest.mark.usefixtures("dcmtk_installed")

SYNTAXES = ["implicit_little", "explicit_big", "deflate", "jpeg_baseline", "jpeg_lossless",
            "jpegls_lossless", "jpegls_near_lossless", "rle", "jpeg2000"]
OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with dicomweb_server(request.param,
                         tmp_path_factory.mktemp(f"syntaxes-{request.param}")) as running:
        yield running


@pytest.fixture(scope="module")
def stored(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Syntax name to the URL of its instance."""
    folder = tmp_path_factory.mktemp("syntaxes")
    files: dict[str, Path] = {}
    for number, name in enumerate(SYNTAXES, start=1):
        ds = make_cxr_dataset(rows=64, cols=48, bits=12 if name != "jpeg_baseline" else 8,
                              patient_id=f"PX-{number}", seed=number)
        plain = write_dataset(ds, folder / f"{name}-plain.dcm")
        files[name] = (compress_jpeg2000(plain, folder / f"{name}.dcm") if name == "jpeg2000"
                       else compress_with_dcmtk(plain, folder / f"{name}.dcm",
                                                cast(DcmtkSyntax, name)))
    ingest_files(InstanceIngestor(server.store, server.database.sessions), list(files.values()))
    urls = {}
    for name, path in files.items():
        ds = dcmread(path, stop_before_pixels=True)
        urls[name] = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                      f"/instances/{ds.SOPInstanceUID}")
    return urls


def _stored_dataset(server: Server, url: str) -> Dataset:
    return dcmread(server.stored(url.rsplit("/", 1)[1]))


@pytest.mark.parametrize("name", SYNTAXES)
def test_frames_of_each_syntax(server: Server, stored: dict[str, str], name: str) -> None:
    url = stored[name]
    ds = _stored_dataset(server, url)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    [(native_type, native)] = multipart_parts(server.get(f"{url}/frames/1"))
    assert native_type == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert native == np.ascontiguousarray(ds.pixel_array).astype(
        ds.pixel_array.dtype.newbyteorder("<")).tobytes()
    [(ohif_type, ohif)] = multipart_parts(server.get(f"{url}/frames/1",
                                                     headers={"Accept": OHIF_ACCEPT}))
    if syntax.is_encapsulated:
        assert ohif_type == f"{PIXEL_MEDIA_TYPES[syntax]}; transfer-syntax={syntax}"
        assert ohif == get_frame(ds.PixelData, 0, number_of_frames=1)
    else:
        assert (ohif_type, ohif) == (native_type, native)


@pytest.mark.parametrize("name", SYNTAXES)
def test_metadata_rendered_and_explicit_of_each_syntax(server: Server, stored: dict[str, str],
                                                       name: str) -> None:
    url = stored[name]
    ds = _stored_dataset(server, url)
    [metadata] = server.get(f"{url}/metadata").json()
    assert "BulkDataURI" in metadata["7FE00010"]
    assert metadata["00280010"]["Value"] == [64]
    png = server.get(f"{url}/rendered", headers={"Accept": "image/png"})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))),
                                  load_display_image(ds).pixels)
    explicit = server.get(url, headers={
        "Accept": f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"})
    received = dataset_of(explicit.content)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(received.pixel_array, ds.pixel_array)
