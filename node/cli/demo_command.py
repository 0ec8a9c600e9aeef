"""``radnode demo``: run the node on embedded defaults and draft sample studies."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from node.config import load_settings
from node.jobs.bundle_identity import read_bundle_identity
from node.logs import configure_logging
from node.runtime import NodeServices
from node.states import StudyState

DEMO_ACCOUNTS = (("demo-radiologist", "RADIOLOGIST", "Demo^Radiologist"),
                 ("demo-admin", "ADMIN", "Demo^Admin"))


def ensure_demo_accounts(services: NodeServices) -> list[tuple[str, str, str]]:
    """Create the demo logins once, with fresh random passwords; return the new ones.

    Existing demo accounts are left as they are (their passwords were printed when
    they were created).
    """
    import secrets

    from sqlalchemy import select

    from node.db.models import User
    from node.states import Role
    from node.users import create_user

    created = []
    with services.database.sessions.begin() as session:
        for username, role_name, name in DEMO_ACCOUNTS:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                continue
            password = secrets.token_urlsafe(12)
            create_user(session, username, password, role=Role[role_name], display_name=name,
                        organization="radnode demo", actor="demo")
            created.append((username, password, role_name.lower()))
    return created


def _demo(args: argparse.Namespace) -> int:
    from node.config import LoggingSettings
    from node.demo import draft_summaries, send_files, wait_for_drafts
    from workers.inference.synth.studies import write_demo_studies, write_sample_studies

    settings = load_settings()
    configure_logging(LoggingSettings(level="WARNING", format="text"))
    identity = read_bundle_identity(settings.model.bundle)
    if identity is None:
        print(f"no model bundle at {settings.model.bundle}: run `radnode model synth` first",
              file=sys.stderr)
        return 2
    print(f"model: {identity.name} {identity.version} — {identity.intended_use}")
    services = NodeServices.build(settings, with_web=not args.once)
    services.start()
    try:
        accounts = ensure_demo_accounts(services)
        # A new run number gives new UIDs (the same number re-sends the same studies).
        run = int(time.time()) % 100_000
        if args.seed is None:
            # The fixed sample set: normal, urgent and common findings, new UIDs each run.
            samples = write_sample_studies(args.folder / f"sample-{run}", run=run)
        else:
            samples = write_demo_studies(args.folder / str(args.seed), count=args.studies,
                                         seed=args.seed)
        statuses = send_files(services.listener.port, settings.dicom.ae_title,
                              [path for sample in samples for path in sample.files])
        print(f"sent {len(samples)} sample studies to {settings.dicom.ae_title} "
              f"on port {services.listener.port}: "
              f"{sum(1 for s in statuses if s == 0)} stored")
        with tqdm(total=len(samples), desc="drafting", unit="study", file=sys.stderr) as bar:
            def progress(done: int, total: int) -> None:
                bar.n = done
                bar.refresh()

            states = wait_for_drafts(services, [s.study_uid for s in samples], args.timeout,
                                     progress)
        drafts = dict(draft_summaries(services, [s.study_uid for s in samples]))
        for sample in samples:
            state = states.get(sample.study_uid)
            print(f"\n{sample.accession} (phantom truth): {sample.reference_report}")
            print(f"  state: {state.name if state else 'unknown'}")
            if sample.study_uid in drafts:
                print(f"  draft: {drafts[sample.study_uid]}")
        drafted = sum(1 for s in states.values() if s == StudyState.DRAFTED)
        if args.once:
            return 0 if drafted == len(samples) else 1
        print(f"\nnode running — DICOM {settings.dicom.ae_title}@{services.listener.port}, "
              f"web http://{settings.web.host}:{settings.web.port}/ ; Ctrl-C to stop")
        for username, password, role in accounts:
            print(f"  demo {role} login: {username} / {password}")
        stop = threading.Event()

        def _stop(_signum: int, _frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        stop.wait()
        return 0
    finally:
        services.stop()


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the ``radnode`` parser."""
    demo = commands.add_parser("demo", help="run the node with sample studies and the demo model")
    demo.add_argument("--studies", type=int, default=6,
                      help="random studies to send with --seed")
    demo.add_argument("--folder", type=Path, default=Path("var/demo-studies"))
    demo.add_argument("--timeout", type=float, default=600.0)
    demo.add_argument("--once", action="store_true", help="exit after the drafts are done")
    demo.add_argument("--seed", type=int,
                      help="send random phantoms drawn from this seed instead of the fixed "
                           "sample set (normal, urgent pneumothorax, effusion, cardiomegaly "
                           "with oedema, consolidation, support devices)")
    demo.set_defaults(handler=_demo)
