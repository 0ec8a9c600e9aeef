"""What the viewer is told about an image: orientation markers, measurement spacing,
window presets (node/web/pixel_data.py), and the draft's source image
(node/web/draft_source.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.db.models import Instance, Report
from node.states import ReportState
from node.storage import InstanceStore
from node.web.draft_source import draft_source_uid
from node.web.pixel_data import (
    measurement_spacing,
    modality_frame,
    orientation_markers,
    voi_lut,
    window_presets,
)
from tests.dicom_factory import make_cxr_dataset


def _ds(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("attributes", "edges", "source"), [
    ({"PatientOrientation": ["L", "F"]}, ("R", "L", "H", "F"), "PatientOrientation"),
    ({"PatientOrientation": ["A", "FR"]}, ("P", "A", "HL", "FR"), "PatientOrientation"),
    # an axial-like plane: rows to the patient's left, columns posterior
    ({"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}, ("R", "L", "A", "P"),
     "ImageOrientationPatient"),
    # oblique: the major component first, a minor one below 0.25 left out
    ({"ImageOrientationPatient": [0.8, 0.6, 0.1, 0, 0, -1], "PatientOrientation": ["R", "F"]},
     ("RA", "LP", "H", "F"), "ImageOrientationPatient"),
    ({"PatientOrientation": ["X", "F"]}, ("", "", "", ""), "none"),
    ({}, ("", "", "", ""), "none"),
])
def test_orientation_markers(attributes: dict[str, object], edges: tuple[str, ...],
                             source: str) -> None:
    markers = orientation_markers(_ds(**attributes))
    assert (markers.left, markers.right, markers.top, markers.bottom) == edges
    assert markers.source == source


@pytest.mark.parametrize(("attributes", "expected"), [
    ({"PixelSpacing": [0.2, 0.1]}, (0.2, 0.1, "mm")),
    ({"PixelSpacing": [0.15, 0.15], "ImagerPixelSpacing": [0.15, 0.15]},
     (0.15, 0.15, "mm at detector")),
    ({"PixelSpacing": [0.14, 0.14], "ImagerPixelSpacing": [0.15, 0.15],
      "PixelSpacingCalibrationType": "GEOMETRY"}, (0.14, 0.14, "mm (calibrated: geometry)")),
    ({"ImagerPixelSpacing": [0.15, 0.15]}, (0.15, 0.15, "mm at detector")),
    ({"ImagerPixelSpacing": [0.15, 0.12], "EstimatedRadiographicMagnificationFactor": 1.2},
     (0.125, 0.1, "mm (magnification corrected, estimated)")),
    ({"PixelSpacing": [0, 0.1]}, (None, None, "px")),
    ({}, (None, None, "px")),
])
def test_measurement_spacing(attributes: dict[str, object],
                             expected: tuple[float | None, float | None, str]) -> None:
    spacing = measurement_spacing(_ds(**attributes))
    row, column, label = expected
    assert spacing.label == label
    assert spacing.row_mm == (None if row is None else pytest.approx(row))
    assert spacing.column_mm == (None if column is None else pytest.approx(column))


def test_presets_name_the_files_windows_and_add_auto_and_full_range() -> None:
    image = np.arange(100, dtype=np.uint16).reshape(10, 10) * 40
    ds = make_cxr_dataset(image=image, bits=12, windows=[(2000.0, 4000.0), (1000.0, 500.0)])
    ds.WindowCenterWidthExplanation = ["NORMAL", "HARD"]
    frame = modality_frame(ds)
    default, presets = window_presets(ds, frame)
    assert default.name == "NORMAL" and (default.center, default.width) == (2000.0, 4000.0)
    assert [p.name for p in presets] == ["NORMAL", "HARD", "Auto (0.5-99.5 %)", "Full range"]
    full = presets[-1]
    assert (full.center, full.width) == (3960 / 2, 3961)


def test_voi_lut_sequence_is_the_default_and_sent_as_a_table() -> None:
    """The LUT's own output range scales it (12 bits filled of 16 declared)."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=12, windows=[(2000.0, 4000.0)])
    item = Dataset()
    item.LUTDescriptor = [2048, 1000, 16]
    item.LUTData = [min(4095, 2 * i) for i in range(2048)]
    ds.VOILUTSequence = Sequence([item])
    default, presets = window_presets(ds, modality_frame(ds))
    assert (default.name, default.function) == ("DICOM VOI LUT", "VOI_LUT")
    assert (default.center, default.width) == (1000 + 1024, 2048)
    assert [p.name for p in presets][:2] == ["DICOM VOI LUT", "DICOM window 1"]
    table = voi_lut(ds)
    assert table is not None
    assert (table.first, len(table.data), table.low, table.high) == (1000, 2048, 0, 4094)
    assert table.data[:3] == [0, 2, 4]


def test_a_malformed_voi_lut_falls_back_to_the_window() -> None:
    ds = make_cxr_dataset(rows=16, cols=16, bits=12, windows=[(2000.0, 4000.0)])
    item = Dataset()
    item.LUTDescriptor = [16, 0, 16]
    item.LUTData = [7] * 16  # constant: no range to scale
    ds.VOILUTSequence = Sequence([item])
    default, _ = window_presets(ds, modality_frame(ds))
    assert voi_lut(ds) is None and default.name == "DICOM window 1"


def test_hounsfield_data_gets_lung_mediastinum_bone() -> None:
    ds = make_cxr_dataset(rows=8, cols=8, bits=12, rescale=(1.0, -1024.0))
    ds.RescaleType = "HU"
    _, presets = window_presets(ds, modality_frame(ds))
    assert [p.name for p in presets][-3:] == ["Lung", "Mediastinum", "Bone"]


def _instance(store: InstanceStore, number: int, ds: Dataset, *, purged: bool = False
              ) -> Instance:
    relative = f"study/{number}.dcm"
    path = store.absolute(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Instance(id=number, sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID), modality="DX", rows=int(ds.Rows),
                    view_position=ds.get("ViewPosition"), path=relative,
                    received_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                    purged_at=dt.datetime(2025, 2, 1, tzinfo=dt.UTC) if purged else None)


def test_draft_source_is_the_workers_frontal_choice(tmp_path: Path) -> None:
    """A lateral stored first, then an AP, then a PA: the PA; no draft, no source."""
    store = InstanceStore(tmp_path, min_free_mb=0, max_used_percent=100)
    lateral = _instance(store, 1, make_cxr_dataset(rows=8, cols=8, view_position="LL"))
    ap = _instance(store, 2, make_cxr_dataset(rows=8, cols=8, view_position="AP"))
    # the view is named only in the View Code Sequence, which the row does not keep
    pa_ds = make_cxr_dataset(rows=8, cols=8, view_position=None, view_code="PA")
    pa = _instance(store, 3, pa_ds)
    draft = Report(state=ReportState.DRAFT, created_at=dt.datetime(2025, 1, 2, tzinfo=dt.UTC))
    assert draft_source_uid(store, [pa, ap, lateral], draft) == pa.sop_instance_uid
    assert draft_source_uid(store, [pa, ap, lateral], None) is None
    # a purged file is judged by its row: the PA's view is then unknown, the AP wins
    pa.purged_at = dt.datetime(2025, 2, 1, tzinfo=dt.UTC)
    assert draft_source_uid(store, [pa, ap, lateral], draft) == ap.sop_instance_uid
    assert draft_source_uid(store, [lateral], draft) is None
