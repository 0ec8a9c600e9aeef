"""Size limits hold in every path that parses or decodes an instance, before it does.

The bombs of :mod:`tests.reliability.bombs` reach the drafting preprocess and the web
image renderer as stored files; each answers a defined error naming the limit, and the
process never holds the inflated or decoded size (checked with ``ru_maxrss``).
"""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from node.storage import InstanceStore
from node.web.imaging import ImageRenderer
from tests.dicom_factory import make_cxr_dataset
from tests.reliability.bombs import write_deflate_bomb, write_rle_bomb
from workers.inference.dicom_limits import (
    DatasetLimits,
    LimitExceeded,
    check_encoded,
    check_pixels,
)
from workers.inference.preprocess import ImageDecodeError, load_display_image

GROWTH_LIMIT_KIB = 300 * 1024
"""Far below the 1.5 GB inflated and 256 MiB decoded sizes of the bombs."""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    write_deflate_bomb(folder / "deflate.dcm")
    write_rle_bomb(folder / "rle.dcm")
    return {"deflate": folder / "deflate.dcm", "rle": folder / "rle.dcm"}


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_limits_name_what_was_exceeded(bombs: dict[str, Path]) -> None:
    with pytest.raises(LimitExceeded) as deflated:
        check_encoded(bombs["deflate"])
    assert deflated.value.limit == "max_inflated_bytes"
    with pytest.raises(LimitExceeded) as rle:
        check_encoded(bombs["rle"].read_bytes())
    assert rle.value.limit == "max_pixels"
    wide = make_cxr_dataset(rows=64, cols=64, bits=16)
    check_pixels(wide)
    with pytest.raises(LimitExceeded) as decoded:
        check_pixels(wide, DatasetLimits(max_pixels=10**6, max_pixel_bytes=4096))
    assert decoded.value.limit == "max_pixel_bytes"


def test_drafting_preprocess_refuses_bombs(bombs: dict[str, Path]) -> None:
    before = _peak_kib()
    for path in bombs.values():
        with pytest.raises(ImageDecodeError) as refused:
            load_display_image(path)
        assert "over" in str(refused.value)
    assert _peak_kib() - before < GROWTH_LIMIT_KIB


def test_web_image_renderer_refuses_bombs(bombs: dict[str, Path], tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_mb=0, max_used_percent=100)
    renderer = ImageRenderer(store)
    before = _peak_kib()
    for name, path in bombs.items():
        (tmp_path / f"{name}.dcm").write_bytes(path.read_bytes())
        with pytest.raises(ImageDecodeError):
            renderer.window(f"{name}.dcm")
        with pytest.raises(ImageDecodeError):
            renderer.png(f"{name}.dcm")
    assert _peak_kib() - before < GROWTH_LIMIT_KIB
