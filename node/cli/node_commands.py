"""Subcommands that run or inspect the node: serve, db, studies."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import threading
from typing import Any

from sqlalchemy import func, select

from node.cli.startup import (
    check_broker,
    check_bundle,
    check_database,
    check_port,
    database_description,
    summary_lines,
)
from node.config import ConfigError, load_settings
from node.db.engine import Database
from node.db.migrate import current_revision, upgrade
from node.db.models import Instance, Study
from node.db.types import utcnow
from node.listener_processes import ListenerProcessError
from node.logs import configure_logging, log_event
from node.runtime import NodeServices

logger = logging.getLogger("node.cli")


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.logging)
    check_database(settings)
    check_broker(settings)
    bundle = check_bundle(settings, required=not settings.broker.url)
    check_port("[dicom] port", settings.dicom.bind_address, settings.dicom.port)
    check_port("[web] port", settings.web.host, settings.web.port)
    services = NodeServices.build(settings, with_web=True)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: Any) -> None:
        log_event(logger, logging.INFO, "shutdown_requested", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        services.start()
    except OSError as exc:  # a port taken between the check and the start
        services.stop()
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from exc
    except ListenerProcessError as exc:
        services.stop()
        raise ConfigError(f"a DICOM listener process did not start: {exc}") from exc
    web_port = services.web.port if services.web else None
    print("\n".join(summary_lines("serve", settings, bundle, dicom_port=services.listener.port,
                                   web_port=web_port)), flush=True)
    log_event(logger, logging.INFO, "node_ready", dicom_port=services.listener.port,
              web_port=web_port, ae_title=settings.dicom.ae_title,
              listener_processes=settings.dicom.listener_processes,
              model=bundle.describe() if bundle else None)
    try:
        stop.wait()
    finally:
        services.stop()
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.logging)
    database = Database.from_settings(settings)
    upgrade(database.engine, args.revision)
    print(f"{database_description(settings)} at revision {current_revision(database.engine)}")
    return 0


def _age(since: dt.datetime) -> str:
    seconds = int((utcnow() - since).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def study_rows(database: Database, limit: int) -> list[dict[str, Any]]:
    """Return the newest studies with state and instance count.

    Parameters
    ----------
    database
        Where to read.
    limit
        How many studies at most, newest activity first.
    """
    counts = (
        select(Instance.study_id, func.count(Instance.id).label("n"))
        .group_by(Instance.study_id)
        .subquery()
    )
    query = (
        select(Study, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.study_id == Study.id)
        .order_by(Study.last_received_at.desc())
        .limit(limit)
    )
    with database.sessions() as session:
        return [
            {
                "id": study.id,
                "study_uid": study.study_instance_uid,
                "state": study.state.name,
                "state_reason": study.state_reason,
                "instances": int(count),
                "first_received_at": study.first_received_at.isoformat(),
                "last_received_at": study.last_received_at.isoformat(),
                "age": _age(study.first_received_at),
            }
            for study, count in session.execute(query)
        ]


def _studies(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    rows = study_rows(database, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'STATE':<10} {'INST':>4} {'AGE':>5}  STUDY UID  (reason)")
    for row in rows:
        reason = f"  ({row['state_reason']})" if row["state_reason"] else ""
        print(f"{row['state']:<10} {row['instances']:>4} {row['age']:>5}  "
              f"{row['study_uid']}{reason}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add serve, db and studies to the ``radnode`` parser."""
    serve = commands.add_parser("serve", help="run the node: DICOM listener, assembly, "
                                 "drafting, exports and the web app")
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_upgrade.set_defaults(handler=_db_upgrade)

    studies = commands.add_parser("studies", help="list studies with their states")
    studies.add_argument("--json", action="store_true", help="print JSON")
    studies.add_argument("--limit", type=int, default=100)
    studies.set_defaults(handler=_studies)
