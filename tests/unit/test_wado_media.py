"""Accept headers of DICOMweb retrieve requests: which form of pixels or instances is
served, for well-formed, unusual and hostile headers."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st

from node.web.wado_media import read_accept
from node.web.wado_pixels import NATIVE, PixelForm, choose_pixel_form, parse_frame_list
from node.web.wado_transcode import DicomForm, choose_syntax

EXPLICIT = "1.2.840.10008.1.2.1"
JLS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize(("accept", "stored", "expected"), [
    (None, JLS, NATIVE),
    ("*/*", JLS, NATIVE),
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", JLS,
     PixelForm("image/jls", JLS)),
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', EXPLICIT, NATIVE),
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", RLE,
     PixelForm("image/dicom-rle", RLE)),
    ('multipart/related; type="image/x-jls"', JLS, PixelForm("image/jls", JLS)),
    ('multipart/related; type="image/*"', JLS, PixelForm("image/jls", JLS)),
    ('multipart/related; type="*/*"', JLS, NATIVE),
    ('multipart/related; type="image/jpeg"', BASELINE, PixelForm("image/jpeg", BASELINE)),
    # preferred range not servable: the next one is used
    ('multipart/related; type="image/jp2", multipart/related; type=application/octet-stream',
     JLS, NATIVE),
    # q weights order the ranges
    ('multipart/related; type=application/octet-stream; q=0.2, '
     'multipart/related; type="image/jls"; q=0.9', JLS, PixelForm("image/jls", JLS)),
])
def test_pixel_forms(accept: str | None, stored: str, expected: PixelForm) -> None:
    assert choose_pixel_form(read_accept(accept), stored) == expected


@pytest.mark.parametrize(("accept", "stored"), [
    ('multipart/related; type="image/jls"', EXPLICIT),
    ('multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81', JLS),
    ("multipart/related; type=application/octet-stream; transfer-syntax=1.2.3", JLS),
    ("multipart/related; type=application/octet-stream; q=0", JLS),
    ("application/dicom", JLS),
    ("text/html", EXPLICIT),
])
def test_pixel_forms_refused(accept: str, stored: str) -> None:
    with pytest.raises(HTTPException) as refused:
        choose_pixel_form(read_accept(accept), stored)
    assert refused.value.status_code == 406


@pytest.mark.parametrize(("accept", "single", "expected"), [
    (None, False, DicomForm(JLS, True)),
    ('multipart/related; type="application/dicom"', False, DicomForm(JLS, True)),
    (f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}', False,
     DicomForm(EXPLICIT, False)),
    (f'multipart/related; type="application/dicom"; transfer-syntax={RLE}', False,
     DicomForm(RLE, False)),
    ("application/dicom", True, DicomForm(JLS, True, True)),
    (f"application/dicom; transfer-syntax={EXPLICIT}", True, DicomForm(EXPLICIT, False, True)),
    (f'application/dicom, multipart/related; type="application/dicom"; '
     f'transfer-syntax={EXPLICIT}', False, DicomForm(EXPLICIT, False)),
    (f'multipart/related; type="application/dicom"; transfer-syntax={BASELINE}', False, None),
    ('multipart/related; type="application/octet-stream"', False, None),
    ("application/dicom", False, None),
])
def test_instance_forms(accept: str | None, single: bool,
                        expected: DicomForm | None) -> None:
    assert choose_syntax(read_accept(accept), JLS, single_allowed=single) == expected


@pytest.mark.parametrize("text", ["0", "", "1,", ",1", "1;2", "+1", "1e3", "٣", "1" * 10])
def test_malformed_frame_lists(text: str) -> None:
    with pytest.raises(HTTPException) as refused:
        parse_frame_list(text)
    assert refused.value.status_code == 400


def test_frame_lists_keep_their_order_and_repeats() -> None:
    assert parse_frame_list("3, 1,3") == [3, 1, 3]


@given(st.text(max_size=300))
def test_any_accept_header_is_read_without_error(header: str) -> None:
    """Whatever a client sends, the header reads into ranges (or none) and each choice
    is a form or a 406, never another error."""
    ranges = read_accept(header)
    try:
        choose_pixel_form(ranges, JLS)
    except HTTPException as refused:
        assert refused.status_code == 406
    choose_syntax(ranges, JLS, single_allowed=True)
