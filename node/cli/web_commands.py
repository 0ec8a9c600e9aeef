"""Subcommands for the web app's users: ``radnode user add|list|role|token|deactivate|language``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from sqlalchemy import select

from node.cli.startup import database_description
from node.config import load_settings
from node.db.engine import Database
from node.db.models import AuditEvent, User
from node.db.types import utcnow
from node.states import Role
from node.users import UserError, check_password_policy, create_user, set_user_language


def _read_password(from_stdin: bool, related: list[str]) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    check_password_policy(first, related)
    if getpass.getpass("password again: ") != first:
        raise UserError("the passwords differ")
    return first


def _user_add(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        password = _read_password(args.password_stdin,
                                  [args.username, args.name, args.organization or ""])
        database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
        with database.sessions.begin() as session:
            user = create_user(
                session, args.username, password, role=Role[args.role.upper()],
                display_name=args.name, organization=args.organization,
                person_identifier=args.person_id, language=args.language,
            )
            user_id = user.id
    except UserError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.username} ({args.role}) created with id {user_id} in "
          f"{database_description(settings)}")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    with database.sessions() as session:
        users = session.scalars(select(User).order_by(User.username)).all()
        print(f"{'USERNAME':<20} {'ROLE':<12} {'ACTIVE':<6} NAME")
        for user in users:
            print(f"{user.username:<20} {user.role.name.lower():<12} "
                  f"{'yes' if user.active else 'no':<6} {user.display_name}")
    return 0


def _user_deactivate(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    with database.sessions.begin() as session:
        user = session.scalar(select(User).where(User.username == args.username))
        if user is None:
            print(f"radnode: no user {args.username!r}", file=sys.stderr)
            return 2
        user.active = False
        session.add(AuditEvent(at=utcnow(), actor="cli", action="user_deactivated",
                               object_type="user", object_id=str(user.id)))
    print(f"user {args.username} deactivated in {database_description(settings)}; their "
          "logins end at their next request")
    return 0


def _user_role(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    role = Role[args.role.upper()]
    with database.sessions.begin() as session:
        user = session.scalar(select(User).where(User.username == args.username))
        if user is None or user.role is Role.WORKER:
            print(f"radnode: no person {args.username!r}", file=sys.stderr)
            return 2
        previous = user.role
        user.role = role
        session.add(AuditEvent(at=utcnow(), actor="cli", action="user_role_changed",
                               object_type="user", object_id=str(user.id), user_id=user.id,
                               details={"from": previous.name, "to": role.name}))
    print(f"user {args.username} is now {role.value} (was {previous.value}) in "
          f"{database_description(settings)}; logins and tokens follow at their next "
          "request")
    return 0


def _user_token(args: argparse.Namespace) -> int:
    from node.web.service_auth import issue_service_token, revoke_service_tokens

    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    output = None
    if args.output and not args.revoke:
        # The file is made first, so that a token is only issued where it can be written.
        try:
            output = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            print(f"radnode: cannot create {args.output}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        with database.sessions.begin() as session:
            if args.revoke:
                count = revoke_service_tokens(session, args.username)
                print(f"{count} token(s) of {args.username} revoked in "
                      f"{database_description(settings)}")
                return 0
            token = issue_service_token(session, args.username)
    except UserError as exc:
        if output is not None:
            os.close(output)
            args.output.unlink()
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    if output is not None:
        with os.fdopen(output, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
        print(f"token of worker account {args.username} written to {args.output}; issued in "
              f"{database_description(settings)}")
    else:
        print(token)
        print(f"issued in {database_description(settings)}", file=sys.stderr)
    return 0


def _user_language(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
    try:
        with database.sessions.begin() as session:
            user = session.scalar(select(User).where(User.username == args.username))
            if user is None:
                print(f"radnode: no user {args.username!r}", file=sys.stderr)
                return 2
            set_user_language(session, user, None if args.clear else args.language)
            language = user.language
    except UserError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    if language is None:
        print(f"user {args.username} signs reports in the site's language "
              f"({settings.reports.language})")
    else:
        print(f"user {args.username} signs reports in {language}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``user`` to the ``radnode`` parser."""
    user = commands.add_parser("user", help="manage the web app's users")
    actions = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="create a user (asks for the password)")
    add.add_argument("username")
    add.add_argument("--role", required=True,
                     choices=[r.name.lower() for r in Role if r is not Role.WORKER])
    add.add_argument("--name", required=True,
                     help='DICOM person name, "Family^Given" (signs reports)')
    add.add_argument("--organization", help="verifying organization on signed reports")
    add.add_argument("--person-id", help="identifier on signed reports (default: username)")
    add.add_argument("--language", help="RFC 5646 tag of the reports the user signs, e.g. "
                                        "de-CH (default: [reports] language)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.set_defaults(handler=_user_add)

    listing = actions.add_parser("list", help="list users")
    listing.set_defaults(handler=_user_list)

    token = actions.add_parser(
        "token", help="issue a bearer token for a worker on another host (WADO-RS only)")
    token.add_argument("username", help="the worker's service account (created if missing)")
    token.add_argument("--output", type=Path,
                       help="write the token to this new file (mode 0600) instead of stdout")
    token.add_argument("--revoke", action="store_true",
                       help="revoke every token of the account instead")
    token.set_defaults(handler=_user_token)

    role = actions.add_parser("role", help="change a person's role (their tokens follow)")
    role.add_argument("username")
    role.add_argument("role", choices=[r.name.lower() for r in Role if r is not Role.WORKER])
    role.set_defaults(handler=_user_role)

    deactivate = actions.add_parser("deactivate", help="stop a user from signing in")
    deactivate.add_argument("username")
    deactivate.set_defaults(handler=_user_deactivate)

    language = actions.add_parser(
        "language", help="set the language of the reports a user signs")
    language.add_argument("username")
    chosen = language.add_mutually_exclusive_group(required=True)
    chosen.add_argument("language", nargs="?", help="RFC 5646 tag, e.g. fr-CH")
    chosen.add_argument("--clear", action="store_true",
                        help="use the site's [reports] language again")
    language.set_defaults(handler=_user_language)
