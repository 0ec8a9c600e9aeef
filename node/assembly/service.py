"""The assembly loop: quiet-period timers kept in the database.

A study is complete when no instance has arrived for ``quiet_seconds``
(sliding), or at once when it is a single CR/DX image and early stability is
on. Because the deadline is derived from ``last_received_at`` in the
database, a restarted node resumes every timer where it stood.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from node.assembly.selection import InstanceFacts, SelectionDecision, decide
from node.config import AssemblySettings
from node.db.models import AuditEvent, Instance, Study
from node.db.types import utcnow
from node.logs import log_event
from node.periodic import PeriodicThread
from node.states import IgnoreReason, StudyState

logger = logging.getLogger(__name__)

#: Called inside the transaction that makes a study STABLE; may move it on
#: (e.g. create a drafting job). Returns a callback to run after commit.
StableHook = Callable[[Session, Study], Callable[[], None] | None]


class AssemblyService:
    """Promote complete studies from RECEIVING to STABLE or IGNORED.

    Parameters
    ----------
    settings
        Quiet period, early stability and selection rules.
    session_factory
        Database sessions.
    on_stable
        Optional hook for studies selected for drafting.
    """

    def __init__(
        self,
        settings: AssemblySettings,
        session_factory: sessionmaker[Session],
        on_stable: StableHook | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.on_stable = on_stable
        self._periodic = PeriodicThread("assembly", settings.poll_seconds, self._tick_now)

    def _is_due(self, study: Study, now: dt.datetime) -> bool:
        """Whether a RECEIVING study is complete at ``now`` (same rules as the query)."""
        if study.last_received_at <= now - dt.timedelta(seconds=self.settings.quiet_seconds):
            return True
        if not self.settings.early_stable_single_image or len(study.instances) != 1:
            return False
        alone_since = now - dt.timedelta(seconds=self.settings.early_stable_after_seconds)
        if study.last_received_at > alone_since:
            return False
        modalities = {m.upper() for m in self.settings.selection.modalities}
        return (study.instances[0].modality or "").upper() in modalities

    def _due_study_ids(self, session: Session, now: dt.datetime) -> list[int]:
        cutoff = now - dt.timedelta(seconds=self.settings.quiet_seconds)
        quiet = select(Study.id).where(
            Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff
        )
        ids = set(session.scalars(quiet))
        if self.settings.early_stable_single_image:
            modalities = [m.upper() for m in self.settings.selection.modalities]
            alone_since = now - dt.timedelta(seconds=self.settings.early_stable_after_seconds)
            single = (
                select(Study.id)
                .join(Instance, Instance.study_id == Study.id)
                .where(Study.state == StudyState.RECEIVING, Study.last_received_at <= alone_since)
                .group_by(Study.id)
                .having(func.count(Instance.id) == 1)
                .having(func.max(func.upper(Instance.modality)).in_(modalities))
            )
            ids.update(session.scalars(single))
        return sorted(ids)

    def tick(self, now: dt.datetime | None = None) -> list[int]:
        """Evaluate every due study once.

        Parameters
        ----------
        now
            The current time (for tests); defaults to the clock.

        Returns
        -------
        list of int
            Ids of studies that left RECEIVING in this tick.
        """
        now = now or utcnow()
        with self.session_factory() as session:
            due = self._due_study_ids(session, now)
        done: list[int] = []
        for study_id in due:
            if self._complete(study_id, now):
                done.append(study_id)
        return done

    def _complete(self, study_id: int, now: dt.datetime) -> bool:
        after_commit: Callable[[], None] | None = None
        with self.session_factory.begin() as session:
            study = session.get(Study, study_id, with_for_update=True)
            if study is None or study.state != StudyState.RECEIVING:
                return False  # another node process got there first
            if not self._is_due(study, now):
                return False  # an instance arrived since the study was found due
            facts = [
                InstanceFacts(i.sop_class_uid, i.modality, i.body_part, i.view_position,
                              i.series_description)
                for i in study.instances
            ]
            decision = decide(facts, self.settings.selection)
            if decision.draft and not (study.patient_id or "").strip():
                # Nothing to attribute the report to, nor to check arriving instances
                # against: never drafted.
                decision = SelectionDecision(False, IgnoreReason.NO_PATIENT_ID.value,
                                             IgnoreReason.NO_PATIENT_ID)
            study.state = StudyState.STABLE if decision.draft else StudyState.IGNORED
            study.state_reason = decision.reason
            study.stable_at = now
            session.add(
                AuditEvent(
                    at=now,
                    actor="system",
                    action="study_stable" if decision.draft else "study_ignored",
                    object_type="study",
                    object_id=study.study_instance_uid,
                    study_id=study.id,
                    details={"reason": decision.reason, "instances": len(facts)},
                )
            )
            if decision.draft and self.on_stable is not None:
                after_commit = self.on_stable(session, study)
            new_state = study.state
        log_event(
            logger,
            logging.INFO,
            "study_complete",
            study_id=study_id,
            state=new_state.name,
            reason=decision.reason,
            instances=len(facts),
        )
        if after_commit is not None:
            after_commit()
        return True

    def _tick_now(self) -> None:
        self.tick()

    def start(self) -> None:
        """Tick every ``poll_seconds`` in a background thread."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop the loop and wait for the current tick."""
        self._periodic.stop()
