"""``radnode token issue|list|revoke``: personal bearer tokens for DICOMweb.

People's tokens (radiologists, admins, uploaders) for viewers on another origin and
desktop clients; a worker's service token is ``radnode user token``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sqlalchemy import select

from node.cli.startup import database_description
from node.config import load_settings
from node.db.engine import Database
from node.db.models import User
from node.db.types import utcnow
from node.states import TokenScope
from node.users import UserError
from node.web.access_tokens import (
    issue_access_token,
    list_access_tokens,
    parse_lifetime,
    parse_scopes,
    revoke_access_token,
)


def _database() -> tuple[Database, str]:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    return database, database_description(settings)


def _issue(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    output = None
    if args.output:
        try:  # made first: a token is only issued where it can be written
            output = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            print(f"radnode: cannot create {args.output}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        lifetime = parse_lifetime(args.expires)
        scopes = parse_scopes(args.scope or [])
        with database.sessions.begin() as session:
            user = session.scalar(select(User).where(User.username == args.user))
            if user is None:
                raise UserError(f"no user {args.user!r}")
            issued = issue_access_token(
                session, user, lifetime=lifetime, max_days=settings.web.token_max_days,
                scopes=scopes or None, label=args.name or "", actor="cli", now=utcnow())
    except UserError as exc:
        if output is not None:
            os.close(output)
            args.output.unlink()
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    summary = (f"token {issued.token_id} of {args.user} "
               f"({', '.join(sorted(s.value for s in issued.scopes))}), expires "
               f"{issued.expires_at.isoformat(timespec='minutes')}")
    if output is not None:
        with os.fdopen(output, "w", encoding="ascii") as handle:
            handle.write(issued.token + "\n")
        print(f"{summary}, written to {args.output}; issued in "
              f"{database_description(settings)}")
    else:
        print(issued.token)
        print(f"{summary}; issued in {database_description(settings)}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    database, _ = _database()
    now = utcnow()
    with database.sessions() as session:
        user_id = None
        if args.user:
            user_id = session.scalar(select(User.id).where(User.username == args.user))
            if user_id is None:
                print(f"radnode: no user {args.user!r}", file=sys.stderr)
                return 2
        names = {row.id: row.username for row in session.execute(select(User.id, User.username))}
        print(f"{'ID':>5} {'USER':<20} {'STATE':<8} {'EXPIRES':<17} {'LAST USED':<17} "
              "SCOPES  LABEL")
        for token in list_access_tokens(session, user_id):
            state = ("revoked" if token.revoked_at else
                     "expired" if token.expires_at <= now else "live")
            if state != "live" and not args.all:
                continue
            used = (token.last_used_at.strftime("%Y-%m-%d %H:%M") if token.last_used_at
                    else "never")
            print(f"{token.id:>5} {names.get(token.user_id, '?'):<20} {state:<8} "
                  f"{token.expires_at.strftime('%Y-%m-%d %H:%M'):<17} {used:<17} "
                  f"{','.join(token.scopes)}  {token.label}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    database, where = _database()
    with database.sessions.begin() as session:
        revoked = revoke_access_token(session, args.id, actor="cli", now=utcnow())
    if not revoked:
        print(f"radnode: no live token {args.id}", file=sys.stderr)
        return 2
    print(f"token {args.id} revoked in {where}; it is refused from its next request")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token`` to the ``radnode`` parser."""
    token = commands.add_parser(
        "token", help="personal bearer tokens for DICOMweb (viewers, desktop clients)")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    issue = actions.add_parser("issue", help="issue a token (printed once)")
    issue.add_argument("--user", required=True, help="the holder's username")
    issue.add_argument("--expires", required=True,
                       help="lifetime: 12h, 30d, 2w (at most [web] token_max_days)")
    issue.add_argument("--scope", action="append",
                       choices=[s.value for s in TokenScope],
                       help="narrower than the role (repeatable); default: all of the role's")
    issue.add_argument("--name", help="a label to tell the token apart")
    issue.add_argument("--output", type=Path,
                       help="write the token to this new file (mode 0600) instead of stdout")
    issue.set_defaults(handler=_issue)

    listing = actions.add_parser("list", help="list live tokens (never the tokens themselves)")
    listing.add_argument("--user", help="only this user's")
    listing.add_argument("--all", action="store_true", help="revoked and expired ones too")
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(handler=_revoke)
