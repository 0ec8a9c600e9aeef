"""``radnode worker``: a Celery worker configured for drafting on one GPU."""

from __future__ import annotations

import argparse
import os
import sys

from node.config import load_settings
from node.logs import configure_logging


def _worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.logging)
    if not settings.broker.url:
        print("radnode worker needs [broker] url (redis://...); "
              "with the embedded default, `radnode serve` drafts in-process.")
        return 2
    from workers.context import bundle_problem, preload_model

    # A worker that cannot draft never takes a task: the bundle is checked and the model
    # loaded before the worker consumes (one line naming the path on failure, exit 3).
    problem = bundle_problem(settings.model.bundle) or preload_model()
    if problem is not None:
        print(f"radnode worker: {problem}", file=sys.stderr)
        return 3
    from workers.celery_app import create_celery_app

    app = create_celery_app(settings.broker)
    queues = [settings.broker.draft_queue]
    concurrency = args.concurrency or settings.worker.concurrency
    # The job context reads its settings again in this process: the decode engine gets one
    # slot per task thread.
    os.environ["RADNODE_WORKER__CONCURRENCY"] = str(concurrency)
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        # Threads share one loaded model per process (one process per GPU); the
        # model loads on the first task, never in a parent that forks.
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--hostname=radnode-draft-{args.name}@%h",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={settings.logging.level}",
    ]
    app.worker_main(argv)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker`` to the ``radnode`` parser."""
    worker = commands.add_parser("worker", help="run a drafting worker (Celery, Redis broker)")
    worker.add_argument("--concurrency", type=int, default=0,
                        help="tasks at once (default: [worker] concurrency)")
    worker.add_argument("--name", default="1", help="worker name, unique per host")
    worker.set_defaults(handler=_worker)
