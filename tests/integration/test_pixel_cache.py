"""The cache of prepared full-depth images behind the viewer and the study page: keyed by the
file on disk, bounded in bytes, shared safely between threads, never a way around the
signed-evidence check; the first image's description carried by the page."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from node.db.models import Instance, Report
from node.db.types import utcnow
from node.states import ReportState
from node.web.imaging import ImageRenderer
from node.web.study import warm_study_images
from tests.integration.web_seed import HTML, WebEnv, audit_events, seed_user
from tests.viewer_seed import add_study, gradient_phantom, phantom_dataset, store_dataset

pytestmark = pytest.mark.usefixtures("fast_hashing")

PATIENT_NAME = "CACHE^PHANTOM"
PATIENT_ID = "PID-CACHE-7"
ACCESSION = "ACC7741"


def _image(web: WebEnv, rows: int = 20, columns: int = 30, *, patient_id: str = PATIENT_ID,
           accession: str = ACCESSION) -> tuple[int, int, np.ndarray]:
    study = add_study(web.database, patient_id=patient_id, patient_name=PATIENT_NAME,
                      accession=accession)
    stored = gradient_phantom(rows, columns)
    ds = phantom_dataset(study, stored, windows=[(3000.0, 6000.0)])
    return study.id, store_dataset(web.database, web.store, study, ds), stored


def _path(web: WebEnv, instance_id: int) -> tuple[str, Path]:
    with web.database.sessions() as session:
        relative = session.get_one(Instance, instance_id).path
    return relative, web.store.absolute(relative)


def _samples(web: WebEnv, study_id: int, instance_id: int, shape: tuple[int, int]) -> np.ndarray:
    response = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.u16",
                              headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<u2").reshape(shape)


def _rewrite_pixels(path: Path, values: np.ndarray) -> None:
    """Other stored values in the same file, of the same size."""
    ds = dcmread(path)
    ds.PixelData = values.astype(np.uint16).tobytes()
    before = path.stat().st_size
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size == before


def _renderer(web: WebEnv) -> ImageRenderer:
    renderer: ImageRenderer = web.client.app.state.ctx.renderer  # type: ignore[attr-defined]
    return renderer


def test_a_file_changed_on_disk_is_not_served_from_the_cache(web: WebEnv) -> None:
    """Same path and size, other values, a later modification time: the new values."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, stored = _image(web)
    web.login("mcurie")
    first = _samples(web, study_id, instance_id, stored.shape)
    _, path = _path(web, instance_id)
    changed = stored[::-1].copy()
    _rewrite_pixels(path, changed)
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))  # whatever the file system's time resolution
    second = _samples(web, study_id, instance_id, stored.shape)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second.astype(np.int64) - second.min(),
                                  changed.astype(np.int64) - changed.min())


def test_a_file_replaced_by_another_is_not_served_from_the_cache(web: WebEnv) -> None:
    """Replaced by rename with the old size and modification time: a new inode, read again."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, stored = _image(web)
    web.login("mcurie")
    first = _samples(web, study_id, instance_id, stored.shape)
    _, path = _path(web, instance_id)
    status = path.stat()
    replacement = path.with_name(path.name + ".new")
    replacement.write_bytes(path.read_bytes())
    _rewrite_pixels(replacement, stored[::-1].copy())
    os.utime(replacement, ns=(status.st_atime_ns, status.st_mtime_ns))
    os.replace(replacement, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (status.st_size,
                                                              status.st_mtime_ns)
    second = _samples(web, study_id, instance_id, stored.shape)
    assert not np.array_equal(first, second)


def test_the_cache_keeps_no_more_bytes_than_its_bound(web: WebEnv) -> None:
    """Least recently used images leave first; an image over the bound is served, not kept."""
    images = [_image(web, 64, 64, patient_id=f"PID-E{index}", accession=f"E{index}")
              for index in range(6)]
    paths = [_path(web, instance_id)[0] for _, instance_id, _ in images]
    probe = ImageRenderer(web.store)
    one = probe.prepared(paths[0]).nbytes
    bound = int(one * 2.5)
    renderer = ImageRenderer(web.store, prepared_bytes=bound)
    for path in paths:
        renderer.prepared(path)
        assert renderer.prepared_weight <= bound
    assert renderer.prepared_count == 2
    again = renderer.prepared(paths[-1])
    assert renderer.prepared(paths[-1]) is again  # the newest is kept
    assert renderer.prepared(paths[0]) is not probe.prepared(paths[0])
    tiny = ImageRenderer(web.store, prepared_bytes=one - 1)
    item = tiny.prepared(paths[0])
    assert item.rows == 64 and tiny.prepared_count == 0 and tiny.prepared_weight == 0


def test_threads_asking_together_get_the_same_values_within_the_bound(web: WebEnv) -> None:
    images = [_image(web, 48, 40, patient_id=f"PID-T{index}", accession=f"T{index}")
              for index in range(4)]
    paths = [_path(web, instance_id)[0] for _, instance_id, _ in images]
    expected = {path: ImageRenderer(web.store).prepared(path).samples() for path in paths}
    bound = 3 * ImageRenderer(web.store).prepared(paths[0]).nbytes
    renderer = ImageRenderer(web.store, prepared_bytes=bound)
    failures: list[str] = []

    def read(offset: int) -> None:
        for step in range(20):
            path = paths[(offset + step) % len(paths)]
            if renderer.prepared(path).samples() != expected[path]:
                failures.append(path)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert renderer.prepared_weight <= bound


def test_changed_evidence_is_refused_with_a_warmed_cache(web: WebEnv) -> None:
    """A signed image altered in place with its size and modification time restored (the
    cache's key unchanged): the page and both pixel requests still answer 409, audited."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, stored = _image(web)
    with web.database.sessions.begin() as session:
        instance = session.get_one(Instance, instance_id)
        session.add(Report(study_id=study_id, state=ReportState.FINAL, findings="F.",
                           impression="I.", signed_at=utcnow(),
                           signed_evidence={instance.sop_instance_uid: instance.sha256}))
    relative, path = _path(web, instance_id)
    ctx = web.client.app.state.ctx  # type: ignore[attr-defined]
    warm_study_images(ctx, study_id)
    key = _renderer(web).file_key(relative)
    assert _renderer(web).prepared(relative) is _renderer(web).prepared(relative)  # warmed
    web.login("mcurie")
    assert web.client.get(f"/studies/{study_id}/pixels/{instance_id}.u16").status_code == 200
    status = path.stat()
    with path.open("r+b") as handle:  # in place: same inode
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\xff\xff\xff\xff")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert _renderer(web).file_key(relative) == key
    for suffix in ("json", "u16"):
        response = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.{suffix}")
        assert response.status_code == 409
        assert b"\x00" not in response.content
    assert web.client.get(f"/studies/{study_id}", headers=HTML).status_code == 409
    events = audit_events(web.database, "signed_evidence_mismatch")
    assert [e.details["during"] for e in events if e.details] == [
        "pixels", "pixels", "study_page"]
    assert len(audit_events(web.database, "image_pixels_viewed")) == 1


def test_the_page_carries_the_first_image_description_without_patient_identity(
        web: WebEnv) -> None:
    """The JSON data block is what the description request answers, and names nobody; the
    samples are preloaded from the head with the credentials mode of the viewer's fetch."""
    seed_user(web.database, "mcurie")
    study_id, instance_id, _ = _image(web)
    web.login("mcurie")
    page = web.client.get(f"/studies/{study_id}", headers=HTML)
    assert page.status_code == 200
    match = re.search(r'<script type="application/json" id="first-image-description">'
                      r"(.*?)</script>", page.text, re.S)
    assert match is not None
    embedded = json.loads(match.group(1))
    fetched = web.client.get(f"/studies/{study_id}/pixels/{instance_id}.json").json()
    assert embedded == fetched
    with web.database.sessions() as session:
        instance = session.get_one(Instance, instance_id)
        identifiers = [instance.sop_instance_uid, instance.series_instance_uid,
                       instance.study.study_instance_uid]
    text = match.group(1).upper()
    for identity in [PATIENT_NAME, "CACHE", PATIENT_ID, ACCESSION, "19600101",
                     *identifiers]:
        assert identity.upper() not in text
    head = page.text.split("</head>")[0]
    assert (f'<link rel="preload" href="/studies/{study_id}/pixels/{instance_id}.u16" '
            'as="fetch" crossorigin="anonymous">') in head
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy


def test_a_page_without_a_decodable_first_image_carries_no_description(web: WebEnv) -> None:
    seed_user(web.database, "mcurie")
    study_id, instance_id, _ = _image(web)
    _, path = _path(web, instance_id)
    path.write_bytes(b"not a DICOM file")
    web.login("mcurie")
    page = web.client.get(f"/studies/{study_id}", headers=HTML)
    assert page.status_code == 200
    assert "first-image-description" not in page.text
    assert 'rel="preload"' not in page.text
