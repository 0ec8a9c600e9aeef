"""Matching Query/Retrieve keys against the index: patients, studies, series, instances.

One matching engine serves the DIMSE Query/Retrieve SCP (:mod:`node.dicom.qr`) and the
DICOMweb QIDO-RS and WADO-RS endpoints (:mod:`node.web.dicomweb`). It reads only the
database: :class:`~node.db.models.Study` rows, :class:`~node.db.models.Instance` rows, and
the SR of every :class:`~node.db.models.Report` that has been written, which counts as
an instance of its own series (Modality ``SR``, SOP class Comprehensive SR).

Matching follows DICOM PS3.4 C.2.2.2:

* an empty value, or ``*`` alone, matches everything (universal matching);
* text keys match a single value exactly (case-sensitive) or with the wildcards ``*``
  (any run of characters) and ``?`` (one character); person names (PN) match without
  regard to case (ASCII letters only on SQLite);
* date (DA) and time (TM) keys match a single value or a range ``A-B``, ``-B``, ``A-``;
* UID keys match a single UID or a list of UIDs (``\\``-separated);
* numeric keys (IS, US) match a single integer;
* ``ModalitiesInStudy`` matches a study having a series of any of the listed modalities.

A stored entity whose attribute is empty matches only universal matching.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    SQLColumnExpression,
    String,
    and_,
    cast,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import Subquery

from node.db.models import Instance, Report, Study
from node.dicom.qr_keys import (
    COMPREHENSIVE_SR,
    SUPPORTED_KEYS,
    Match,
    Matching,
    Query,
    QueryError,
    QueryLevel,
    StoredObject,
)

#: Larger than any series or instance number: sorts empty numbers last on every backend.
_LAST = 2**31 - 1


# -- value parsing ------------------------------------------------------------------------

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _is_universal(value: str) -> bool:
    return value.strip() in ("", "*")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _glob_pattern(value: str) -> str:
    return value.replace("[", "[[]")


def _range(value: str, pattern: re.Pattern[str], keyword: str) -> tuple[str | None, str | None]:
    """Split ``A-B``, ``-B``, ``A-`` or ``A`` into bounds; validate each.

    Error messages name the key, never the value (which may be patient data).
    """
    low, dash, high = value.partition("-")
    bounds = (low.strip() or None, high.strip() or None) if dash else (value, value)
    if bounds == (None, None):
        raise QueryError(f"{keyword}: empty range")
    for bound in bounds:
        if bound is not None and not pattern.match(bound):
            raise QueryError(f"{keyword}: malformed value or range")
    return bounds


def _integer(value: str, keyword: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise QueryError(f"{keyword}: needs an integer") from None


# -- conditions -----------------------------------------------------------------------------


def _text_condition(
    column: SQLColumnExpression[Any], value: str, dialect: str, *, ignore_case: bool
) -> ColumnElement[bool]:
    value = value.strip()
    if not _has_wildcard(value):
        if ignore_case:
            return func.lower(column) == value.lower()
        return column == value
    if ignore_case:
        return func.lower(column).like(_like_pattern(value.lower()), escape="\\")
    if dialect == "sqlite":  # SQLite's LIKE ignores case; GLOB does not
        return column.op("GLOB", is_comparison=True)(_glob_pattern(value))
    return column.like(_like_pattern(value), escape="\\")


def _condition(
    keyword: str, column: SQLColumnExpression[Any], value: str, dialect: str
) -> ColumnElement[bool] | None:
    """The SQL condition of one key, or ``None`` for universal matching."""
    if _is_universal(value):
        return None
    matching = SUPPORTED_KEYS[keyword].matching
    if matching in (Matching.TEXT, Matching.PERSON):
        values = [v for v in value.split("\\") if v.strip()]
        ignore_case = matching is Matching.PERSON
        return or_(*(_text_condition(column, v, dialect, ignore_case=ignore_case)
                     for v in values))
    if matching is Matching.UID:
        uids = [v.strip() for v in value.split("\\") if v.strip()]
        if any(_has_wildcard(uid) for uid in uids):
            raise QueryError(f"{keyword} takes no wildcards")
        return column.in_(uids)
    if matching is Matching.NUMBER:
        if _has_wildcard(value):
            raise QueryError(f"{keyword} takes no wildcards")
        return column == _integer(value, keyword)
    if matching is Matching.DATE:
        low, high = _range(value.strip(), _DATE, keyword)
        parts = [column >= low] if low else []
        return and_(*parts, *([column <= high] if high else []))
    if matching is Matching.TIME:
        low, high = _range(value.strip(), _TIME, keyword)
        parts = [column >= low] if low else []
        # "1200" as an upper bound includes 12:00:59.999999
        return and_(*parts, *([column <= high + "999999.999999"[len(high):]] if high else []))
    return None


def _conditions(
    filters: Mapping[str, str],
    columns: Mapping[str, SQLColumnExpression[Any]],
    dialect: str,
) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    for keyword, value in filters.items():
        column = columns.get(keyword)
        if column is None:
            continue
        condition = _condition(keyword, column, value, dialect)
        if condition is not None:
            found.append(condition)
    return found


# -- the tables -------------------------------------------------------------------------------

_STUDY_COLUMNS: dict[str, SQLColumnExpression[Any]] = {
    "PatientID": Study.patient_id,
    "PatientName": Study.patient_name,
    "PatientBirthDate": Study.patient_birth_date,
    "PatientSex": Study.patient_sex,
    "StudyInstanceUID": Study.study_instance_uid,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "AccessionNumber": Study.accession_number,
    "StudyID": Study.study_id_text,
    "StudyDescription": Study.study_description,
    "ReferringPhysicianName": Study.referring_physician,
}

#: Object column per series or image keyword.
_OBJECT_FIELDS: dict[str, str] = {
    "SeriesInstanceUID": "series_instance_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part",
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
    "Rows": "rows",
    "Columns": "columns",
    "ViewPosition": "view_position",
    "ImageLaterality": "image_laterality",
    "AvailableTransferSyntaxUID": "transfer_syntax_uid",
    "CompletionFlag": "completion_flag",
    "VerificationFlag": "verification_flag",
    "ContentDate": "content_date",
    "ContentTime": "content_time",
}
_SERIES_FIELDS = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined")


def stored_objects() -> Subquery:
    """Indexed instances and written report SRs, as one relation of instance rows.

    Instances whose file the retention clean-up removed are left out.

    An SR that was also received as an instance is listed once, as that instance.
    """
    instances = select(
        Instance.study_id.label("study_id"),
        Instance.series_instance_uid.label("series_instance_uid"),
        Instance.sop_instance_uid.label("sop_instance_uid"),
        Instance.sop_class_uid.label("sop_class_uid"),
        Instance.modality.label("modality"),
        Instance.series_number.label("series_number"),
        Instance.series_description.label("series_description"),
        Instance.body_part.label("body_part"),
        Instance.instance_number.label("instance_number"),
        Instance.rows.label("rows"),
        Instance.columns.label("columns"),
        Instance.view_position.label("view_position"),
        Instance.image_laterality.label("image_laterality"),
        Instance.transfer_syntax_uid.label("transfer_syntax_uid"),
        Instance.path.label("path"),
        literal(False, Boolean).label("is_report"),
        cast(null(), String).label("completion_flag"),
        cast(null(), String).label("verification_flag"),
        cast(null(), String).label("content_date"),
        cast(null(), String).label("content_time"),
    ).where(Instance.purged_at.is_(None))
    no_text = cast(null(), String)
    no_number = cast(null(), Integer)
    reports = select(
        Report.study_id,
        Report.series_instance_uid,
        Report.sop_instance_uid,
        literal(COMPREHENSIVE_SR, String),
        literal("SR", String),
        Report.sr_series_number,
        Report.sr_series_description,
        no_text,
        Report.sr_instance_number,
        no_number,
        no_number,
        no_text,
        no_text,
        no_text,
        Report.sr_path,
        literal(True, Boolean),
        Report.sr_completion_flag,
        Report.sr_verification_flag,
        Report.sr_content_date,
        Report.sr_content_time,
    ).where(
        Report.sr_path.is_not(None),
        Report.sop_instance_uid.is_not(None),
        Report.series_instance_uid.is_not(None),
        ~exists().where(Instance.sop_instance_uid == Report.sop_instance_uid),
    )
    return union_all(instances, reports).subquery("objects")


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _modalities_condition(value: str, objects: Subquery, dialect: str) -> ColumnElement[bool]:
    wanted = [v.strip() for v in value.split("\\") if v.strip()]
    matches = or_(*(_text_condition(objects.c.modality, v, dialect, ignore_case=False)
                    for v in wanted))
    return exists().where(objects.c.study_id == Study.id, matches)


def _study_conditions(query: Query, dialect: str) -> list[ColumnElement[bool]]:
    top = QueryLevel.PATIENT if query.level is QueryLevel.PATIENT else QueryLevel.STUDY
    columns = {kw: col for kw, col in _STUDY_COLUMNS.items()
               if SUPPORTED_KEYS[kw].level <= top}
    found = _conditions(query.filters, columns, dialect)
    modalities = query.filters.get("ModalitiesInStudy", "")
    if query.level >= QueryLevel.STUDY and not _is_universal(modalities):
        found.append(_modalities_condition(modalities, stored_objects(), dialect))
    return found


def _page(statement: Any, query: Query) -> Any:
    if query.offset:
        statement = statement.offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return statement


def _study_values(study: Study) -> Match:
    return {
        "PatientID": study.patient_id,
        "PatientName": study.patient_name,
        "PatientBirthDate": study.patient_birth_date,
        "PatientSex": study.patient_sex,
        "StudyInstanceUID": study.study_instance_uid,
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "StudyID": study.study_id_text,
        "StudyDescription": study.study_description,
        "ReferringPhysicianName": study.referring_physician,
    }


# -- levels -------------------------------------------------------------------------------------


def _find_patients(session: Session, query: Query, dialect: str) -> list[Match]:
    statement = (
        select(
            Study.patient_id,
            func.max(Study.patient_name),
            func.max(Study.patient_birth_date),
            func.max(Study.patient_sex),
            func.count(Study.id),
        )
        .where(*_study_conditions(query, dialect))
        .group_by(Study.patient_id)
        .order_by(Study.patient_id)
    )
    matches: list[Match] = []
    for patient_id, name, birth_date, sex, studies in session.execute(_page(statement, query)):
        matches.append({
            "PatientID": patient_id,
            "PatientName": name,
            "PatientBirthDate": birth_date,
            "PatientSex": sex,
            "NumberOfPatientRelatedStudies": int(studies),
        })
    if matches and (query.wants("NumberOfPatientRelatedSeries")
                    or query.wants("NumberOfPatientRelatedInstances")):
        _add_patient_counts(session, matches)
    return matches


def _add_patient_counts(session: Session, matches: list[Match]) -> None:
    objects = stored_objects()
    ids = [m["PatientID"] for m in matches if m["PatientID"] is not None]
    which = [Study.patient_id.in_(ids)] if ids else []
    if any(m["PatientID"] is None for m in matches):
        which.append(Study.patient_id.is_(None))
    rows = session.execute(
        select(
            Study.patient_id,
            func.count(objects.c.series_instance_uid.distinct()),
            func.count(),
        )
        .join(objects, objects.c.study_id == Study.id)
        .where(or_(*which))
        .group_by(Study.patient_id)
    )
    counts = {patient_id: (int(series), int(instances)) for patient_id, series, instances in rows}
    for match in matches:
        series, instances = counts.get(match["PatientID"], (0, 0))
        match["NumberOfPatientRelatedSeries"] = series
        match["NumberOfPatientRelatedInstances"] = instances


def _find_studies(session: Session, query: Query, dialect: str) -> list[Match]:
    statement = select(Study).where(*_study_conditions(query, dialect)).order_by(Study.id)
    studies = list(session.scalars(_page(statement, query)))
    matches = [_study_values(study) for study in studies]
    _add_study_aggregates(session, query, [s.id for s in studies], matches)
    return matches


def _add_study_aggregates(
    session: Session, query: Query, study_ids: Sequence[int], matches: list[Match]
) -> None:
    """Fill study counts and ModalitiesInStudy (when wanted) for ``matches`` in order."""
    if not study_ids:
        return
    unique_ids = sorted(set(study_ids))
    objects = stored_objects()
    if query.wants("NumberOfStudyRelatedSeries") or query.wants("NumberOfStudyRelatedInstances"):
        rows = session.execute(
            select(objects.c.study_id, func.count(objects.c.series_instance_uid.distinct()),
                   func.count())
            .where(objects.c.study_id.in_(unique_ids))
            .group_by(objects.c.study_id)
        )
        counts = {study_id: (int(series), int(total)) for study_id, series, total in rows}
        for study_id, match in zip(study_ids, matches, strict=True):
            series, total = counts.get(study_id, (0, 0))
            match["NumberOfStudyRelatedSeries"] = series
            match["NumberOfStudyRelatedInstances"] = total
    if query.wants("ModalitiesInStudy"):
        rows = session.execute(
            select(objects.c.study_id, objects.c.modality)
            .where(objects.c.study_id.in_(unique_ids), objects.c.modality.is_not(None))
            .distinct()
        )
        modalities: dict[int, set[str]] = {}
        for study_id, modality in rows:
            modalities.setdefault(study_id, set()).add(modality)
        for study_id, match in zip(study_ids, matches, strict=True):
            match["ModalitiesInStudy"] = sorted(modalities.get(study_id, ()))


def _studies_by_id(session: Session, study_ids: Iterable[int]) -> dict[int, Study]:
    wanted = sorted(set(study_ids))
    if not wanted:
        return {}
    return {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(wanted)))}


def _find_series(session: Session, query: Query, dialect: str) -> list[Match]:
    objects = stored_objects()
    aggregated: dict[str, ColumnElement[Any]] = {
        keyword: func.max(objects.c[_OBJECT_FIELDS[keyword]]) for keyword in _SERIES_FIELDS
    }
    statement = (
        select(
            Study.id,
            objects.c.series_instance_uid,
            *aggregated.values(),
            func.count(),
        )
        .join(objects, objects.c.study_id == Study.id)
        .where(
            *_study_conditions(query, dialect),
            *_conditions(query.filters,
                         {"SeriesInstanceUID": objects.c.series_instance_uid}, dialect),
        )
        .group_by(Study.id, objects.c.series_instance_uid)
        .order_by(Study.id, func.coalesce(aggregated["SeriesNumber"], _LAST),
                  objects.c.series_instance_uid)
    )
    series_conditions = _conditions(query.filters, aggregated, dialect)
    if series_conditions:
        statement = statement.having(*series_conditions)
    rows = list(session.execute(_page(statement, query)))
    studies = _studies_by_id(session, (row[0] for row in rows))
    matches: list[Match] = []
    for study_id, series_uid, modality, number, description, body_part, count in rows:
        match = _study_values(studies[study_id])
        match.update({
            "SeriesInstanceUID": series_uid,
            "Modality": modality,
            "SeriesNumber": number,
            "SeriesDescription": description,
            "BodyPartExamined": body_part,
            "NumberOfSeriesRelatedInstances": int(count),
        })
        matches.append(match)
    _add_study_aggregates(session, query, [row[0] for row in rows], matches)
    return matches


def _object_statement(query: Query, dialect: str, objects: Subquery) -> Any:
    columns = {kw: objects.c[field] for kw, field in _OBJECT_FIELDS.items()}
    return (
        select(Study.id, Study.study_instance_uid, objects)
        .join(objects, objects.c.study_id == Study.id)
        .where(*_study_conditions(query, dialect),
               *_conditions(query.filters, columns, dialect))
        .order_by(Study.id, objects.c.series_instance_uid,
                  func.coalesce(objects.c.instance_number, _LAST),
                  objects.c.sop_instance_uid)
    )


def _find_instances(session: Session, query: Query, dialect: str) -> list[Match]:
    objects = stored_objects()
    rows = list(session.execute(_page(_object_statement(query, dialect, objects), query)))
    studies = _studies_by_id(session, (row.id for row in rows))
    matches: list[Match] = []
    for row in rows:
        match = _study_values(studies[row.id])
        match.update({kw: getattr(row, column) for kw, column in _OBJECT_FIELDS.items()})
        matches.append(match)
    if matches and query.wants("NumberOfSeriesRelatedInstances"):
        series_uids = sorted({m["SeriesInstanceUID"] for m in matches})
        counts: dict[str, int] = {
            series_uid: int(count) for series_uid, count in session.execute(
                select(objects.c.series_instance_uid, func.count())
                .where(objects.c.series_instance_uid.in_(series_uids))
                .group_by(objects.c.series_instance_uid)
            )
        }
        for match in matches:
            match["NumberOfSeriesRelatedInstances"] = int(counts.get(match["SeriesInstanceUID"], 0))
    _add_study_aggregates(session, query, [row.id for row in rows], matches)
    return matches


_FINDERS = {
    QueryLevel.PATIENT: _find_patients,
    QueryLevel.STUDY: _find_studies,
    QueryLevel.SERIES: _find_series,
    QueryLevel.IMAGE: _find_instances,
}


def find(session: Session, query: Query) -> list[Match]:
    """Return the entities of ``query.level`` that match every filter.

    Parameters
    ----------
    session
        A database session (only read from).
    query
        Level, filters, wanted keys and page.

    Returns
    -------
    list of Match
        One mapping per match, holding the keys of the level and of the levels above
        (see :func:`keys_for_level`); counts and ``ModalitiesInStudy`` only when wanted.

    Raises
    ------
    QueryError
        If a filter value is malformed (a bad date, a wildcard in a UID…).
    sqlalchemy.exc.SQLAlchemyError
        If the database fails.
    """
    return _FINDERS[query.level](session, query, _dialect(session))


def find_objects(session: Session, filters: Mapping[str, str]) -> list[StoredObject]:
    """Return the stored instances (and report SRs) that match ``filters``.

    Parameters
    ----------
    session
        A database session (only read from).
    filters
        Keyword to value, matched as in :func:`find` at the IMAGE level.

    Returns
    -------
    list of StoredObject
        In study, series, instance number order.

    Raises
    ------
    QueryError, sqlalchemy.exc.SQLAlchemyError
        As for :func:`find`.
    """
    query = Query(QueryLevel.IMAGE, filters)
    objects = stored_objects()
    rows = session.execute(_object_statement(query, _dialect(session), objects))
    return [
        StoredObject(
            study_id=row.id,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
            sop_class_uid=row.sop_class_uid,
            transfer_syntax_uid=row.transfer_syntax_uid,
            path=row.path,
            is_report=bool(row.is_report),
        )
        for row in rows
    ]


__all__ = ["find", "find_objects", "stored_objects"]
