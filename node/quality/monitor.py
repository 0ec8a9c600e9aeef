"""Live agreement at sign-off: label the signed text, record agreement, raise the alert.

:func:`record_signoff_agreement` runs inside the sign-off transaction, in a savepoint: a
failure to label or record is logged and never stops the signature.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy.orm import Session

from node.config import QualitySettings
from node.db.models import Report
from node.logs import log_event
from node.quality.labels import (
    Labeler,
    default_labeler,
    labels_from_json,
    labels_to_json,
    report_text,
)
from node.quality.records import ModelKey, ObservationWindow, record_agreement, window_stats

logger = logging.getLogger(__name__)


def agreement_since(now: dt.datetime, quality: QualitySettings) -> dt.datetime:
    """Start of the agreement window that ends at ``now``."""
    return now - dt.timedelta(days=quality.agreement_window_days)


def current_windows(session: Session, model: ModelKey, now: dt.datetime,
                    quality: QualitySettings) -> list[ObservationWindow]:
    """Agreement of ``model`` per observation over the window ending at ``now``."""
    return window_stats(session, agreement_since(now, quality),
                        threshold=quality.agreement_threshold,
                        min_reports=quality.agreement_min_reports, model=model)


def _log_changes(before: list[ObservationWindow], after: list[ObservationWindow],
                 quality: QualitySettings, final: Report) -> None:
    was_low = {w.observation for w in before if w.low}
    for window in after:
        if window.low and window.observation not in was_low:
            log_event(logger, logging.WARNING, "observation_agreement_low",
                      observation=window.observation.value, model_name=window.model.name,
                      model_version=window.model.version,
                      agreement=round(window.counts.agreement or 0.0, 4),
                      reports=window.counts.reports, threshold=quality.agreement_threshold,
                      window_days=quality.agreement_window_days, report_id=final.id)
        elif not window.low and window.observation in was_low:
            log_event(logger, logging.INFO, "observation_agreement_recovered",
                      observation=window.observation.value, model_name=window.model.name,
                      model_version=window.model.version,
                      agreement=round(window.counts.agreement or 0.0, 4),
                      reports=window.counts.reports, report_id=final.id)


def record_signoff_agreement(session: Session, draft: Report, final: Report,
                             quality: QualitySettings,
                             labeler: Labeler | None = None) -> list[ObservationWindow] | None:
    """Label the signed report and record its agreement with the draft.

    The draft's stored labels are used (labelled now when it has none). A warning
    ``observation_agreement_low`` is logged for each observation whose agreement falls
    below the threshold with this signature; ``observation_agreement_recovered`` when it
    rises back. Log events carry ids and figures only.

    Parameters
    ----------
    session
        The sign-off's session (flushed, not committed).
    draft, final
        The signed draft and the FINAL report made from it (flushed).
    quality
        Window, threshold and minimum number of reports.
    labeler
        The CheXpert labeler; the node's own by default.

    Returns
    -------
    list of ObservationWindow or None
        The model's agreement after this signature, or ``None`` when it could not be
        recorded (logged as ``agreement_not_recorded``).
    """
    if final.signed_at is None:
        raise ValueError("the report is not signed")
    try:
        with session.begin_nested():
            label = labeler or default_labeler(quality.labeler_rules_dir)
            draft_labels = (labels_from_json(draft.labels) if draft.labels
                            else label(report_text(draft.findings, draft.impression)))
            if not draft.labels:
                draft.labels = labels_to_json(draft_labels)
            final_labels = label(report_text(final.findings, final.impression))
            final.labels = labels_to_json(final_labels)
            model = ModelKey.of(draft)
            before = current_windows(session, model, final.signed_at, quality)
            record_agreement(session, draft, final, draft_labels, final_labels)
            after = current_windows(session, model, final.signed_at, quality)
    except Exception as exc:  # monitoring must never stop a signature
        log_event(logger, logging.WARNING, "agreement_not_recorded", report_id=final.id,
                  draft_report_id=draft.id, error=type(exc).__name__)
        return None
    _log_changes(before, after, quality, final)
    return after


__all__ = ["agreement_since", "current_windows", "record_signoff_agreement"]
