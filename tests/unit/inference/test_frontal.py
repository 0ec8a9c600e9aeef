"""Choice of the frontal image of a chest study."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.dicom_factory import make_cxr_dataset
from workers.inference.frontal import View, classify_view, select_frontal


def _header(**attributes: Any) -> Dataset:
    """A header-only dataset (no pixel data) from the factory, with attributes overridden."""
    view = attributes.pop("view_position", None)
    ds = make_cxr_dataset(view_position=view, rows=8, cols=8, **attributes)
    del ds.PixelData
    return ds


def test_pa_preferred_over_ap_regardless_of_order() -> None:
    headers = [
        _header(view_position="AP"),
        _header(view_position="LL"),
        _header(view_position="PA"),
    ]
    choice = select_frontal(headers)
    assert choice.index == 2 and choice.view == "PA" and choice.source == "ViewPosition"
    assert "ViewPosition 'PA'" in choice.reason and "1 lateral" in choice.reason


def test_ap_used_when_no_pa() -> None:
    choice = select_frontal([_header(view_position="LATERAL"), _header(view_position="AP")])
    assert (choice.index, choice.view) == (1, "AP")


def test_view_code_sequence_fallback() -> None:
    lateral = _header(view_code="LL")
    pa = _header(view_code="PA")
    assert classify_view(lateral).view is View.LATERAL
    choice = select_frontal([lateral, pa])
    assert (choice.index, choice.view, choice.source) == (1, "PA", "ViewCodeSequence")
    assert "272479007" in choice.reason


@pytest.mark.parametrize(
    ("attribute", "text", "expected"),
    [
        ("series_description", "CHEST PA", View.PA),
        ("series_description", "Thorax p.a.", View.PA),
        ("series_description", "THORAX A.P. LIEGEND", View.AP),
        ("series_description", "CAPACITY", View.UNKNOWN),
        ("protocol_name", "CHEST_AP_PORTABLE", View.AP),
        ("image_comments", "frontal view", View.FRONTAL),
        ("series_description", "CHEST LAT", View.LATERAL),
        ("protocol_name", "Thorax lateral", View.LATERAL),
        ("series_description", "Chest left decubitus", View.OTHER),
    ],
)
def test_text_fallbacks(attribute: str, text: str, expected: View) -> None:
    evidence = classify_view(_header(**{attribute: text}))
    assert evidence.view is expected


def test_laterality_is_not_frontal_evidence() -> None:
    header = _header(laterality="L")
    assert classify_view(header).view is View.UNKNOWN
    choice = select_frontal([header])
    assert choice.index == 0 and choice.view == "UNKNOWN"
    assert "no view information" in choice.reason


def test_view_position_wins_over_text() -> None:
    header = _header(view_position="LL", series_description="CHEST PA")
    assert classify_view(header).view is View.LATERAL


def test_only_laterals_or_no_images() -> None:
    choice = select_frontal([_header(view_position="LL"), _header(view_position="RL")])
    assert choice.index is None and "lateral" in choice.reason
    sr = Dataset()
    sr.Modality = "SR"
    empty = select_frontal([sr])
    assert empty.index is None and "no image" in empty.reason


def test_original_preferred_over_derived_and_mappings_accepted() -> None:
    derived = _header(view_position="PA")
    derived.ImageType = ["DERIVED", "SECONDARY"]
    original = _header(view_position="PA")
    assert select_frontal([derived, original]).index == 1
    mapping_choice = select_frontal([{"ViewPosition": "LL"}, {"ViewPosition": "AP", "Rows": 10}])
    assert (mapping_choice.index, mapping_choice.view) == (1, "AP")


def test_oblique_ranked_below_unknown() -> None:
    oblique = _header(view_position="RAO")
    unknown = _header()
    assert select_frontal([oblique, unknown]).index == 1
