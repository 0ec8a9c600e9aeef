"""Idempotent insertion of export rows."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node.db.models import Export


def insert_missing_exports(session: Session, rows: list[dict[str, object]]) -> set[int]:
    """Insert the export rows that do not exist yet; return the new ids.

    Rows are unique per report, destination AE title and kind; existing rows are left as
    they are (concurrent callers insert each row once).
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        statement = (
            module.insert(Export)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["report_id", "destination_ae", "kind"])
            .returning(Export.id)
        )
        return set(session.scalars(statement))
    new_ids: set[int] = set()
    for row in rows:  # other databases: one savepoint per row
        export = Export(**row)
        try:
            with session.begin_nested():
                session.add(export)
                session.flush()
        except IntegrityError:
            continue
        new_ids.add(export.id)
    return new_ids


__all__ = ["insert_missing_exports"]
