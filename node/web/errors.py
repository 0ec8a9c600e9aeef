"""How the web app recognises and words a full volume."""

from __future__ import annotations

STORAGE_FULL_MESSAGE = ("The node's storage is full: nothing new can be saved until an "
                        "administrator frees space. Those signed in can go on reading.")


def database_full(exc: BaseException) -> bool:
    """Whether a database error means its volume is full (SQLite ``SQLITE_FULL``,
    PostgreSQL ``disk_full``)."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlite_errorcode", None) == 13 or getattr(orig, "sqlstate", "") == "53100":
        return True
    return "disk is full" in str(orig)


__all__ = ["STORAGE_FULL_MESSAGE", "database_full"]
