"""No patient data in any log line of any radnode process.

One study with a distinctive patient name, ID and birth date goes the whole way:
C-STORE into ``radnode serve``, a ``radnode worker`` drafts it from a private
Redis, the draft SR is exported to a real Orthanc, a radiologist searches the
worklist for the patient, opens the study and signs it in the node's web app,
and the signed SR is exported, with the IOCM rejection note that withdraws the
draft (it carries the patient's data too). The node and the worker log JSON at DEBUG level;
the radnode code run in this process (creating the radiologist) logs through the
same formatter.
None of those lines may hold the name (as sent, with spaces for ``^``, or any of
its components), the ID, or the birth date (as sent or as YYYY-MM-DD).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import Export, Report, Study
from node.logs import JsonFormatter
from node.runtime import Database
from node.states import ExportState, ReportState, StudyState
from tests.conftest import DEMO_BUNDLE_DIR, free_port, make_settings
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicom_net import store_successes, storescu, wait_for
from tests.integration.test_crash_safety import ServerProcess
from tests.integration.test_jobs import FAST_JOBS, WorkerProcess
from tests.integration.web_seed import PASSWORD, fast_password_hashing, form_csrf, seed_user
from tests.orthanc import running_orthanc
from tests.reliability.hostile_scu import record_figures
from tests.reliability.private_services import private_redis

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.dcmtk,
              pytest.mark.usefixtures("dcmtk_installed", "orthanc_installed",
                                      "demo_bundle_built")]

PATIENT_NAME = "Zyxwordt^Quennelda^Marguerithe"
PATIENT_ID = "PHI7Q4ZX91K"
BIRTH_DATE = "19390417"


def forbidden_values() -> list[str]:
    """Every spelling of the patient's data that must not be logged."""
    family, given, middle = PATIENT_NAME.split("^")
    return [PATIENT_NAME, PATIENT_NAME.replace("^", " "), f"{given} {family}",
            family, given, middle, PATIENT_ID,
            BIRTH_DATE, f"{BIRTH_DATE[:4]}-{BIRTH_DATE[4:6]}-{BIRTH_DATE[6:]}"]


@pytest.fixture
def captured_here() -> Iterator[io.StringIO]:
    """The records radnode code logs in this process (``node.*``, ``workers.*``; not
    the test's own HTTP client), formatted as the node formats them, at DEBUG."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    handler.addFilter(lambda record: record.name.split(".")[0] in {"node", "workers"})
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous)


def _events(text: str) -> set[str]:
    events = set()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record:
            events.add(str(record["event"]))
    return events


def test_no_patient_data_in_any_log(tmp_path: Path, postgres_url: str,
                                    captured_here: io.StringIO) -> None:
    """Receive, draft, export, search, view, sign, export again: no PHI logged."""
    with running_orthanc(tmp_path / "orthanc") as orthanc, \
            private_redis(tmp_path / "redis") as broker:
        destination = {"ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port, "exports": "drafts_and_finals"}
        config = tmp_path / "radnode.toml"
        config.write_text(
            "[[destinations]]\n"
            f'ae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
            'exports = "drafts_and_finals"\n'
        )
        settings = make_settings(
            tmp_path, postgres_url, broker={"url": broker.url}, jobs=FAST_JOBS,
            model={"bundle": str(DEMO_BUNDLE_DIR)}, destinations=[destination],
        )
        logging_env = {"RADNODE_CONFIG": str(config), "RADNODE_LOGGING__FORMAT": "json",
                       "RADNODE_LOGGING__LEVEL": "DEBUG"}
        server = ServerProcess(tmp_path, postgres_url)
        web_port = free_port()
        server.env.update({
            **logging_env,
            "RADNODE_BROKER__URL": broker.url,
            "RADNODE_MODEL__BUNDLE": str(DEMO_BUNDLE_DIR),
            "RADNODE_ASSEMBLY__QUIET_SECONDS": "1",
            "RADNODE_ASSEMBLY__POLL_SECONDS": "0.2",
            "RADNODE_JOBS__REQUEUE_AFTER_SECONDS": "3",
            "RADNODE_JOBS__RECONCILE_SECONDS": "0.5",
            "RADNODE_EXPORTS__PERIOD_SECONDS": "0.5",
            "RADNODE_WEB__PORT": str(web_port),
        })
        worker = WorkerProcess(settings, tmp_path / "worker.log")
        worker.env.update(logging_env)
        database = Database.from_settings(settings)
        try:
            server.start()
            worker.start()
            study_uid, frontal, lateral = generate_uid(), generate_uid(), generate_uid()
            files = []
            for number, (series, view) in enumerate(((frontal, "PA"), (lateral, "LL")), 1):
                ds = make_cxr_dataset(study_uid=study_uid, series_uid=series,
                                      view_position=view, rows=128, cols=128,
                                      patient_name=PATIENT_NAME, patient_id=PATIENT_ID,
                                      series_number=number, seed=number)
                ds.PatientBirthDate = BIRTH_DATE
                files.append(write_dataset(ds, tmp_path / "in" / f"{view}.dcm"))
            sent = storescu(server.port, files, calling_ae="MODALITY")
            assert store_successes(sent) == 2, sent.stdout + sent.stderr

            def study_in(state: StudyState) -> Study | None:
                with database.sessions() as session:
                    study = session.scalars(select(Study)).one_or_none()
                    return study if study is not None and study.state == state else None

            study = wait_for(lambda: study_in(StudyState.DRAFTED), timeout=180,
                             what="the study to be drafted")
            assert study.patient_name == PATIENT_NAME  # the data is kept, only not logged

            def exports_sent(count: int) -> bool:
                with database.sessions() as session:
                    states = list(session.scalars(select(Export.state)))
                return len(states) == count and all(s == ExportState.SENT for s in states)

            wait_for(lambda: exports_sent(1), timeout=60, what="the draft SR exported")
            with database.sessions() as session:
                draft = session.scalars(select(Report)).one()

            with fast_password_hashing():
                seed_user(database, "drphi", display_name="Reader^Rita")
            with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=30,
                              follow_redirects=False) as web:
                token = form_csrf(web.get("/login").text)
                login = web.post("/login", data={"username": "drphi", "password": PASSWORD,
                                                 "csrf_token": token, "next": "/"})
                assert login.status_code == 303, login.text
                family = PATIENT_NAME.split("^")[0]
                for query in (family, PATIENT_ID):
                    found = web.get("/", params={"q": query, "state": "ALL"})
                    assert found.status_code == 200 and family in found.text, query
                page = web.get(f"/studies/{study.id}")
                assert page.status_code == 200
                csrf = re.search(r'<meta name="csrf-token" content="([^"]*)"', page.text)
                assert csrf is not None
                signed = web.post(f"/studies/{study.id}/sign", data={
                    "csrf_token": csrf.group(1), "report_id": draft.id,
                    "findings": draft.findings, "impression": draft.impression})
                assert signed.status_code == 303, signed.text

            wait_for(lambda: study_in(StudyState.SIGNED), timeout=30, what="the signature")
            wait_for(lambda: exports_sent(3), timeout=60,
                     what="the signed SR and the draft's rejection note exported")
            with database.sessions() as session:
                uids = set(session.scalars(select(Report.sop_instance_uid)))
                notes = set(session.scalars(select(Export.object_sop_instance_uid).where(
                    Export.object_sop_instance_uid.is_not(None))))
                assert len(notes) == 1
                uids |= notes
                final_count = len(list(session.scalars(
                    select(Report.id).where(Report.state == ReportState.FINAL))))
            assert final_count == 1
            assert uids <= set(orthanc.sop_instance_uids())
        finally:
            worker.stop()
            exit_status = server.terminate() if server.process is not None else None
            database.engine.dispose()

    assert exit_status == 0
    logs = {
        "radnode serve": server.log.read_text(errors="replace"),
        "radnode worker": worker.log_path.read_text(errors="replace"),
        "test process": captured_here.getvalue(),
    }
    events = {name: _events(text) for name, text in logs.items()}
    assert {"instance_received", "study_complete", "job_enqueued", "export_sent",
            "report_signed"} <= events["radnode serve"], events["radnode serve"]
    assert {"job_running", "job_succeeded"} <= events["radnode worker"]
    leaks = [
        f"{name}: {value!r} in {line[:200]!r}"
        for name, text in logs.items()
        for line in text.splitlines()
        for value in forbidden_values()
        if value.lower() in line.lower()
    ]
    assert leaks == [], "\n".join(leaks[:20])
    record_figures("no_phi_in_logs", {
        "processes": sorted(logs),
        "log_lines": {name: len(text.splitlines()) for name, text in logs.items()},
        "values_checked": len(forbidden_values()),
        "lines_with_patient_data": len(leaks),
        "exports_sent": 2,
    })
