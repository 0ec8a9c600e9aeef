"""STOW-RS: instances stored over HTTP through the C-STORE ingest path.

The node's web app runs in a uvicorn thread on a free port; ``dicomweb-client`` stores as
a viewer or an import station would, and raw HTTP (httpx) sends what a hostile or buggy
client would. Each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000MC, generate_uid
from requests import HTTPError
from sqlalchemy import select, update

from node.assembly.service import AssemblyService
from node.db.models import AccessToken, AuditEvent, Instance, QuarantinedInstance, Study
from node.db.types import utcnow
from node.states import QuarantineReason, Role, StudyState
from node.web.access_tokens import issue_access_token
from node.web.server import WebServer
from node.web.service_auth import issue_service_token
from tests.dicom_factory import make_cxr_dataset
from tests.integration.web_seed import (
    PASSWORD,
    WebEnv,
    audit_events,
    build_web_env,
    form_csrf,
    seed_user,
)
from tests.reliability.bombs import _explicit_le, _part10_head, write_deflate_bomb

pytestmark = pytest.mark.usefixtures("fast_hashing")

BOUNDARY = "radnode-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILURE_REASON, WARNING_REASON = 0x00081197, 0x00081196


@dataclass
class StowNode:
    """The web app on a real port, an uploader and a radiologist with their tokens."""

    env: WebEnv
    server: WebServer
    store_token: str
    read_token: str

    @property
    def url(self) -> str:
        return self.server.url + "/dicomweb"

    def client(self, token: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(url=self.url, headers={
            "Authorization": f"Bearer {token or self.store_token}"})

    def post(self, path: str, body: bytes, *, token: str | None = None,
             content_type: str = MULTIPART, **headers: str) -> httpx.Response:
        all_headers = {"Content-Type": content_type, "Accept": "application/dicom+json",
                       **headers}
        if token != "":
            all_headers["Authorization"] = f"Bearer {token or self.store_token}"
        return httpx.post(self.url + "/studies" + path, content=body, headers=all_headers,
                          timeout=60)

    def instances(self) -> dict[str, Instance]:
        with self.env.database.sessions() as session:
            return {i.sop_instance_uid: i for i in session.scalars(select(Instance))}


def _token(env: WebEnv, username: str) -> str:
    from node.db.models import User

    with env.database.sessions.begin() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        return issue_access_token(session, user, lifetime=dt.timedelta(days=1), max_days=90,
                                  actor="test", now=utcnow()).token


@pytest.fixture
def stow(tmp_path: Path, database_url: str) -> Iterator[StowNode]:
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "web-secret.key"),
        "stow_max_request_mb": 4, "stow_max_instance_mb": 1})
    seed_user(env.database, "import-1", Role.UPLOADER, display_name="Import^Station")
    seed_user(env.database, "mcurie")
    server = WebServer(env.client.app, "127.0.0.1", 0)  # type: ignore[arg-type]
    server.start()
    try:
        yield StowNode(env, server, _token(env, "import-1"), _token(env, "mcurie"))
    finally:
        server.stop()
        env.close()


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def chest(study_uid: str, *, number: int = 1, seed: int = 0, rows: int = 64) -> Dataset:
    return make_cxr_dataset(study_uid=study_uid, instance_number=number, seed=seed,
                            rows=rows, cols=rows, patient_id="STOW-0001",
                            patient_name="STOW^PATIENT")


def _sequence(answer: dict[str, dict], tag: str) -> list[dict]:  # type: ignore[type-arg]
    return list(answer.get(tag, {}).get("Value", []))


# -- the ordinary path -----------------------------------------------------------------------


def test_dicomweb_client_stores_a_study_durably_through_the_ingest_path(
        stow: StowNode) -> None:
    study_uid = str(generate_uid())
    first, second = chest(study_uid), chest(study_uid, number=2, seed=1)
    first.SeriesInstanceUID = second.SeriesInstanceUID

    answer = stow.client().store_instances([first, second], study_instance_uid=study_uid)

    referenced = answer.ReferencedSOPSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced] == [
        str(first.SOPInstanceUID), str(second.SOPInstanceUID)]
    assert "FailedSOPSequence" not in answer
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{study_uid}")
    stored = stow.instances()
    for ds, item in zip((first, second), referenced, strict=True):
        row = stored[str(ds.SOPInstanceUID)]
        assert row.calling_ae == "STOW-RS"
        on_disk = stow.env.store.absolute(row.path).read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == row.sha256
        assert dcmread(BytesIO(on_disk)).PixelData == ds.PixelData
        assert item.RetrieveURL.endswith(
            f"/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    received = audit_events(stow.env.database, "instance_received")
    assert [e.actor for e in received] == ["import-1", "import-1"]
    [request] = audit_events(stow.env.database, "stow_request")
    assert (request.actor, request.object_id) == ("import-1", study_uid)
    assert request.details is not None and request.details["stored"] == 2
    with stow.env.database.sessions() as session:
        [used] = session.scalars(select(AccessToken.last_used_at).where(
            AccessToken.id == request.details["token_id"])).all()
        assert used is not None

    # A reader gets back the very bytes; the uploader's token reads nothing.
    retrieved = stow.client(stow.read_token).retrieve_instance(
        study_uid, str(first.SeriesInstanceUID), str(first.SOPInstanceUID))
    assert retrieved.SOPInstanceUID == first.SOPInstanceUID
    with pytest.raises(HTTPError) as refused:
        stow.client().search_for_studies()
    assert refused.value.response.status_code == 403


def test_a_stored_study_is_handed_to_assembly_as_a_c_store_is(stow: StowNode) -> None:
    stable: list[str] = []

    def on_stable(session: object, study: Study) -> None:
        stable.append(study.study_instance_uid)

    settings = stow.env.settings
    assembly = AssemblyService(settings.assembly, stow.env.database.sessions,
                               on_stable=on_stable)  # type: ignore[arg-type]
    study_uid = str(generate_uid())
    stow.client().store_instances([chest(study_uid)])
    with stow.env.database.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state is StudyState.RECEIVING
        arrived = study.last_received_at
    alone = dt.timedelta(seconds=settings.assembly.early_stable_after_seconds)
    assert assembly.tick(now=arrived + alone) == [study.id]
    assert stable == [study_uid]


# -- instances that fail, alone or all -------------------------------------------------------


def test_an_instance_of_another_study_fails_and_the_rest_is_stored(stow: StowNode) -> None:
    study_uid, other_uid = str(generate_uid()), str(generate_uid())
    mine, foreign = chest(study_uid), chest(other_uid, seed=3)

    response = stow.post(f"/{study_uid}", multipart(part10(mine), part10(foreign)))

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    [failed] = _sequence(answer, "00081198")
    assert failed["00081155"]["Value"] == [str(foreign.SOPInstanceUID)]
    assert failed["00081197"]["Value"] == [0xC409]
    assert [i["00081155"]["Value"][0] for i in _sequence(answer, "00081199")] == [
        str(mine.SOPInstanceUID)]
    assert set(stow.instances()) == {str(mine.SOPInstanceUID)}

    only_foreign = stow.post(f"/{study_uid}", multipart(part10(chest(other_uid))))
    assert only_foreign.status_code == 409
    assert "00081199" not in only_foreign.json()


def test_a_conflicting_resend_is_quarantined_and_the_original_kept(stow: StowNode) -> None:
    study_uid = str(generate_uid())
    original = chest(study_uid)
    assert stow.post("", multipart(part10(original))).status_code == 200
    row = stow.instances()[str(original.SOPInstanceUID)]
    kept = stow.env.store.absolute(row.path).read_bytes()

    changed = chest(study_uid, seed=9)  # other pixels under the same UIDs
    changed.SOPInstanceUID = original.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = original.SOPInstanceUID
    changed.SeriesInstanceUID = original.SeriesInstanceUID
    response = stow.post("", multipart(part10(changed)))

    assert response.status_code == 202
    [item] = _sequence(response.json(), "00081199")
    assert item["00081196"]["Value"] == [0xB100]
    assert item.get("00081190", {}).get("Value") is None  # not retrievable
    assert stow.env.store.absolute(row.path).read_bytes() == kept
    with stow.env.database.sessions() as session:
        [aside] = session.scalars(select(QuarantinedInstance)).all()
        assert aside.reason is QuarantineReason.CONTENT_CONFLICT
        assert aside.calling_ae == "STOW-RS"
    [event] = audit_events(stow.env.database, "instance_quarantined")
    assert event.actor == "import-1"

    again = stow.post("", multipart(part10(original)))  # an identical re-send: success
    assert again.status_code == 200


def test_unsupported_syntax_class_and_garbage_fail_with_their_reasons(stow: StowNode) -> None:
    study_uid = str(generate_uid())
    foreign_syntax = chest(study_uid, seed=4)  # its file meta claims JPEG 2000 (Part 2)
    claimed = _part10_head(foreign_syntax, JPEG2000MC) + _explicit_le(foreign_syntax)
    not_storage = chest(study_uid, seed=5)
    not_storage.SOPClassUID = "1.2.840.10008.1.1"  # Verification
    not_storage.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"
    body = multipart(b"\0" * 128 + b"DICM" + b"not a file meta", part10(not_storage), claimed)

    response = stow.post("", body)

    assert response.status_code == 409
    reasons = [i["00081197"]["Value"][0] for i in _sequence(response.json(), "00081198")]
    assert reasons == [0xC210, 0x0122, 0xC122]
    assert stow.instances() == {}


# -- hostile requests ------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "status"), [
    ("application/dicom", 415),
    ('multipart/related; type="application/dicom+json"; boundary=x', 415),
    ("multipart/form-data; boundary=x", 415),
    ('multipart/related; type="application/dicom"', 400),
])
def test_wrong_content_types_are_refused(stow: StowNode, content_type: str,
                                         status: int) -> None:
    body = part10(chest(str(generate_uid())))
    assert stow.post("", body, content_type=content_type).status_code == status
    assert stow.instances() == {}


def test_malformed_bodies_are_refused_and_store_nothing(stow: StowNode) -> None:
    data = part10(chest(str(generate_uid())))
    truncated = multipart(data)[:-len(f"--{BOUNDARY}--\r\n") - 100]
    assert stow.post("", truncated).status_code == 400
    assert stow.post("", multipart(data, part_type="text/plain")).status_code == 415
    assert stow.post("", f"--{BOUNDARY}--\r\n".encode()).status_code == 400
    assert stow.post("", b"garbage without any boundary").status_code == 400
    assert stow.post("/not-a-uid", multipart(data)).status_code == 400
    assert stow.instances() == {}


def test_an_oversize_body_is_refused_before_anything_is_stored(stow: StowNode) -> None:
    study_uid = str(generate_uid())
    instances = [part10(chest(study_uid, number=n, seed=n, rows=512)) for n in range(1, 9)]
    body = multipart(*instances)  # 8 x 512 KiB: over the 4 MiB request limit
    assert len(body) > 4 * 2**20

    declared = stow.post("", body)
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it comes
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    streamed = httpx.post(stow.url + "/studies", content=chunks(), timeout=60, headers={
        "Content-Type": MULTIPART, "Authorization": f"Bearer {stow.store_token}"})
    assert streamed.status_code == 413
    assert stow.instances() == {}


def test_an_oversize_instance_fails_alone_with_out_of_resources(stow: StowNode) -> None:
    study_uid = str(generate_uid())
    small, large = chest(study_uid, seed=1), chest(study_uid, number=2, seed=2, rows=1024)
    response = stow.post("", multipart(part10(small), part10(large)))  # 2 MiB > 1 MiB
    assert response.status_code == 202
    [failed] = _sequence(response.json(), "00081198")
    assert failed["00081155"]["Value"] == [str(large.SOPInstanceUID)]
    assert failed["00081197"]["Value"] == [0xA700]
    assert set(stow.instances()) == {str(small.SOPInstanceUID)}


def test_a_deflate_bomb_is_refused_before_inflation(stow: StowNode, tmp_path: Path) -> None:
    """300 KB that inflate to 300 MiB, past the default limit (256 MiB): 0xA700 as for
    C-STORE, refused and audited without being inflated."""
    header = write_deflate_bomb(tmp_path / "bomb.dcm", inflated_bytes=300 * 2**20)
    bomb = (tmp_path / "bomb.dcm").read_bytes()
    assert len(bomb) < 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = stow.post("", multipart(bomb))
    assert response.status_code == 409
    [failed] = _sequence(response.json(), "00081198")
    assert failed["00081155"]["Value"] == [str(header.SOPInstanceUID)]
    assert failed["00081197"]["Value"] == [0xA700]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024
    [refusal] = audit_events(stow.env.database, "instance_refused")
    assert refusal.details is not None and refusal.details["limit"] == "max_inflated_bytes"
    assert stow.instances() == {}


# -- who may store ---------------------------------------------------------------------------


def test_only_an_uploader_may_store_and_refused_tokens_store_nothing(stow: StowNode) -> None:
    env = stow.env
    body = multipart(part10(chest(str(generate_uid()))))
    with env.database.sessions.begin() as session:
        worker_token = issue_service_token(session, "gpu-1", actor="test")
    expired, revoked = _token(env, "import-1"), _token(env, "import-1")
    with env.database.sessions.begin() as session:
        tokens = {t.id: t for t in session.scalars(select(AccessToken))}
        newest = sorted(tokens)
        session.execute(update(AccessToken).where(AccessToken.id == newest[-2])
                        .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        session.execute(update(AccessToken).where(AccessToken.id == newest[-1])
                        .values(revoked_at=utcnow()))

    assert stow.post("", body, token="").status_code == 401
    assert stow.post("", body, token=stow.read_token).status_code == 403  # radiologist
    assert stow.post("", body, token=worker_token).status_code == 403
    assert stow.post("", body, token=expired).status_code == 401
    assert stow.post("", body, token=revoked).status_code == 401
    assert stow.post("", body, token="rnp_made-up").status_code == 401
    assert stow.instances() == {}
    assert len(audit_events(env.database, "access_token_refused")) == 3

    # With the login cookie: an uploader from this origin only; a radiologist never.
    with httpx.Client(base_url=stow.server.url) as browser:
        def sign_in(username: str) -> None:
            browser.cookies.clear()
            page = browser.get("/login")
            browser.post("/login", data={"username": username, "password": PASSWORD,
                                         "csrf_token": form_csrf(page.text), "next": "/"})

        sign_in("mcurie")
        headers = {"Content-Type": MULTIPART}
        assert browser.post("/dicomweb/studies", content=body,
                            headers=headers).status_code == 403
        sign_in("import-1")
        assert browser.post("/dicomweb/studies", content=body, headers={
            **headers, "Origin": "https://evil.example"}).status_code == 403
        assert stow.instances() == {}
        stored = browser.post("/dicomweb/studies", content=body, headers={
            **headers, "Origin": stow.server.url})
        assert stored.status_code == 200
    assert len(stow.instances()) == 1
    with env.database.sessions() as session:
        [request] = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "stow_request")).all()
        assert request.details is not None and request.details["via"] == "session"
