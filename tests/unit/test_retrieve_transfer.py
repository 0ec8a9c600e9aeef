"""Fitting a stored instance to the transfer syntaxes a retrieving peer accepted."""

from __future__ import annotations

import numpy as np
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from node.dicom.retrieve_transfer import fit_to_syntaxes
from tests.dicom_factory import make_cxr_dataset


def _stored(syntax: UID | None = None):  # type: ignore[no-untyped-def]
    ds = make_cxr_dataset(rows=32, cols=32, bits=16)
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    return ds


def test_an_accepted_stored_syntax_is_sent_unchanged() -> None:
    stored = _stored(JPEGLSLossless)
    data = bytes(stored.PixelData)
    fitted = fit_to_syntaxes(stored, [JPEGLSLossless])
    assert fitted is stored
    assert fitted.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert bytes(fitted.PixelData) == data


def test_uncompressed_instances_travel_as_they_are_to_an_uncompressed_peer() -> None:
    stored = _stored()
    assert fit_to_syntaxes(stored, [ImplicitVRLittleEndian]) is stored


def test_compressed_instances_are_decoded_for_an_uncompressed_peer() -> None:
    stored = _stored(JPEGLSLossless)
    pixels = stored.pixel_array.copy()
    fitted = fit_to_syntaxes(stored, [ExplicitVRLittleEndian])
    assert fitted is not None
    assert not UID(fitted.file_meta.TransferSyntaxUID).is_compressed
    np.testing.assert_array_equal(fitted.pixel_array, pixels)


def test_uncompressed_instances_are_encoded_losslessly_for_a_jpeg_ls_only_context() -> None:
    """A context accepted for JPEG-LS lossless alone still gets the uncompressed study."""
    stored = _stored()
    pixels = stored.pixel_array.copy()
    fitted = fit_to_syntaxes(stored, [JPEGLSLossless])
    assert fitted is not None
    assert fitted.file_meta.TransferSyntaxUID == JPEGLSLossless
    np.testing.assert_array_equal(fitted.pixel_array, pixels)


def test_a_compressed_instance_is_reencoded_losslessly() -> None:
    stored = _stored(JPEGLSLossless)
    pixels = stored.pixel_array.copy()
    fitted = fit_to_syntaxes(stored, [RLELossless])
    assert fitted is not None
    assert fitted.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(fitted.pixel_array, pixels)


def test_the_node_never_encodes_lossy() -> None:
    """Only a lossy syntax accepted: the instance cannot be sent (a failed sub-operation)."""
    assert fit_to_syntaxes(_stored(), [JPEGBaseline8Bit]) is None


def test_an_instance_without_pixel_data_travels_in_an_encapsulated_context() -> None:
    """An SR in a context accepted for JPEG-LS only is sent with its bytes unchanged."""
    stored = _stored()
    del stored.PixelData
    fitted = fit_to_syntaxes(stored, [JPEGLSLossless])
    assert fitted is not None
    assert fitted.file_meta.TransferSyntaxUID == JPEGLSLossless
