"""Retention: remove received images once their study's report is signed and delivered.

A study's image files are removed when all of these hold:

* the study is SIGNED and its newest report version is a FINAL report (signed, with its SR
  written);
* that report has at least one export and every one of its exports is SENT;
* no drafting job of the study is QUEUED, RUNNING or RETRYING;
* ``keep_images_days`` have passed since the later of the signature and the last delivery,
  and since the image was received (an image that arrives for a study already signed is
  kept for the full period too).

Only image files go. Report SRs (the node's own, and SR instances it received), every
database row and the audit trail stay; each removed instance is marked with ``purged_at``,
and each study gets one ``images_purged`` audit event. A pass is idempotent: marked
instances are never looked at again, and a pass interrupted between deleting files and
committing finds the same study again and completes it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from node.config import RetentionSettings
from node.db.models import AuditEvent, Export, Instance, Job, Report, Study
from node.db.types import utcnow
from node.logs import log_event
from node.periodic import PeriodicThread
from node.states import DELIVERED_EXPORT_STATES, JobState, ReportState, StudyState
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: Structured Report SOP classes share this prefix; their files are never removed.
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Job states that still need the study's images.
PENDING_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)
#: Actor name of the clean-up's audit events.
RETENTION_ACTOR = "retention"


@dataclass(frozen=True)
class PurgedStudy:
    """What one pass removed (or, in a dry run, would remove) from one study."""

    study_id: int
    study_instance_uid: str
    instances: int
    bytes: int
    eligible_since: dt.datetime
    """When the report was signed and delivered (the retention clock's start)."""


@dataclass(frozen=True)
class RetentionReport:
    """The outcome of one clean-up pass."""

    dry_run: bool
    cutoff: dt.datetime
    studies: tuple[PurgedStudy, ...]

    @property
    def instances(self) -> int:
        """Image instances removed (or to be removed) in this pass."""
        return sum(study.instances for study in self.studies)

    @property
    def bytes(self) -> int:
        """Bytes freed (or to be freed) in this pass."""
        return sum(study.bytes for study in self.studies)


def _latest_report(session: Session, study_id: int) -> Report | None:
    return session.scalars(
        select(Report).where(Report.study_id == study_id).order_by(Report.id.desc()).limit(1)
    ).first()


def eligible_since(session: Session, study: Study) -> dt.datetime | None:
    """When ``study`` became eligible for clean-up, or ``None`` while it is not.

    Parameters
    ----------
    session
        A database session (only read from).
    study
        The study to check.

    Returns
    -------
    datetime or None
        The later of the final report's signature and its last delivery; ``None`` when the
        study is not signed, its newest report is not a written FINAL, an export of it is
        missing or undelivered, or a drafting job is pending.
    """
    if study.state != StudyState.SIGNED:
        return None
    report = _latest_report(session, study.id)
    if (report is None or report.state != ReportState.FINAL or report.signed_at is None
            or report.sr_path is None):
        return None
    exports = session.scalars(select(Export).where(Export.report_id == report.id)).all()
    if not exports or any(e.state not in DELIVERED_EXPORT_STATES or e.sent_at is None
                          for e in exports):
        return None
    pending = session.scalar(select(exists().where(
        Job.study_id == study.id, Job.state.in_(PENDING_JOB_STATES))))
    if pending:
        return None
    return max([report.signed_at, *(e.committed_at or e.sent_at for e in exports
                                    if e.sent_at is not None)])


def _stored_images(session: Session, study_id: int, cutoff: dt.datetime) -> list[Instance]:
    """The study's image files received by ``cutoff`` and not removed yet.

    An image received later (e.g. for a study already signed) waits ``keep_images_days``
    from its own arrival.
    """
    return list(session.scalars(
        select(Instance).where(
            Instance.study_id == study_id,
            Instance.purged_at.is_(None),
            Instance.received_at <= cutoff,
            ~Instance.sop_class_uid.startswith(SR_SOP_CLASS_PREFIX),
            ~exists().where(Report.sr_path == Instance.path),
        ).order_by(Instance.id)
    ))


class RetentionService:
    """Finds studies due for clean-up and removes their image files.

    Parameters
    ----------
    settings
        ``[retention]``: whether the periodic pass runs, how long images are kept.
    sessions
        The node's database sessions.
    store
        Where the image files live.
    """

    def __init__(self, settings: RetentionSettings, sessions: sessionmaker[Session],
                 store: InstanceStore) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self._periodic = PeriodicThread("retention", settings.period_seconds, self._periodic_pass)

    def _candidates(self, session: Session, cutoff: dt.datetime) -> list[int]:
        """Signed studies that still hold image files received before ``cutoff`` and had a
        report delivered before it, oldest signature first (each is checked in full
        afterwards)."""
        still_stored = exists().where(
            Instance.study_id == Study.id, Instance.purged_at.is_(None),
            Instance.received_at <= cutoff,
            ~Instance.sop_class_uid.startswith(SR_SOP_CLASS_PREFIX))
        delivered = exists().where(
            Report.study_id == Study.id, Report.signed_at <= cutoff,
            Export.report_id == Report.id, Export.state.in_(DELIVERED_EXPORT_STATES),
            Export.sent_at <= cutoff)
        signed_at = (select(func.max(Report.signed_at)).where(Report.study_id == Study.id)
                     .correlate(Study).scalar_subquery())
        return list(session.scalars(
            select(Study.id).where(Study.state == StudyState.SIGNED, still_stored, delivered)
            .order_by(signed_at, Study.id)
        ))

    def run(self, *, dry_run: bool = False, now: dt.datetime | None = None) -> RetentionReport:
        """One clean-up pass over at most ``batch_size`` due studies.

        Parameters
        ----------
        dry_run
            Only report what would be removed; change nothing and audit nothing.
        now
            The time to measure ``keep_images_days`` from (default: the current time).

        Returns
        -------
        RetentionReport
            The studies removed (or due, in a dry run) with instance and byte counts.
        """
        now = now or utcnow()
        cutoff = now - dt.timedelta(days=self.settings.keep_images_days)
        done: list[PurgedStudy] = []
        with self.sessions() as session:
            candidates = self._candidates(session, cutoff)
        for study_id in candidates:
            if len(done) >= self.settings.batch_size:
                break
            purged = self._purge_study(study_id, cutoff, now, dry_run=dry_run)
            if purged is not None:
                done.append(purged)
        report = RetentionReport(dry_run, cutoff, tuple(done))
        if done:
            log_event(logger, logging.INFO, "retention_pass", dry_run=dry_run,
                      studies=len(done), instances=report.instances, bytes=report.bytes)
        return report

    def _purge_study(self, study_id: int, cutoff: dt.datetime, now: dt.datetime, *,
                     dry_run: bool) -> PurgedStudy | None:
        """Check one study again under a row lock and remove its images if it is due."""
        with self.sessions.begin() as session:
            study = session.scalars(
                select(Study).where(Study.id == study_id).with_for_update()).first()
            if study is None:
                return None
            since = eligible_since(session, study)
            if since is None or since > cutoff:
                return None
            images = _stored_images(session, study.id, cutoff)
            if not images:
                return None
            purged = PurgedStudy(study.id, study.study_instance_uid, len(images),
                                 sum(i.size_bytes for i in images), since)
            if dry_run:
                return purged  # nothing was changed: the commit only ends the read
            for instance in images:
                self.store.remove(instance.path)
                instance.purged_at = now
            session.add(AuditEvent(
                at=now, actor=RETENTION_ACTOR, action="images_purged", object_type="study",
                object_id=str(study.id), study_id=study.id,
                details={"instances": purged.instances, "bytes": purged.bytes,
                         "keep_images_days": self.settings.keep_images_days,
                         "eligible_since": since.isoformat()},
            ))
        log_event(logger, logging.INFO, "study_images_purged", study_id=study_id,
                  instances=purged.instances, bytes=purged.bytes)
        return purged

    def _periodic_pass(self) -> bool:
        report = self.run()
        return len(report.studies) >= self.settings.batch_size

    def start(self) -> None:
        """Run a pass every ``period_seconds`` in a background thread (when enabled)."""
        if self.settings.enabled:
            self._periodic.start()

    def stop(self) -> None:
        """Stop the background thread after its current pass."""
        self._periodic.stop()


__all__ = [
    "PurgedStudy",
    "RetentionReport",
    "RetentionService",
    "eligible_since",
]
