"""Agreement rows in the database: written at sign-off, read back over windows.

Each signed draft adds one :class:`~node.db.models.ObservationAgreement` row per CheXpert
observation. Windows are computed by grouping rows in SQL by model, observation and the
two mentions (at most 16 groups per observation), then counted with
:mod:`node.quality.agreement`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from node.db.models import ObservationAgreement, Report
from node.observations import Observation, ReportLabels
from node.quality.agreement import AgreementCounts, pairs_of

#: Recorded for a draft that does not name its model.
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True, order=True)
class ModelKey:
    """A drafting model: name and version, as on the draft's report row."""

    name: str
    version: str

    @classmethod
    def of(cls, report: Report) -> ModelKey:
        """The model that wrote ``report``."""
        return cls(report.model_name or UNKNOWN_MODEL, report.model_version or UNKNOWN_MODEL)


@dataclass(frozen=True)
class ObservationWindow:
    """Agreement of one observation for one model over a window."""

    model: ModelKey
    observation: Observation
    counts: AgreementCounts
    low: bool
    """Agreement is below the threshold with enough reports: the alert is on."""


def record_agreement(session: Session, draft: Report, final: Report,
                     draft_labels: ReportLabels,
                     final_labels: ReportLabels) -> list[ObservationAgreement]:
    """Add one agreement row per observation for a signed draft (flushed, not committed).

    Parameters
    ----------
    session
        The sign-off's session.
    draft
        The draft that was signed.
    final
        The signed report (flushed: it has an id and ``signed_at``).
    draft_labels, final_labels
        Labels of the two texts.

    Raises
    ------
    ValueError
        If ``final`` has no id or no signature time.
    """
    if final.id is None or final.signed_at is None:
        raise ValueError("the signed report must be flushed and have a signature time")
    model = ModelKey.of(draft)
    rows = [
        ObservationAgreement(
            draft_report_id=draft.id, final_report_id=final.id, model_name=model.name,
            model_version=model.version, observation=observation, draft_mention=draft_mention,
            final_mention=final_mention, signed_at=final.signed_at,
        )
        for observation, (draft_mention, final_mention) in pairs_of(draft_labels,
                                                                    final_labels).items()
    ]
    session.add_all(rows)
    session.flush()
    return rows


def _model_filter(model: ModelKey | None) -> list[ColumnElement[bool]]:
    if model is None:
        return []
    return [ObservationAgreement.model_name == model.name,
            ObservationAgreement.model_version == model.version]


def window_counts(session: Session, since: dt.datetime, *,
                  model: ModelKey | None = None,
                  ) -> dict[ModelKey, dict[Observation, AgreementCounts]]:
    """Per model and observation, counts over reports signed since ``since``.

    Every model with a report in the window gets all 14 observations.
    """
    row = ObservationAgreement
    query = (select(row.model_name, row.model_version, row.observation, row.draft_mention,
                    row.final_mention, func.count(row.id))
             .where(row.signed_at >= since, *_model_filter(model))
             .group_by(row.model_name, row.model_version, row.observation, row.draft_mention,
                       row.final_mention))
    result: dict[ModelKey, dict[Observation, AgreementCounts]] = {}
    for name, version, observation, draft, final, count in session.execute(query):
        per_model = result.setdefault(ModelKey(name, version),
                                      {o: AgreementCounts() for o in Observation})
        per_model[observation] = per_model[observation].add(draft, final, int(count))
    return result


def window_stats(session: Session, since: dt.datetime, *, threshold: float,
                 min_reports: int, model: ModelKey | None = None) -> list[ObservationWindow]:
    """Agreement per model and observation since ``since``, with the alert state.

    Models are in name and version order, observations in CheXpert order.
    """
    counts = window_counts(session, since, model=model)
    return [ObservationWindow(key, observation, c, c.is_low(threshold, min_reports))
            for key in sorted(counts) for observation, c in counts[key].items()]


def _day_expression(session: Session) -> ColumnElement[object]:
    """The UTC calendar day of ``signed_at`` (PostgreSQL converts from its session zone)."""
    column = ObservationAgreement.signed_at
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


DailySeries = dict[Observation, list[float | None]]
"""Per observation, one agreement value per day (``None`` on a day without reports)."""


def daily_agreement(session: Session, model: ModelKey, days: int,
                    now: dt.datetime) -> tuple[list[dt.date], DailySeries]:
    """Agreement of each observation per UTC day, for the last ``days`` days of ``model``.

    Returns
    -------
    days, series
        The days, oldest first, and per observation one value per day (``None`` on a day
        without signed reports). Observations without any report in the period are left
        out.
    """
    today = now.astimezone(dt.UTC).date()
    calendar = [today - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    start = dt.datetime.combine(calendar[0], dt.time(), tzinfo=dt.UTC)
    row = ObservationAgreement
    day = _day_expression(session)
    query = (select(day, row.observation, row.draft_mention, row.final_mention,
                    func.count(row.id))
             .where(row.signed_at >= start, *_model_filter(model))
             .group_by(day, row.observation, row.draft_mention, row.final_mention))
    counts: dict[tuple[dt.date, Observation], AgreementCounts] = {}
    for value, observation, draft, final, count in session.execute(query):
        when = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        key = (when, observation)
        counts[key] = counts.get(key, AgreementCounts()).add(draft, final, int(count))
    series: DailySeries = {}
    for observation in Observation:
        values = [counts[(d, observation)].agreement if (d, observation) in counts else None
                  for d in calendar]
        if any(v is not None for v in values):
            series[observation] = values
    return calendar, series


def latest_model(session: Session) -> ModelKey | None:
    """The model of the most recently signed draft, if any."""
    row = session.execute(
        select(ObservationAgreement.model_name, ObservationAgreement.model_version)
        .order_by(ObservationAgreement.signed_at.desc(), ObservationAgreement.id.desc())
        .limit(1)).first()
    return ModelKey(row[0], row[1]) if row else None


__all__ = [
    "DailySeries",
    "UNKNOWN_MODEL",
    "ModelKey",
    "ObservationWindow",
    "daily_agreement",
    "latest_model",
    "record_agreement",
    "window_counts",
    "window_stats",
]
