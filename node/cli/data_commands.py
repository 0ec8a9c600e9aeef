"""Subcommands over the node's records: ``radnode audit export`` and ``radnode retention run``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.audit_export import (
    AuditExportError,
    AuditFormat,
    check_range,
    iter_events,
    parse_time_bound,
    render_lines,
)
from node.config import load_settings
from node.db.engine import Database
from node.db.models import AuditEvent
from node.db.types import utcnow
from node.logs import configure_logging
from node.retention import RetentionService
from node.storage import InstanceStore

CLI_ACTOR = "cli"


def _audit_export(args: argparse.Namespace) -> int:
    try:
        since = parse_time_bound(args.since, name="--since") if args.since else None
        until = parse_time_bound(args.until, name="--until") if args.until else None
        check_range(since, until)
    except AuditExportError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    fmt = AuditFormat(args.format)
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    out = Path(args.out)
    temporary = out.with_name(f".{out.name}.partial")
    rows = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal rows
        for record in iter_events(database.sessions, since, until):
            rows += 1
            yield record

    try:
        with temporary.open("w", encoding="utf-8", newline="") as handle:
            for chunk in render_lines(counted(), fmt):
                handle.write(chunk)
        temporary.replace(out)
    finally:
        temporary.unlink(missing_ok=True)
    with database.sessions.begin() as session:
        session.add(AuditEvent(
            at=utcnow(), actor=CLI_ACTOR, action="audit_exported", object_type="audit",
            details={"since": since.isoformat() if since else None,
                     "until": until.isoformat() if until else None,
                     "format": fmt.value, "events": rows, "via": "cli"}))
    database.engine.dispose()
    print(f"{rows} audit events written to {out}")
    return 0


def _retention_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.logging)
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    store = InstanceStore(settings.storage.root, min_free_mb=settings.storage.min_free_mb,
                          max_used_percent=settings.storage.max_used_percent)
    service = RetentionService(settings.retention, database.sessions, store)
    report = service.run(dry_run=args.dry_run)
    database.engine.dispose()
    if args.json:
        print(json.dumps({
            "dry_run": report.dry_run, "cutoff": report.cutoff.isoformat(),
            "instances": report.instances, "bytes": report.bytes,
            "studies": [{"study_id": s.study_id, "study_uid": s.study_instance_uid,
                         "instances": s.instances, "bytes": s.bytes,
                         "eligible_since": s.eligible_since.isoformat()}
                        for s in report.studies],
        }, indent=2))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for study in report.studies:
        print(f"{verb} {study.instances} image(s), {study.bytes} bytes: study {study.study_id} "
              f"{study.study_instance_uid}")
    print(f"{verb} {report.instances} image(s) of {len(report.studies)} studies "
          f"({report.bytes} bytes); images kept {settings.retention.keep_images_days:g} days "
          "after sign-off and delivery")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and ``retention`` to the ``radnode`` parser."""
    audit = commands.add_parser("audit", help="the audit trail")
    audit_actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    export = audit_actions.add_parser(
        "export", help="write the audit events of a time range to a file (CSV or JSON Lines)")
    export.add_argument("out", metavar="OUT", help="file to write")
    export.add_argument("--since", help="first time included (ISO 8601; UTC when no offset)")
    export.add_argument("--until", help="first time excluded (ISO 8601; UTC when no offset)")
    export.add_argument("--format", choices=[f.value for f in AuditFormat], default="csv")
    export.set_defaults(handler=_audit_export)

    retention = commands.add_parser("retention", help="clean-up of images after sign-off")
    retention_actions = retention.add_subparsers(dest="retention_command", required=True,
                                                 metavar="ACTION")
    run = retention_actions.add_parser(
        "run", help="remove the images of signed and delivered studies past keep_images_days "
                    "(runs now, also when [retention] enabled = false)")
    run.add_argument("--dry-run", action="store_true",
                     help="list what would be removed; change nothing")
    run.add_argument("--json", action="store_true", help="print JSON")
    run.set_defaults(handler=_retention_run)
