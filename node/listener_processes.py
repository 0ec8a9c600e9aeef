"""Listener processes that share the DICOM port with the main process.

With ``[dicom] listener_processes = N`` above 1, ``radnode serve`` starts N - 1 processes
(``multiprocessing`` with the ``spawn`` method: the main process has threads). Each one
builds its own database engine (no migrations), instance store, ingestor, query/retrieve
service and :class:`~node.dicom.scp.DicomListener`, bound to the main listener's address
and port with ``SO_REUSEPORT``; the kernel hands every new connection to one of the
listening sockets. What a listener process receives goes to the index database and the
storage folder only, the state every other part of the node already works from
(assembly, scheduling and export run in the main process). Admission limits hold for all
the processes together (:mod:`node.dicom.shared_admission`); refusals and storage
commitment reports are written to the database by the process that received them.

The main process

* reports the node ready only once every listener process has reported that it listens,
  and fails to start, stopping the others, when one does not;
* logs a listener process that ends while the node runs, zeroes its admission counts
  and starts another in its place (after a growing pause when starts keep failing);
* stops them with SIGTERM: each stops accepting and closes its associations as
  :meth:`~node.dicom.scp.DicomListener.stop` does, within :data:`STOP_SECONDS`, and is
  killed after that. A listener process also stops by itself when the main process is
  gone (it watches the pipe the main process holds), so none outlives the node.

Log lines name listener processes by their index (1 to N - 1) and process id.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from node.config import Settings
from node.db.engine import Database
from node.dicom.commitment import CommitmentReport, CommitmentReportListener
from node.dicom.ingest import InstanceIngestor
from node.dicom.qr import QueryRetrieveService
from node.dicom.scp import DicomListener
from node.dicom.shared_admission import SharedAdmissionCounts
from node.exports.commitment import CommitmentLedger
from node.logs import configure_logging, log_event
from node.storage import InstanceStore
from workers.inference.dicom_limits import DatasetLimits

logger = logging.getLogger(__name__)

START_SECONDS = 60.0
"""How long a listener process has to report that it listens."""
STOP_SECONDS = 10.0
"""How long a listener process has to close its associations once asked to stop."""
KILL_AFTER_SECONDS = STOP_SECONDS + 5.0
"""When the main process kills a listener process that has not ended after SIGTERM."""
RESTART_PAUSES = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Pause before each further attempt to start a listener process, while starts fail."""


class ListenerProcessError(RuntimeError):
    """A listener process did not start (its port, its configuration, its database)."""


def build_listener(settings: Settings, sessions: sessionmaker[Session], store: InstanceStore,
                   *, record_report: Callable[[CommitmentReport], int] | None = None,
                   shared_admission: SharedAdmissionCounts | None = None) -> DicomListener:
    """The DICOM listener of one process and the services it hands requests to.

    Parameters
    ----------
    settings
        The node's settings.
    sessions
        The process's database sessions.
    store
        The process's instance store.
    record_report
        Records storage commitment reports (a ledger of the process's own when unset).
    shared_admission
        The admission counts of every listener process, when there are several.
    """
    ingestor = InstanceIngestor(store, sessions,
                                DatasetLimits(**settings.dicom.limits.model_dump()))
    query_retrieve = QueryRetrieveService.from_settings(settings, sessions, store)
    commitment = None
    if any(d.storage_commitment for d in settings.destinations):
        if record_report is None:
            ledger = CommitmentLedger(settings.exports,
                                      {d.ae_title: d for d in settings.destinations}, sessions)
            record_report = ledger.record_report
        commitment = CommitmentReportListener(record_report)
    return DicomListener(settings.dicom, ingestor, query_retrieve, commitment,
                         shared_admission=shared_admission)


# -- in the listener process ----------------------------------------------------------------


def _stop_with_parent(stop: threading.Event) -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])  # readable once the main process has gone
        stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_listener_process(settings: Settings, admission: SharedAdmissionCounts, port: int,
                           ready: Connection) -> None:
    """Run one listener process until SIGTERM or the main process's end (the target of
    the processes :class:`ListenerProcesses` starts).

    Parameters
    ----------
    settings
        The node's settings.
    admission
        The shared admission counts, opened on this process's row.
    port
        The port the main listener is bound to.
    ready
        Where to say ``("ready", pid)`` once listening, or ``("failed", reason)``.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    _stop_with_parent(stop)
    configure_logging(settings.logging)
    index = admission.row
    try:
        database = Database.from_settings(settings)
        store = InstanceStore(settings.storage.root, min_free_mb=settings.storage.min_free_mb,
                              max_used_percent=settings.storage.max_used_percent)
        dicom = settings.dicom.model_copy(update={"port": port})
        listener = build_listener(settings.model_copy(update={"dicom": dicom}),
                                  database.sessions, store, shared_admission=admission)
        listener.start()
    except Exception as exc:
        log_event(logger, logging.ERROR, "listener_process_failed", listener_process=index,
                  pid=os.getpid(), error=type(exc).__name__)
        ready.send(("failed", f"{type(exc).__name__}: {exc}"))
        ready.close()
        logging.shutdown()
        os._exit(1)
    ready.send(("ready", os.getpid()))
    ready.close()
    stop.wait()  # SIGTERM's handler, or the main process's end, sets it
    stopper = threading.Thread(target=listener.stop, name="listener-stop", daemon=True)
    stopper.start()
    stopper.join(STOP_SECONDS)
    clean = not stopper.is_alive()
    log_event(logger, logging.INFO if clean else logging.WARNING, "listener_process_stopped",
              listener_process=index, pid=os.getpid(), associations_closed=clean)
    database.engine.dispose()
    logging.shutdown()
    # Association threads still open past the deadline must not hold the exit.
    os._exit(0 if clean else 1)


# -- in the main process ---------------------------------------------------------------------


class ListenerProcesses:
    """Starts, watches, restarts and stops the listener processes beside the main one.

    Parameters
    ----------
    settings
        The node's settings (``[dicom] listener_processes``).
    admission
        The shared admission counts; row 0 is the main process's, one row per listener
        process after it.
    """

    def __init__(self, settings: Settings, admission: SharedAdmissionCounts) -> None:
        self.settings = settings
        self.admission = admission
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, BaseProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._port = 0
        self.restarts = 0
        """Listener processes started in place of one that ended."""

    @property
    def pids(self) -> dict[int, int]:
        """Process id of each running listener process, by index."""
        with self._lock:
            return {row: process.pid for row, process in self._processes.items()
                    if process.pid is not None and process.is_alive()}

    def start(self, port: int) -> None:
        """Start every listener process on ``port`` and wait until each listens.

        Raises
        ------
        ListenerProcessError
            When one of them fails to start; none is left running then.
        """
        self._port = port
        self._stopping.clear()
        deadline = time.monotonic() + START_SECONDS
        started = {row: self._spawn(row) for row in range(1, self.admission.rows)}
        failures: list[str] = []
        for row, (process, ready) in started.items():
            with self._lock:
                self._processes[row] = process
            problem = self._await_ready(process, ready, deadline)
            if problem is not None:
                failures.append(f"listener process {row}: {problem}")
        if failures:
            with self._lock:
                self._processes.clear()
            self._terminate(list(started.values()))
            raise ListenerProcessError("; ".join(failures))
        log_event(logger, logging.INFO, "listener_processes_ready",
                  count=len(started), pids=sorted(p.pid or 0 for p, _ in started.values()))
        self._monitor = threading.Thread(target=self._watch, name="listener-processes",
                                         daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop every listener process (SIGTERM, then SIGKILL after
        :data:`KILL_AFTER_SECONDS`) and wait until each has ended."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
        with self._lock:
            processes = list(self._processes.values())
            self._processes.clear()
        self._terminate([(p, None) for p in processes])

    # -- internals --------------------------------------------------------------------------

    def _spawn(self, row: int) -> tuple[BaseProcess, Connection]:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=serve_listener_process, name=f"radnode-listener-{row}", daemon=True,
            args=(self.settings, self.admission.for_row(row), self._port, writer))
        process.start()
        writer.close()  # the process holds its own end: end of file once it exits
        return process, reader

    def _await_ready(self, process: BaseProcess, ready: Connection,
                     deadline: float) -> str | None:
        """Wait for the process's word; ``None`` once it listens, else why it did not."""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return f"not listening within {START_SECONDS:.0f} s"
                if self._stopping.is_set() and self._monitor is not None:
                    return "the node is stopping"
                if wait([ready, process.sentinel], timeout=min(remaining, 0.5)):
                    break
            message: Any = ready.recv() if ready.poll() else None
        except (EOFError, OSError):
            message = None
        finally:
            ready.close()
        if isinstance(message, tuple) and message and message[0] == "ready":
            return None
        if isinstance(message, tuple) and len(message) == 2 and message[0] == "failed":
            return str(message[1])
        process.join(1.0)
        return f"exited with status {process.exitcode}"

    def _watch(self) -> None:
        failures: dict[int, int] = {}
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {p.sentinel: row for row, p in self._processes.items()}
            ended = wait(list(sentinels), timeout=0.5)
            for sentinel in ended:
                if self._stopping.is_set():
                    return
                row = sentinels[sentinel]  # type: ignore[index]
                try:
                    self._replace(row, failures)
                except Exception:  # keep watching the others; the next try waits longer
                    failures[row] = failures.get(row, 0) + 1
                    logger.exception("listener_process_restart_failed")

    def _replace(self, row: int, failures: dict[int, int]) -> None:
        with self._lock:
            ended = self._processes[row]
        ended.join(1.0)
        log_event(logger, logging.WARNING, "listener_process_exited", listener_process=row,
                  pid=ended.pid, exit_code=ended.exitcode)
        self.admission.clear_row(row)
        pause = RESTART_PAUSES[min(failures.get(row, 0), len(RESTART_PAUSES) - 1)]
        if self._stopping.wait(pause):
            return
        process, ready = self._spawn(row)
        with self._lock:
            self._processes[row] = process
        ended.close()
        problem = self._await_ready(process, ready, time.monotonic() + START_SECONDS)
        if self._stopping.is_set():
            return  # stop() ends it with the others
        self.restarts += 1
        if problem is None:
            failures.pop(row, None)
            log_event(logger, logging.INFO, "listener_process_restarted", listener_process=row,
                      pid=process.pid)
            return
        failures[row] = failures.get(row, 0) + 1
        log_event(logger, logging.ERROR, "listener_process_not_restarted",
                  listener_process=row, reason=problem, attempts=failures[row])
        if process.is_alive():
            process.kill()  # the watcher sees it end and tries again after a pause

    @staticmethod
    def _terminate(processes: list[tuple[BaseProcess, Connection | None]]) -> None:
        for process, _ in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + KILL_AFTER_SECONDS
        for process, _ in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process, ready in processes:
            if process.is_alive():
                log_event(logger, logging.WARNING, "listener_process_killed",
                          listener_process=process.name, pid=process.pid)
                process.kill()
                process.join(5.0)
            if ready is not None:
                ready.close()
            if not process.is_alive():
                process.close()
