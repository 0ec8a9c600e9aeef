"""The database on SQLite and PostgreSQL: migrations, constraints, UTC timestamps."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    Column,
    Enum,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError
from sqlalchemy.orm import undefer
from sqlalchemy.orm.exc import DetachedInstanceError

from node.db.migrate import MIGRATIONS_DIR, alembic_config, current_revision, upgrade
from node.db.models import AccessToken, AuditEvent, Base, Export, Instance, Job, Report, Study, User
from node.runtime import Database
from node.states import ReportState, Role, StudyState
from tests.conftest import make_settings
from tests.integration.dicom_net import radnode_command

HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def _study(uid: str = "1.2.3.4", **values: object) -> Study:
    return Study(study_instance_uid=uid, **values)


def _add_study(database: Database, uid: str = "1.2.3.4") -> int:
    with database.sessions.begin() as session:
        study = _study(uid)
        session.add(study)
        session.flush()
        return study.id


def _instance(study: Study, sop: str = "1.2.3.4.1.1", **values: object) -> Instance:
    fields: dict[str, object] = {
        "study": study,
        "sop_instance_uid": sop,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
        "series_instance_uid": "1.2.3.4.1",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "path": f"1.2.3.4/1.2.3.4.1/{sop}.dcm",
        "size_bytes": 1234,
        "sha256": "0" * 64,
    }
    fields.update(values)
    return Instance(**fields)


def test_migrations_reach_head_and_match_the_models(database: Database) -> None:
    """After upgrade the schema is exactly what the models declare (no autogenerate diff)."""
    assert HEAD is not None
    assert current_revision(database.engine) == HEAD
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    tables = set(inspect(database.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_upgrade_is_idempotent(database: Database) -> None:
    """Running the migrations again on a migrated database changes nothing."""
    upgrade(database.engine)
    assert current_revision(database.engine) == HEAD


def test_downgrade_to_base_and_back(database: Database) -> None:
    """The initial migration reverses cleanly and can be applied again."""
    from alembic import command

    with database.engine.begin() as connection:
        config = alembic_config(database.engine)
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert current_revision(database.engine) is None
    assert not set(Base.metadata.tables) & set(inspect(database.engine).get_table_names())
    upgrade(database.engine)
    assert current_revision(database.engine) == HEAD


def test_db_upgrade_command(database_url: str, tmp_path: Path) -> None:
    """``radnode db upgrade`` migrates the database named by RADNODE_DATABASE__URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
    env["RADNODE_DATABASE__URL"] = database_url
    result = subprocess.run(
        [*radnode_command(), "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"at revision {HEAD}")
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///")).resolve()
        assert f"SQLite database file {path} (RADNODE_CONFIG not set; url from " in result.stdout
    else:
        assert f"database {database_url} (RADNODE_CONFIG not set; url from " in result.stdout
    database = Database.from_settings(make_settings(tmp_path, database_url))
    try:
        assert current_revision(database.engine) == HEAD
        assert set(Base.metadata.tables) <= set(inspect(database.engine).get_table_names())
    finally:
        database.engine.dispose()


def test_study_uid_is_unique(database: Database) -> None:
    """Two studies cannot share a Study Instance UID."""
    with database.sessions.begin() as session:
        session.add(_study("1.2.3"))
    with pytest.raises(IntegrityError), database.sessions.begin() as session:
        session.add(_study("1.2.3"))


def test_sop_instance_uid_is_unique(database: Database) -> None:
    """Two instance rows cannot share a SOP Instance UID, even across studies."""
    with database.sessions.begin() as session:
        session.add(_instance(_study("1.2.3"), sop="9.9.9"))
    with pytest.raises(IntegrityError), database.sessions.begin() as session:
        session.add(_instance(_study("1.2.4"), sop="9.9.9"))


def test_one_job_per_study_and_model_version(database: Database) -> None:
    """A study has at most one job per model version; another version is allowed."""
    study_id = _add_study(database)
    with database.sessions.begin() as session:
        session.add_all(
            [Job(study_id=study_id, model_version="v1"), Job(study_id=study_id, model_version="v2")]
        )
    with pytest.raises(IntegrityError), database.sessions.begin() as session:
        session.add(Job(study_id=study_id, model_version="v1"))


def test_one_export_per_report_and_destination(database: Database) -> None:
    """A report is exported once per destination AE."""
    study_id = _add_study(database)
    with database.sessions.begin() as session:
        report = Report(study_id=study_id, state=ReportState.DRAFT)
        session.add(report)
        session.flush()
        report_id = report.id
        session.add_all(
            [
                Export(report_id=report_id, destination_ae="PACS"),
                Export(report_id=report_id, destination_ae="RIS"),
            ]
        )
    with pytest.raises(IntegrityError), database.sessions.begin() as session:
        session.add(Export(report_id=report_id, destination_ae="PACS"))


def test_username_is_unique(database: Database) -> None:
    """Two users cannot share a username."""
    with database.sessions.begin() as session:
        session.add(User(username="rad", display_name="A", password_hash="x", role=Role.ADMIN))
    with pytest.raises(IntegrityError), database.sessions.begin() as session:
        session.add(
            User(username="rad", display_name="B", password_hash="y", role=Role.RADIOLOGIST)
        )


def test_foreign_keys_are_enforced(database: Database) -> None:
    """An instance cannot point at a study that does not exist (SQLite included)."""
    with pytest.raises(IntegrityError), database.sessions.begin() as session:
        instance = _instance(_study())
        instance.study = None  # type: ignore[assignment]
        instance.study_id = 999_999
        session.add(instance)


def test_deleting_a_study_cascades_to_instances(database: Database) -> None:
    """Instances go with their study."""
    with database.sessions.begin() as session:
        session.add(_instance(_study()))
    with database.sessions.begin() as session:
        session.delete(session.scalars(select(Study)).one())
    with database.sessions() as session:
        assert session.scalars(select(Instance)).all() == []


def test_timestamps_round_trip_as_aware_utc(database: Database) -> None:
    """An aware time in any zone comes back as the same instant, aware, in UTC."""
    tokyo = dt.timezone(dt.timedelta(hours=9))
    received = dt.datetime(2024, 5, 17, 18, 30, 15, 123456, tzinfo=tokyo)
    with database.sessions.begin() as session:
        session.add(
            _study(first_received_at=received, last_received_at=received, stable_at=received)
        )
    with database.sessions() as session:
        study = session.scalars(select(Study)).one()
    for value in (study.first_received_at, study.last_received_at, study.stable_at):
        assert value is not None
        assert value.utcoffset() == dt.timedelta(0)
        assert value == received
        assert value.hour == 9  # 18:30 in Tokyo is 09:30 UTC
    assert study.updated_at.tzinfo is not None


def test_default_timestamps_are_aware_and_recent(database: Database) -> None:
    """Defaults are the current UTC time and comparable with aware datetimes."""
    before = dt.datetime.now(dt.UTC)
    with database.sessions.begin() as session:
        session.add(_study())
    with database.sessions() as session:
        study = session.scalars(select(Study)).one()
    assert before - dt.timedelta(seconds=5) <= study.first_received_at <= dt.datetime.now(dt.UTC)


def test_naive_timestamps_are_refused(database: Database) -> None:
    """A naive datetime is an error rather than a guess about its zone."""
    naive = dt.datetime(2024, 5, 17, 9, 30)
    with (
        pytest.raises(StatementError, match="timezone-aware"),
        database.sessions.begin() as session,
    ):
        session.add(_study(first_received_at=naive, last_received_at=naive))


def test_aware_timestamps_compare_in_queries(database: Database) -> None:
    """Range queries on timestamps agree with Python's aware comparisons."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with database.sessions.begin() as session:
        for minutes, uid in ((0, "1.1"), (10, "1.2"), (20, "1.3")):
            when = base + dt.timedelta(minutes=minutes)
            session.add(_study(uid, first_received_at=when, last_received_at=when))
    cutoff = (base + dt.timedelta(minutes=10)).astimezone(dt.timezone(dt.timedelta(hours=-5)))
    with database.sessions() as session:
        uids = session.scalars(
            select(Study.study_instance_uid).where(Study.last_received_at <= cutoff)
        ).all()
    assert sorted(uids) == ["1.1", "1.2"]


def test_states_are_stored_by_name(database: Database) -> None:
    """Enums are stored as their names (what ``radnode studies`` prints)."""
    with database.sessions.begin() as session:
        session.add(_study(state=StudyState.IGNORED))
    with database.engine.connect() as connection:
        raw = connection.exec_driver_sql("SELECT state FROM studies").scalar_one()
    assert raw == "IGNORED"



def _migrate(database: Database, revision: str, *, down: bool) -> None:
    from alembic import command

    with database.engine.begin() as connection:
        config = alembic_config(database.engine)
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_downgrade_below_worker_accounts_leaves_only_roles_the_older_schema_loads(
        database: Database) -> None:
    """Worker service accounts become deactivated radiologists; rows and audit stay."""
    _migrate(database, "0004", down=True)
    now = dt.datetime.now(dt.UTC)
    tables = MetaData()
    tables.reflect(database.engine, only=["users", "audit_events", "service_tokens"])
    users, audit, tokens = (tables.tables[n] for n in ("users", "audit_events", "service_tokens"))
    account = {"display_name": "X^Y", "password_hash": "!", "active": True, "created_at": now}
    with database.engine.begin() as connection:
        connection.execute(users.insert(), [
            {"id": 1, "username": "mcurie", "role": "RADIOLOGIST", **account},
            {"id": 2, "username": "root", "role": "ADMIN", **account},
            {"id": 3, "username": "gpu-a", "role": "WORKER", **account},
        ])
        connection.execute(tokens.insert().values(token_hash="0" * 64, user_id=3,
                                                  created_at=now))
        connection.execute(audit.insert().values(at=now, actor="root", user_id=3,
                                                 action="service_token_issued",
                                                 object_type="user", object_id="3"))

    _migrate(database, "0003", down=True)

    older_role = Enum("RADIOLOGIST", "ADMIN", native_enum=False, length=24,
                      validate_strings=True)
    older_users = Table("users", MetaData(), Column("id", Integer, primary_key=True),
                        Column("username", String(64)), Column("role", older_role),
                        Column("active", Boolean))
    with database.engine.connect() as connection:
        rows = connection.execute(select(older_users).order_by(older_users.c.id)).all()
        audit_user = connection.execute(select(audit.c.user_id)).scalar_one()
    assert [tuple(row) for row in rows] == [(1, "mcurie", "RADIOLOGIST", True),
                                            (2, "root", "ADMIN", True),
                                            (3, "gpu-a", "RADIOLOGIST", False)]
    assert audit_user == 3
    upgrade(database.engine)
    assert current_revision(database.engine) == HEAD
    with database.sessions() as session:
        assert session.get_one(User, 3).role is Role.RADIOLOGIST


def test_a_reports_handed_over_sr_is_loaded_only_when_asked_for(database: Database) -> None:
    """The SR bytes stay out of ordinary report queries; reading them unasked raises."""
    study_id = _add_study(database)
    with database.sessions.begin() as session:
        report = Report(study_id=study_id, state=ReportState.DRAFT, pending_sr_data=b"SR")
        session.add(report)
        session.flush()
        report_id = report.id
    with database.sessions() as session:
        plain = session.scalars(select(Report)).one()
        assert "pending_sr_data" not in inspect(plain).dict
        with pytest.raises(InvalidRequestError, match="raiseload"):
            _ = plain.pending_sr_data  # no lazy load behind the caller's back
    with pytest.raises(DetachedInstanceError, match="pending_sr_data"):
        _ = plain.pending_sr_data
    with database.sessions() as session:
        asked = session.get_one(Report, report_id, options=[undefer(Report.pending_sr_data)])
    assert asked.pending_sr_data == b"SR"


def test_report_srs_written_before_the_index_are_indexed_from_their_files(
    database: Database, tmp_path: Path
) -> None:
    """The backfill reads each stored SR once; a lost file leaves its row as it was."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from node.reports.sr_index import backfill_report_sr_index
    from node.storage import InstanceStore

    store = InstanceStore(tmp_path / "store", min_free_mb=0, max_used_percent=100)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3.4.9.1"
    ds.SeriesNumber, ds.InstanceNumber = 9001, 1
    ds.SeriesDescription = "AI DRAFT - UNVERIFIED"
    ds.CompletionFlag, ds.VerificationFlag = "PARTIAL", "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = "20261205", "063000"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    store.write("sr/kept.dcm", path.read_bytes())
    study_id = _add_study(database)
    with database.sessions.begin() as session:
        for sop, sr_path in (("1.2.3.4.9.1", "sr/kept.dcm"), ("1.2.3.4.9.2", "sr/lost.dcm")):
            session.add(Report(study_id=study_id, state=ReportState.DRAFT,
                               sop_instance_uid=sop, series_instance_uid="1.2.3.4.9",
                               sr_path=sr_path))
    assert backfill_report_sr_index(database.sessions, store) == 1
    assert backfill_report_sr_index(database.sessions, store) == 0
    with database.sessions() as session:
        rows = {r.sr_path: r for r in session.scalars(select(Report))}
        kept, lost = rows["sr/kept.dcm"], rows["sr/lost.dcm"]
        assert (kept.sr_series_number, kept.sr_series_description, kept.sr_instance_number,
                kept.sr_completion_flag, kept.sr_verification_flag, kept.sr_content_date,
                kept.sr_content_time) == (9001, "AI DRAFT - UNVERIFIED", 1, "PARTIAL",
                                          "UNVERIFIED", "20261205", "063000")
        assert lost.sr_completion_flag is None and lost.sr_series_number is None


def test_downgrade_below_the_newest_revisions_keeps_reports_exports_and_users(
        database: Database) -> None:
    """Revisions 0016 to 0014 down with rows that reference reports and users (an export
    of an amended report, a personal token, an audit event): their columns go, the rows
    stay; up again, the models load them."""
    now = dt.datetime.now(dt.UTC)
    with database.sessions.begin() as session:
        user = User(username="mcurie", display_name="Curie^Marie", password_hash="!",
                    role=Role.RADIOLOGIST, language="fr-FR")
        study = Study(study_instance_uid="1.2.3.4", patient_id="PID-1")
        session.add_all([user, study])
        session.flush()
        report = Report(study_id=study.id, state=ReportState.FINAL, findings="F",
                        impression="I", amendment_reason="wrong side named")
        session.add(report)
        session.flush()
        session.add(Export(report_id=report.id, destination_ae="PACS"))
        session.flush()
        session.add(AccessToken(user_id=user.id, token_hash="0" * 64, label="viewer",
                                scopes=["dicomweb-read"], created_at=now,
                                expires_at=now + dt.timedelta(days=1)))
        session.add(AuditEvent(at=now, actor="mcurie", user_id=user.id,
                               action="report_amended", object_type="report",
                               object_id=str(report.id)))
        ids = (user.id, report.id)

    _migrate(database, "0013", down=True)

    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM exports")).scalar_one() == 1
        assert connection.execute(text("SELECT findings FROM reports")).scalar_one() == "F"
        assert connection.execute(text("SELECT username FROM users")).scalar_one() == "mcurie"
    upgrade(database.engine)
    with database.sessions() as session:
        assert session.get_one(User, ids[0]).language is None
        assert session.get_one(Report, ids[1]).amendment_reason is None
