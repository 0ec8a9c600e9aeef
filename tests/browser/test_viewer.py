"""The study page's image area in Chromium: window/level in the browser (read back from the
canvas and compared with the phantom's known values), orientation markers, measurement,
the draft's source image and the patient's prior studies."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray
from playwright.sync_api import Page, expect
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import select

from node.db.models import AuditEvent
from node.db.types import utcnow
from node.runtime import Database
from node.states import ReportState, Role, StudyState
from node.storage import InstanceStore
from node.users import use_password_hasher
from node.web import create_app
from node.web.server import WebServer
from tests.browser.conftest import LiveNode, log_in, screenshot
from tests.conftest import free_port, make_settings
from tests.integration.web_seed import (
    FAST_HASHER,
    RecordingExporter,
    RecordingQueue,
    seed_user,
    write_bundle_manifest,
)
from tests.viewer_seed import (
    add_report,
    add_study,
    expected_grey,
    gradient_phantom,
    phantom_dataset,
    store_dataset,
)

ROWS, COLUMNS = 60, 100
INTERCEPT = -1024.0
#: Row and column spacing of the frontal phantom (mm): different, so axes cannot be swapped.
PIXEL_SPACING = (0.2, 0.1)
LATERAL_SPACING = (0.15, 0.15)
FRONTAL_WINDOW = (20000.0, 30000.0)
LUT_ENTRIES = 16384
SQUARE_ROOT_LUT = np.rint(65535 * np.sqrt(np.arange(LUT_ENTRIES) / (LUT_ENTRIES - 1)))
LATERAL_WINDOW = (30000.0, 40000.0)
DISABLE_WEBGL2 = """
const original = HTMLCanvasElement.prototype.getContext;
HTMLCanvasElement.prototype.getContext = function (type, ...rest) {
  return type === "webgl2" ? null : original.call(this, type, ...rest);
};"""
READ_BACK = """() => {
  const source = document.getElementById("image");
  const copy = document.createElement("canvas");
  copy.width = source.width; copy.height = source.height;
  const context = copy.getContext("2d");
  context.drawImage(source, 0, 0);
  const rgba = context.getImageData(0, 0, copy.width, copy.height).data;
  const grey = [];
  for (let i = 0; i < rgba.length; i += 4) grey.push(rgba[i]);
  return grey;
}"""


@dataclass
class ViewerNode:
    """The served app with the phantom studies."""

    node: LiveNode
    database: Database
    study_id: int
    frontal_id: int
    lateral_id: int
    signed_prior_id: int
    draft_prior_id: int
    other_issuer_id: int
    lut_id: int
    modality: NDArray[np.float64]


@pytest.fixture(scope="module")
def viewer_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerNode]:
    root = tmp_path_factory.mktemp("viewer-node")
    previous = use_password_hasher(FAST_HASHER)
    settings = make_settings(root, f"sqlite:///{root / 'radnode.db'}",
                             web={"secret_key_file": str(root / "web-secret.key")},
                             model={"bundle": str(write_bundle_manifest(root / "bundle"))})
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    seed_user(database, "hgreg", display_name="House^Gregory")
    seed_user(database, "lcuddy", Role.ADMIN, display_name="Cuddy^Lisa")
    stored = gradient_phantom(ROWS, COLUMNS)
    study = add_study(database, patient_id="PID-7001", study_date="20250301")
    # The lateral is stored first: the draft is made from the PA all the same.
    lateral = phantom_dataset(
        study, 65535 - stored, view_position="LL", instance_number=1,
        photometric="MONOCHROME1", windows=[LATERAL_WINDOW],
        ImagerPixelSpacing=[f"{v:g}" for v in LATERAL_SPACING], PatientOrientation=None,
        ImageOrientationPatient=["0", "-1", "0", "0", "0", "-1"])
    lateral_id = store_dataset(database, store, study, lateral)
    frontal = phantom_dataset(
        study, stored, view_position="PA", instance_number=2, windows=[FRONTAL_WINDOW],
        PixelSpacing=[f"{v:g}" for v in PIXEL_SPACING], PatientOrientation=["L", "F"])
    frontal_id = store_dataset(database, store, study, frontal)
    # a third image, without a view, displayed through a square-root VOI LUT
    lut_image = phantom_dataset(study, gradient_phantom(ROWS, COLUMNS, step_x=150, step_y=20),
                                view_position=None, instance_number=3, rescale=(1.0, 0.0),
                                PatientOrientation=None)
    item = Dataset()
    item.add_new(0x00283002, "US", [LUT_ENTRIES, 0, 16])
    item.add_new(0x00283006, "US", [int(v) for v in SQUARE_ROOT_LUT])
    lut_image.VOILUTSequence = DicomSequence([item])
    lut_id = store_dataset(database, store, study, lut_image)
    add_report(database, study, ReportState.DRAFT, findings="Current draft findings.",
               impression="Current draft impression.")
    signed = add_study(database, patient_id="PID-7001", study_date="20240110",
                       description="XR CHEST PA 2024", state=StudyState.SIGNED)
    draft_id = add_report(database, signed, ReportState.DRAFT, findings="Old draft text.",
                          impression="Old draft impression.")
    add_report(database, signed, ReportState.FINAL, findings="Stable small nodule, right base.",
               impression="No acute disease.", signed_at=utcnow() - dt.timedelta(days=400),
               predecessor_id=draft_id)
    unsigned = add_study(database, patient_id="PID-7001", study_date="20241201",
                         description="XR CHEST AP 2024")
    add_report(database, unsigned, ReportState.DRAFT, findings="Unsigned machine text.",
               impression="Unsigned machine impression.")
    other_issuer = add_study(database, patient_id="PID-7001", issuer="OTHER-HOSPITAL",
                             study_date="20241215", description="XR OTHER ISSUER")
    add_study(database, patient_id="PID-9999", study_date="20241220",
              description="XR OTHER PATIENT")
    app = create_app(settings, database, store, RecordingExporter(),  # type: ignore[arg-type]
                     RecordingQueue())
    server = WebServer(app, "127.0.0.1", free_port())
    server.start()
    try:
        node = LiveNode(server.url, database, store, RecordingQueue(), RecordingExporter(),
                        {}, 0)
        yield ViewerNode(node, database, study.id, frontal_id, lateral_id, signed.id,
                         unsigned.id, other_issuer.id, lut_id,
                         stored.astype(np.float64) + INTERCEPT)
    finally:
        server.stop()
        database.engine.dispose()
        use_password_hasher(previous)


def _open(page: Page, viewer: ViewerNode, renderer: str = "") -> None:
    log_in(page, viewer.node, "hgreg")
    query = f"?renderer={renderer}" if renderer else ""
    page.goto(f"{viewer.node.url}/studies/{viewer.study_id}{query}")
    expect(page.locator("#viewport")).to_have_attribute("data-loaded", "1")


def _grey(page: Page, shape: tuple[int, int] = (ROWS, COLUMNS)) -> NDArray[np.int16]:
    values = page.evaluate(READ_BACK)
    return np.asarray(values, dtype=np.int16).reshape(shape)


def _set_window(page: Page, center: float, width: float, invert: int = 0) -> None:
    page.fill("#wc", f"{center:g}")
    page.fill("#ww", f"{width:g}")
    page.locator("#ww").dispatch_event("change")
    expect(page.locator("#viewport")).to_have_attribute(
        "data-window", f"{center:g}/{width:g}/{invert}")


def _show_frontal(page: Page, viewer: ViewerNode) -> None:
    page.locator(".thumb").nth(1).click()
    expect(page.locator("#viewport")).to_have_attribute("data-loaded", "1")
    expect(page.locator("#view-label")).to_have_text("PA")


def _check_two_windows(page: Page, viewer: ViewerNode) -> None:
    """Two windows read back as the phantom's values predict, pixel for pixel."""
    _set_window(page, 10000, 8000)
    narrow = _grey(page)
    _set_window(page, 40000, 60000)
    wide = _grey(page)
    expected_narrow = expected_grey(viewer.modality, 10000, 8000)
    expected_wide = expected_grey(viewer.modality, 40000, 60000)
    assert np.abs(narrow - expected_narrow).max() <= 1
    assert np.abs(wide - expected_wide).max() <= 1
    # the difference between the two renderings is the one the values predict
    assert np.abs((wide - narrow) - (expected_wide - expected_narrow)).max() <= 2
    assert np.count_nonzero(expected_wide != expected_narrow) > ROWS * COLUMNS // 2


def test_window_level_runs_on_full_depth_values_in_webgl(page: Page,
                                                         viewer_node: ViewerNode) -> None:
    """WebGL2 (asked for: here it runs in software) renders the 16-bit values; two windows
    give the predicted pixels; the samples are fetched once and windowing asks the node
    nothing more."""
    _open(page, viewer_node, "webgl2")
    expect(page.locator("#viewport")).to_have_attribute("data-renderer", "webgl2")
    _show_frontal(page, viewer_node)
    expect(page.locator("#viewport")).to_have_attribute(
        "data-window", f"{FRONTAL_WINDOW[0]:g}/{FRONTAL_WINDOW[1]:g}/0")
    default = _grey(page)
    assert np.abs(default - expected_grey(viewer_node.modality, *FRONTAL_WINDOW)).max() <= 1
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    _check_two_windows(page, viewer_node)

    # a right-drag changes the window continuously, with no request to the node
    viewport = page.locator("#viewport").bounding_box()
    assert viewport is not None
    drawn_before = int(page.locator("#viewport").get_attribute("data-drawn") or 0)
    x, y = viewport["x"] + 200, viewport["y"] + 200
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    for step in range(1, 41):
        page.mouse.move(x + 3 * step, y - 2 * step)
    page.mouse.up(button="right")
    state = page.evaluate("() => ({...window.radnodeViewer.state})")
    low, high = INTERCEPT, INTERCEPT + 99 * 650 + 59 * 10
    step = (high - low) / 600
    assert state["center"] == pytest.approx(40000 - 80 * step, abs=1e-6)
    assert state["width"] == pytest.approx(60000 + 120 * step, abs=1e-6)
    shown = (page.locator("#viewport").get_attribute("data-window") or "").split("/")
    assert [float(shown[0]), float(shown[1]), shown[2]] == [state["center"], state["width"], "0"]
    assert int(page.locator("#viewport").get_attribute("data-drawn") or 0) > drawn_before + 5
    dragged = _grey(page)
    assert np.abs(dragged - expected_grey(viewer_node.modality, state["center"],
                                          state["width"])).max() <= 1
    assert not [url for url in requests if "/pixels/" in url or "/image/" in url]
    screenshot(page, "viewer-window.png")


def test_canvas_fallback_gives_the_same_pixels(context, viewer_node: ViewerNode) -> None:
    """Without WebGL2 (even when asked for) the lookup-table path renders the same values."""
    context.add_init_script(DISABLE_WEBGL2)
    page = context.new_page()
    _open(page, viewer_node, "webgl2")
    expect(page.locator("#viewport")).to_have_attribute("data-renderer", "canvas2d")
    _show_frontal(page, viewer_node)
    _check_two_windows(page, viewer_node)


def test_a_lost_webgl_context_falls_back_to_the_canvas(page: Page,
                                                      viewer_node: ViewerNode) -> None:
    """When the GPU takes the WebGL context away, the image is drawn by the 2D path, with
    the window it had."""
    _open(page, viewer_node, "webgl2")
    _show_frontal(page, viewer_node)
    _set_window(page, 10000, 8000)
    drawn = int(page.locator("#viewport").get_attribute("data-drawn") or 0)
    page.evaluate("""() => document.getElementById("image").getContext("webgl2")
                       .getExtension("WEBGL_lose_context").loseContext()""")
    expect(page.locator("#viewport")).to_have_attribute("data-renderer", "canvas2d")
    page.wait_for_function(
        f"() => Number(document.getElementById('viewport').dataset.drawn) > {drawn}")
    assert np.abs(_grey(page) - expected_grey(viewer_node.modality, 10000, 8000)).max() <= 1
    _check_two_windows(page, viewer_node)


def test_zoomed_out_canvas_draws_block_means(page: Page, viewer_node: ViewerNode) -> None:
    """Below one image pixel per screen pixel the 2D path windows the mean of each k x k
    block; zooming back in restores every pixel."""
    _open(page, viewer_node, "canvas2d")
    _show_frontal(page, viewer_node)
    _set_window(page, 30000, 50000)
    page.locator("#viewport").focus()
    while page.evaluate("() => window.radnodeViewer.view.scale * devicePixelRatio") >= 1 / 3:
        page.keyboard.press("-")
    k = page.evaluate("() => Math.floor(1 / (window.radnodeViewer.view.scale"
                      " * devicePixelRatio))")
    assert k >= 3
    shape = (-(-ROWS // k), -(-COLUMNS // k))
    page.wait_for_function(f"() => document.getElementById('image').width === {shape[1]}")
    stored = viewer_node.modality - INTERCEPT
    means = np.zeros(shape)
    for r in range(shape[0]):
        for c in range(shape[1]):
            means[r, c] = np.rint(stored[r * k:(r + 1) * k, c * k:(c + 1) * k].mean())
    expected = expected_grey(means + INTERCEPT, 30000, 50000)
    assert np.abs(_grey(page, shape) - expected).max() <= 1
    page.keyboard.press("0")  # fit again: full resolution
    page.wait_for_function(f"() => document.getElementById('image').width === {COLUMNS}")
    assert np.abs(_grey(page) - expected_grey(viewer_node.modality, 30000, 50000)).max() <= 1


@pytest.mark.parametrize("renderer", ["webgl2", "canvas2d"])
def test_voi_lut_sequence_is_applied_until_a_window_is_chosen(context, viewer_node: ViewerNode,
                                                               renderer: str) -> None:
    """An image with a VOI LUT Sequence shows through it (a square-root curve here, its
    output range scaled to 8 bits); a typed window replaces it with a linear one."""
    page = context.new_page()
    _open(page, viewer_node, renderer)
    page.locator(".thumb").nth(2).click()
    viewport = page.locator("#viewport")
    expect(viewport).to_have_attribute("data-voi-function", "VOI_LUT")
    expect(viewport).to_have_attribute("data-window", f"{LUT_ENTRIES // 2}/{LUT_ENTRIES}/0")
    values = gradient_phantom(ROWS, COLUMNS, step_x=150, step_y=20).astype(np.int64)
    table = SQUARE_ROOT_LUT[np.clip(values, 0, LUT_ENTRIES - 1)]
    expected = np.rint(255 * (table - table.min()) / (SQUARE_ROOT_LUT.max()
                                                      - SQUARE_ROOT_LUT.min()))
    grey = _grey(page)
    assert np.abs(grey - expected).max() <= 1
    # the curve is not a straight line: a linear window over the same range differs
    linear = expected_grey(values, LUT_ENTRIES / 2, LUT_ENTRIES)
    assert np.abs(expected - linear).max() > 40
    _set_window(page, LUT_ENTRIES / 2, LUT_ENTRIES)
    expect(viewport).to_have_attribute("data-voi-function", "LINEAR")
    assert np.abs(_grey(page) - linear).max() <= 1
    page.locator("#viewport").focus()
    page.keyboard.press("r")
    expect(viewport).to_have_attribute("data-voi-function", "VOI_LUT")


@pytest.mark.parametrize("renderer", ["webgl2", "canvas2d"])
def test_monochrome1_is_inverted_and_presets_apply(context, viewer_node: ViewerNode,
                                                   renderer: str) -> None:
    """A MONOCHROME1 image shows inverted under its own window; presets and Invert work."""
    page = context.new_page()
    _open(page, viewer_node, renderer)
    expect(page.locator("#viewport")).to_have_attribute("data-renderer", renderer)
    # the lateral is shown first; its stored values are 65535 - the frontal's
    lateral_values = (65535 - (viewer_node.modality - INTERCEPT)) + INTERCEPT
    expect(page.locator("#viewport")).to_have_attribute(
        "data-window", f"{LATERAL_WINDOW[0]:g}/{LATERAL_WINDOW[1]:g}/1")
    grey = _grey(page)
    assert np.abs(grey - expected_grey(lateral_values, *LATERAL_WINDOW, invert=True)).max() <= 1
    page.locator("[data-action=invert]").click()
    expect(page.locator("#viewport")).to_have_attribute(
        "data-window", f"{LATERAL_WINDOW[0]:g}/{LATERAL_WINDOW[1]:g}/0")
    assert np.abs(_grey(page) - expected_grey(lateral_values, *LATERAL_WINDOW)).max() <= 1
    page.keyboard.press("r")
    expect(page.locator("#viewport")).to_have_attribute(
        "data-window", f"{LATERAL_WINDOW[0]:g}/{LATERAL_WINDOW[1]:g}/1")
    page.select_option("#preset", label="Full range")
    low, high = lateral_values.min(), lateral_values.max()
    center, width = (low + high) / 2, high - low + 1
    expect(page.locator("#viewport")).to_have_attribute(
        "data-window", f"{center:g}/{width:g}/1")
    assert np.abs(_grey(page) - expected_grey(lateral_values, center, width,
                                              invert=True)).max() <= 1


def test_software_webgl_is_not_chosen_by_itself(page: Page, viewer_node: ViewerNode) -> None:
    """Chromium without a GPU offers WebGL2 only in software (SwiftShader): the viewer
    takes the faster 2D lookup table (see docs/web.md, Viewer performance)."""
    _open(page, viewer_node)
    expect(page.locator("#viewport")).to_have_attribute("data-renderer", "canvas2d")
    assert page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
    # the probe's answer is kept for the tab: the next page takes the same path
    assert page.evaluate("() => sessionStorage.getItem('radnode:webgl2-software')") == "1"
    page.reload()
    expect(page.locator("#viewport")).to_have_attribute("data-loaded", "1")
    expect(page.locator("#viewport")).to_have_attribute("data-renderer", "canvas2d")


def test_the_first_image_needs_one_request(page: Page, viewer_node: ViewerNode) -> None:
    """The page carries the first image's description and preloads its samples from the
    head: the viewer draws it after a single request for the samples (the preload, reused by
    the viewer's fetch) and none for the description."""
    log_in(page, viewer_node.node, "hgreg")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{viewer_node.node.url}/studies/{viewer_node.study_id}")
    expect(page.locator("#viewport")).to_have_attribute("data-loaded", "1")
    samples = page.locator("#viewport").get_attribute("data-samples") or ""
    description = page.locator("#viewport").get_attribute("data-description") or ""
    assert samples.endswith(".u16") and description.endswith(".json")
    assert [url for url in requests if "/pixels/" in url] == [viewer_node.node.url + samples]
    assert page.evaluate("() => window.radnodeViewer.state.width") > 0


def test_orientation_markers_and_view_labels(page: Page, viewer_node: ViewerNode) -> None:
    """Markers at the edges come from Image Orientation (Patient) or Patient Orientation."""
    _open(page, viewer_node)
    # lateral: rows run anterior (-y), columns to the feet (-z)
    expect(page.locator("#view-label")).to_have_text("LATERAL (LL)")
    for edge, letter in {"left": "P", "right": "A", "top": "H", "bottom": "F"}.items():
        expect(page.locator(f"#orient-{edge}")).to_have_text(letter)
    expect(page.locator("#viewport")).to_have_attribute(
        "data-orientation-source", "ImageOrientationPatient")
    _show_frontal(page, viewer_node)
    for edge, letter in {"left": "R", "right": "L", "top": "H", "bottom": "F"}.items():
        expect(page.locator(f"#orient-{edge}")).to_have_text(letter)
    expect(page.locator("#viewport")).to_have_attribute(
        "data-orientation-source", "PatientOrientation")


def _drag_in_image(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag between two image coordinates (column, row)."""
    box = page.locator("#viewport").bounding_box()
    assert box is not None
    view = page.evaluate("() => ({...window.radnodeViewer.view})")

    def client(point: tuple[float, float]) -> tuple[float, float]:
        return (box["x"] + view["x"] + point[0] * view["scale"],
                box["y"] + view["y"] + point[1] * view["scale"])

    page.mouse.move(*client(start))
    page.mouse.down()
    for fraction in (0.25, 0.5, 0.75, 1.0):
        page.mouse.move(*client((start[0] + (end[0] - start[0]) * fraction,
                                 start[1] + (end[1] - start[1]) * fraction)))
    page.mouse.up()


def test_distance_measurement_uses_the_pixel_spacing(page: Page,
                                                     viewer_node: ViewerNode) -> None:
    """60 columns x 0.1 mm and 40 rows x 0.2 mm make 10 mm; the lateral's Imager Pixel
    Spacing gives mm at the detector."""
    _open(page, viewer_node)
    _show_frontal(page, viewer_node)
    page.keyboard.press("m")
    expect(page.locator("[data-tool=measure]")).to_have_attribute("aria-pressed", "true")
    _drag_in_image(page, (10, 10), (70, 50))
    readout = page.locator("#measure-readout")
    expect(readout).to_have_attribute("data-unit", "mm")
    assert float(readout.get_attribute("data-value") or 0) == pytest.approx(10.0, abs=0.05)
    expect(readout).to_have_text("Distance 10.0 mm")
    expect(page.locator("#annotations line")).to_have_count(1)
    screenshot(page, "viewer-measure.png")
    page.keyboard.press("Escape")
    expect(page.locator("#annotations line")).to_have_count(0)

    page.locator(".thumb").nth(0).click()
    expect(page.locator("#view-label")).to_have_text("LATERAL (LL)")
    _drag_in_image(page, (0, 0), (40, 30))
    assert float(readout.get_attribute("data-value") or 0) == pytest.approx(7.5, abs=0.05)
    expect(readout).to_have_text("Distance 7.5 mm at detector")


def test_draft_source_image_is_marked(page: Page, viewer_node: ViewerNode) -> None:
    """The PA image the worker's frontal choice takes carries the badge, the lateral not."""
    _open(page, viewer_node)
    thumbs = page.locator(".thumb")
    expect(thumbs.nth(1).locator(".badge.draft-source")).to_have_text(
        "Draft made from this image")
    expect(thumbs.nth(0).locator(".badge.draft-source")).to_have_count(0)
    expect(page.locator("#draft-source-badge")).to_be_hidden()
    _show_frontal(page, viewer_node)
    expect(page.locator("#draft-source-badge")).to_be_visible()


def test_prior_studies_show_only_signed_text(page: Page, viewer_node: ViewerNode) -> None:
    """Same patient ID and issuer, newest first; a draft-only prior is labelled without its
    text; the signed one expands; the listing is audited."""
    _open(page, viewer_node)
    priors = page.locator("#priors .prior")
    expect(priors).to_have_count(2)
    assert [int(v) for v in priors.evaluate_all("els => els.map(e => e.dataset.studyId)")] == [
        viewer_node.draft_prior_id, viewer_node.signed_prior_id]
    expect(priors.nth(0)).to_contain_text("Unsigned AI draft")
    expect(page.locator("#priors")).not_to_contain_text("Unsigned machine text")
    expect(page.locator("#priors")).not_to_contain_text("Old draft text")
    expect(page.locator("#priors")).not_to_contain_text("XR OTHER")
    signed = priors.nth(1)
    expect(signed).to_contain_text("2024-01-10")
    text = signed.locator(".prior-report .prose").first
    expect(text).to_be_hidden()
    signed.locator(".prior-report summary").click()
    expect(text).to_have_text("Stable small nodule, right base.")
    with viewer_node.database.sessions() as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "prior_studies_listed",
            AuditEvent.study_id == viewer_node.study_id).order_by(AuditEvent.id.desc())).first()
    assert event is not None and event.details is not None
    assert event.details["prior_study_ids"] == [viewer_node.draft_prior_id,
                                                viewer_node.signed_prior_id]
    screenshot(page, "viewer-priors.png")
    signed.locator(".prior-head a").click()
    page.wait_for_url(f"{viewer_node.node.url}/studies/{viewer_node.signed_prior_id}")
