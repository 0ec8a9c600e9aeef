"""DICOM decoding, grey-level rendering and model-input preparation on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence as DicomSequence

from tests.dicom_factory import (
    DCMTK_SYNTAX_UIDS,
    compress_jpeg2000,
    compress_with_dcmtk,
    corrupt_pixel_stream,
    make_cxr_dataset,
    synthetic_chest,
    write_dataset,
)
from workers.inference.manifest import CLIP_MEAN, CLIP_STD, PreprocessSpec
from workers.inference.preprocess import (
    ImageDecodeError,
    decode_first_frame,
    load_display_image,
    percentile_window,
    to_model_input,
    window_to_unit,
)

needs_dcmtk = pytest.mark.usefixtures("dcmtk_installed")

WINDOW = (2100.0, 3000.0)


@pytest.fixture(scope="module")
def source_16bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-bit MONOCHROME2 radiograph with a rescale and two windows."""
    folder = tmp_path_factory.mktemp("src16")
    ds = make_cxr_dataset(bits=16, rescale=(1.0, 0.0), windows=[WINDOW, (30000.0, 60000.0)])
    return write_dataset(ds, folder / "mono2_16.dcm")


@pytest.fixture(scope="module")
def source_12bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("src12")
    return write_dataset(make_cxr_dataset(bits=12, windows=[WINDOW]), folder / "mono2_12.dcm")


@pytest.fixture(scope="module")
def source_8bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("src8")
    return write_dataset(make_cxr_dataset(bits=8), folder / "mono2_8.dcm")


def _stored(path: Path) -> np.ndarray:
    return np.asarray(decode_first_frame(pydicom.dcmread(path)))


# ------------------------------------------------------------------------------------------
# Transfer syntaxes
# ------------------------------------------------------------------------------------------

LOSSLESS_DCMTK = [
    "explicit_little",
    "implicit_little",
    "explicit_big",
    "deflate",
    "jpeg_lossless",
    "jpeg_lossless_sv1",
    "jpegls_lossless",
    "rle",
]


@pytest.mark.dcmtk
@needs_dcmtk
@pytest.mark.parametrize("syntax", LOSSLESS_DCMTK)
def test_lossless_syntaxes_decode_to_the_original(
    syntax: str, source_16bit: Path, tmp_path: Path
) -> None:
    encoded = compress_with_dcmtk(source_16bit, tmp_path / f"{syntax}.dcm", syntax)  # type: ignore[arg-type]
    assert pydicom.dcmread(encoded).file_meta.TransferSyntaxUID == DCMTK_SYNTAX_UIDS[syntax]
    np.testing.assert_array_equal(_stored(encoded), _stored(source_16bit))
    original = load_display_image(source_16bit)
    decoded = load_display_image(encoded)
    np.testing.assert_array_equal(decoded.pixels, original.pixels)
    assert decoded.transfer_syntax_uid == str(DCMTK_SYNTAX_UIDS[syntax])
    assert decoded.voi_source == "window"
    assert (decoded.window_center, decoded.window_width) == WINDOW


@pytest.mark.parametrize("lossless", [True, False])
def test_jpeg2000_decodes(lossless: bool, source_16bit: Path, tmp_path: Path) -> None:
    encoded = compress_jpeg2000(source_16bit, tmp_path / "j2k.dcm", lossless=lossless)
    stored, reference = _stored(encoded), _stored(source_16bit)
    if lossless:
        np.testing.assert_array_equal(stored, reference)
    else:
        # Lossy: close to the original relative to the 16-bit range.
        assert np.abs(stored.astype(np.int64) - reference).mean() < 0.01 * 65535
    image = load_display_image(encoded)
    assert "JPEG 2000" in image.transfer_syntax_name
    assert image.pixels.shape == (256, 256)


@pytest.mark.dcmtk
@needs_dcmtk
def test_jpegls_near_lossless_within_tolerance(source_16bit: Path, tmp_path: Path) -> None:
    encoded = compress_with_dcmtk(source_16bit, tmp_path / "jls.dcm", "jpegls_near_lossless")
    difference = np.abs(_stored(encoded).astype(np.int64) - _stored(source_16bit))
    assert difference.max() <= 2  # NEAR = 2


@pytest.mark.dcmtk
@needs_dcmtk
@pytest.mark.parametrize(
    ("syntax", "fixture", "limit"),
    [("jpeg_baseline", "source_8bit", 6.0), ("jpeg_extended", "source_12bit", 6.0 * 16)],
)
def test_lossy_jpeg_decodes_close_to_original(
    syntax: str, fixture: str, limit: float, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source: Path = request.getfixturevalue(fixture)
    encoded = compress_with_dcmtk(source, tmp_path / "lossy.dcm", syntax)  # type: ignore[arg-type]
    difference = np.abs(_stored(encoded).astype(np.int64) - _stored(source))
    assert difference.mean() < limit
    display = load_display_image(encoded).pixels.astype(np.int64)
    assert np.abs(display - load_display_image(source).pixels).mean() < 6.0


@pytest.mark.dcmtk
@needs_dcmtk
def test_corrupt_stream_raises_image_decode_error(source_16bit: Path, tmp_path: Path) -> None:
    encoded = compress_with_dcmtk(source_16bit, tmp_path / "ok.dcm", "jpeg_lossless_sv1")
    broken = corrupt_pixel_stream(encoded, tmp_path / "broken.dcm")
    with pytest.raises(ImageDecodeError) as caught:
        load_display_image(broken)
    message = str(caught.value)
    assert message.startswith("pixel data could not be decoded: JPEG Lossless")
    assert isinstance(caught.value, ValueError)


def test_missing_pixel_data_and_non_dicom_raise(tmp_path: Path) -> None:
    ds = make_cxr_dataset()
    del ds.PixelData
    with pytest.raises(ImageDecodeError, match="no Pixel Data"):
        load_display_image(ds)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(ImageDecodeError, match="could not be parsed"):
        load_display_image(junk)


def test_truncated_native_pixel_data_raises(tmp_path: Path) -> None:
    ds = make_cxr_dataset(rows=64, cols=64)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(ImageDecodeError, match="Explicit VR Little Endian"):
        load_display_image(write_dataset(ds, tmp_path / "short.dcm"))


# ------------------------------------------------------------------------------------------
# Grey-level pipeline
# ------------------------------------------------------------------------------------------


def test_monochrome1_is_inverted_to_match_monochrome2(tmp_path: Path) -> None:
    mono2 = load_display_image(make_cxr_dataset(bits=12, photometric="MONOCHROME2"))
    mono1_ds = make_cxr_dataset(bits=12, photometric="MONOCHROME1")
    mono1 = load_display_image(mono1_ds)
    assert mono1.inverted and not mono2.inverted
    assert np.abs(mono1.pixels.astype(int) - mono2.pixels).max() <= 1
    # Lung (dark) stays dark and mediastinum bright after inversion.
    assert mono1.pixels[115, 75] < 100 < mono1.pixels[60, 128]


@pytest.mark.dcmtk
@needs_dcmtk
def test_monochrome1_survives_compression(tmp_path: Path) -> None:
    source = write_dataset(
        make_cxr_dataset(bits=12, photometric="MONOCHROME1"), tmp_path / "m1.dcm"
    )
    encoded = compress_with_dcmtk(source, tmp_path / "m1_jls.dcm", "jpegls_lossless")
    decoded = load_display_image(encoded)
    assert decoded.photometric_interpretation == "MONOCHROME1" and decoded.inverted
    np.testing.assert_array_equal(decoded.pixels, load_display_image(source).pixels)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_matches_pydicom_and_dicom_formula(function: str) -> None:
    ds = make_cxr_dataset(bits=12, windows=[(1500.0, 1001.0)], voi_lut_function=function)
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    stored = np.asarray(decode_first_frame(ds))
    ours = window_to_unit(stored, 1500.0, 1001.0, function)  # type: ignore[arg-type]
    theirs = apply_windowing(stored, ds) / 4095.0
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    display = load_display_image(ds)
    assert display.window_function == function
    np.testing.assert_array_equal(display.pixels, np.clip(np.rint(ours * 255), 0, 255))


def test_linear_window_formula_by_hand() -> None:
    values = np.array([999.0, 1000.0, 1499.5, 1500.0, 2000.0, 2001.0])
    out = window_to_unit(values, 1500.0, 1001.0, "LINEAR")
    # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> min; x > c - 0.5 + (w-1)/2 -> max.
    expected = np.clip((values - 1499.5) / 1000.0 + 0.5, 0, 1)
    expected[values <= 999.5] = 0.0
    expected[values > 1999.5] = 1.0
    np.testing.assert_allclose(out, expected)
    with pytest.raises(ValueError):
        window_to_unit(values, 1500.0, 0.5, "LINEAR")


def test_first_of_several_windows_and_rescale_are_used() -> None:
    slope, intercept = 2.0, -1024.0
    ds = make_cxr_dataset(
        bits=12, rescale=(slope, intercept), windows=[(2000.0, 4000.0), (0.0, 10.0)]
    )
    stored = np.asarray(decode_first_frame(ds)).astype(np.float64)
    expected = window_to_unit(stored * slope + intercept, 2000.0, 4000.0, "LINEAR")
    display = load_display_image(ds)
    assert display.modality_lut == "rescale" and display.rescale_slope == slope
    assert (display.window_center, display.window_width) == (2000.0, 4000.0)
    np.testing.assert_array_equal(display.pixels, np.clip(np.rint(expected * 255), 0, 255))


def test_percentile_window_without_voi() -> None:
    ds = make_cxr_dataset(bits=16)
    display = load_display_image(ds)
    assert display.voi_source == "percentile"
    stored = np.asarray(decode_first_frame(ds)).astype(np.float64)
    low, high = np.percentile(stored, [0.5, 99.5])
    assert display.window_center == pytest.approx((low + high) / 2)
    assert display.window_width == pytest.approx(high - low)
    # About 0.5 % of the pixels end up at each end.
    assert 0.001 < np.mean(display.pixels == 255) < 0.02
    expected = np.clip(np.rint(np.clip((stored - low) / (high - low), 0, 1) * 255), 0, 255)
    np.testing.assert_array_equal(display.pixels, expected)


def test_percentile_window_ignores_padding() -> None:
    image = np.full((64, 64), 0, dtype=np.uint16)
    image[8:56, 8:56] = np.linspace(1000, 3000, 48 * 48).reshape(48, 48).astype(np.uint16)
    ds = make_cxr_dataset(image=image, bits=12)
    ds.PixelPaddingValue = 0
    display = load_display_image(ds)
    assert display.window_center is not None and display.window_center > 1500
    low, high = percentile_window(image.astype(float), mask=image != 0)
    assert low > 1000 - 1 and high < 3000 + 1


def test_voi_lut_sequence_applied_and_scaled() -> None:
    ds = make_cxr_dataset(bits=12)
    item = Dataset()
    entries = 4096
    lut = (np.sqrt(np.arange(entries) / (entries - 1)) * 1023).astype(np.uint16)  # 10-bit data
    item.LUTDescriptor = [entries, 0, 16]
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = DicomSequence([item])
    ds.WindowCenter, ds.WindowWidth = "10", "20"
    display = load_display_image(ds)
    assert display.voi_source == "voi_lut_sequence"
    stored = np.asarray(decode_first_frame(ds))
    expected = np.clip(np.rint(lut[stored] / 1023.0 * 255), 0, 255)
    np.testing.assert_array_equal(display.pixels, expected)
    windowed = load_display_image(ds, prefer_voi_lut_sequence=False)
    assert windowed.voi_source == "window"


def test_multiframe_uses_first_frame() -> None:
    ds = make_cxr_dataset(bits=12, frames=3, windows=[(2048.0, 4096.0)])
    display = load_display_image(ds)
    single = load_display_image(make_cxr_dataset(bits=12, windows=[(2048.0, 4096.0)]))
    assert display.number_of_frames == 3
    np.testing.assert_array_equal(display.pixels, single.pixels)


def test_rgb_becomes_luma_grey() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    ds = make_cxr_dataset(image=rgb, photometric="RGB")
    display = load_display_image(ds)
    expected = np.rint(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    assert display.colour_converted and display.pixels.shape == (32, 48)
    assert np.abs(display.pixels.astype(int) - expected).max() <= 1


@pytest.mark.dcmtk
@needs_dcmtk
def test_ybr_jpeg_baseline_becomes_grey(tmp_path: Path) -> None:
    grey = np.rint(synthetic_chest(128, 128) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    source = write_dataset(make_cxr_dataset(image=rgb, photometric="RGB"), tmp_path / "rgb.dcm")
    encoded = compress_with_dcmtk(source, tmp_path / "ybr.dcm", "jpeg_baseline")
    assert pydicom.dcmread(encoded).PhotometricInterpretation.startswith("YBR")
    display = load_display_image(encoded)
    assert display.colour_converted
    assert np.abs(display.pixels.astype(int) - grey).mean() < 3.0


def test_describe_is_json_friendly() -> None:
    import json

    display = load_display_image(make_cxr_dataset(bits=12, windows=[WINDOW]))
    text = json.dumps(display.describe())
    assert "window" in text and "PatientName" not in text
    assert display.sop_instance_uid is not None


# ------------------------------------------------------------------------------------------
# Model input
# ------------------------------------------------------------------------------------------

LLAVA_RAD_LIKE = PreprocessSpec(
    channels=3, size=96, resample="bicubic", mean=list(CLIP_MEAN), std=list(CLIP_STD)
)
CXR_LLAVA_LIKE = PreprocessSpec(
    channels=1,
    size=80,
    resample="lanczos",
    mean=[0.5518136078431373],
    std=[0.3821719215686275],
)


def _reference(image8: np.ndarray, size: int, resample: Image.Resampling, rgb: bool) -> np.ndarray:
    picture = Image.fromarray(image8, mode="L")
    if rgb:
        picture = picture.convert("RGB")
    width, height = picture.size
    scale = size / min(width, height)
    new = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    picture = picture.resize(new, resample=resample)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    array = np.asarray(picture.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return array.transpose(2, 0, 1) if rgb else array[None]


@pytest.mark.parametrize("shape", [(200, 300), (300, 200), (256, 256)])
def test_llava_rad_style_input(shape: tuple[int, int]) -> None:
    image8 = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    out = to_model_input(image8, LLAVA_RAD_LIKE)
    assert out.shape == (3, 96, 96) and out.dtype == np.float32
    reference = _reference(image8, 96, Image.Resampling.BICUBIC, rgb=True)
    mean = np.array(CLIP_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(CLIP_STD, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(out, (reference - mean) / std, rtol=0, atol=1e-5)


def test_cxr_llava_style_input() -> None:
    image8 = np.rint(synthetic_chest(240, 200) * 255).astype(np.uint8)
    out = to_model_input(image8, CXR_LLAVA_LIKE)
    assert out.shape == (1, 80, 80)
    reference = _reference(image8, 80, Image.Resampling.LANCZOS, rgb=False)
    np.testing.assert_allclose(
        out, (reference - 0.5518136078431373) / 0.3821719215686275, atol=1e-5
    )


def test_model_input_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError):
        to_model_input(np.zeros((10, 10), dtype=np.uint16), CXR_LLAVA_LIKE)  # type: ignore[arg-type]
