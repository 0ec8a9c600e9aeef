"""What ``radnode serve`` and ``radnode worker`` check and say before they start.

Each check turns a misconfiguration into a :class:`~node.config.ConfigError` whose one
line names the setting and its value (the command prints it and exits 2, no
traceback): a database URL that is not one or a database that does not answer, a broker
that does not answer, a port already in use, a model bundle that is missing or whose
manifest does not validate. Passwords in URLs are shown as ``***``.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from node.config import CONFIG_ENV_VAR, ConfigError, Settings, config_source, masked_url
from node.db.engine import create_db_engine
from workers.inference.manifest import MANIFEST_FILENAME, BundleManifest

_DEFAULTS_NOTE = " (built-in defaults: RADNODE_CONFIG not set)"

#: Seconds a start-up check waits for the broker.
BROKER_TIMEOUT_SECONDS = 3.0


def database_description(settings: Settings, *, say_source: bool = True) -> str:
    """Which database a command uses, in words: the masked URL, and for SQLite the
    absolute path of the file.

    With ``say_source``, and without ``RADNODE_CONFIG``, it adds where the URL came from:
    the built-in default, or ``RADNODE_DATABASE__URL``.
    """
    url = settings.database.url
    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"database {url!r}"
    if parsed.get_backend_name() == "sqlite":
        where = parsed.database or ":memory:"
        if where != ":memory:":
            where = str(Path(where).resolve())
        text_ = f"SQLite database file {where}"
    else:
        text_ = f"database {masked_url(url)}"
    if say_source and not os.environ.get(CONFIG_ENV_VAR):
        if any(key.upper() == "RADNODE_DATABASE__URL" for key in os.environ):
            text_ += " (RADNODE_CONFIG not set; url from RADNODE_DATABASE__URL)"
        else:
            text_ += _DEFAULTS_NOTE
    return text_


def _first_line(error: BaseException) -> str:
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    return detail[0] if detail else type(error).__name__


def check_database(settings: Settings) -> None:
    """Connect once to ``[database] url``.

    Raises
    ------
    ConfigError
        When the URL is not a database URL or the database does not answer.
    """
    url = settings.database.url
    try:
        engine = create_db_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"[database] url = {masked_url(url)!r} is not a usable database "
                          f"URL: {_first_line(exc)}") from exc
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ConfigError(f"[database] url = {masked_url(url)!r}: database unreachable: "
                          f"{_first_line(exc)}") from exc
    finally:
        engine.dispose()


def check_broker(settings: Settings, timeout: float = BROKER_TIMEOUT_SECONDS) -> None:
    """Ping ``[broker] url`` (nothing to check for the embedded queue).

    Raises
    ------
    ConfigError
        When the URL is not a Redis URL or the broker does not answer within ``timeout``.
    """
    url = settings.broker.url
    if not url:
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                      socket_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"[broker] url = {masked_url(url)!r} is not a Redis URL: "
                          f"{exc}") from exc
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"[broker] url = {masked_url(url)!r}: broker unreachable: "
                          f"{_first_line(exc)}") from exc
    finally:
        client.close()


def check_port(key: str, host: str, port: int) -> None:
    """Bind ``host:port`` for a moment to see that it is free (port 0 always is).

    Raises
    ------
    ConfigError
        Naming ``key`` and the address when it cannot be bound.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == 98 else (exc.strerror or str(exc))
            raise ConfigError(f"{key} = {port}: cannot listen on {host}:{port}: "
                              f"{reason}") from exc


@dataclass(frozen=True)
class BundleSummary:
    """A model bundle's identity, as the start-up summary shows it."""

    path: Path
    name: str
    version: str
    device_uid: str
    manifest_sha256: str

    def describe(self) -> str:
        """``name version (device UID …, manifest sha256 …) at path``."""
        return (f"{self.name} {self.version} (device UID {self.device_uid}, manifest "
                f"sha256 {self.manifest_sha256[:12]}) at {self.path}")


def check_bundle(settings: Settings, *, required: bool) -> BundleSummary | None:
    """Read and validate the bundle's manifest and see that its listed files exist.

    Parameters
    ----------
    settings
        Where ``[model] bundle`` points.
    required
        Whether this process drafts (embedded node, worker); a node whose drafting
        workers run on other hosts may lack the bundle.

    Returns
    -------
    BundleSummary or None
        ``None`` when there is no bundle and none is required.

    Raises
    ------
    ConfigError
        When the bundle is required but missing, or its manifest is unreadable, invalid
        or lists a file that is not there.
    """
    root = settings.model.bundle.resolve()
    manifest_path = root / MANIFEST_FILENAME
    key = f"[model] bundle = {str(settings.model.bundle)!r}"
    if not manifest_path.is_file():
        if required:
            raise ConfigError(f"{key}: no model bundle there ({manifest_path} missing); "
                              "install one (radnode model synth / import-…)")
        return None
    try:
        raw = manifest_path.read_bytes()
        manifest = BundleManifest.load(manifest_path)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "manifest"
        raise ConfigError(f"{key}: corrupt model bundle, {manifest_path.name} invalid: "
                          f"{where}: {first['msg']}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: corrupt model bundle, {manifest_path.name} unreadable: "
                          f"{_first_line(exc)}") from exc
    missing = [name for name in manifest.files if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"{key}: corrupt model bundle, {len(missing)} listed file(s) "
                          f"missing, first {missing[0]}")
    return BundleSummary(root, manifest.name, manifest.version, manifest.device_uid,
                         hashlib.sha256(raw).hexdigest())


def summary_lines(command: str, settings: Settings, bundle: BundleSummary | None,
                  *, dicom_port: int | None = None, web_port: int | None = None,
                  worker: str | None = None) -> list[str]:
    """The start-up summary: one line per fact, under a ``radnode <command>`` heading."""
    broker = (masked_url(settings.broker.url) if settings.broker.url
              else "embedded (in-process queue, no broker)")
    if bundle is not None:
        model = bundle.describe()
    else:
        model = f"none at {settings.model.bundle.resolve()} (drafting workers on other hosts)"
    database = database_description(settings, say_source=False).removeprefix("database ")
    lines = [
        f"radnode {command} starting",
        f"  config:   {config_source()}",
        f"  database: {database}",
        f"  broker:   {broker}",
        f"  model:    {model}",
    ]
    if dicom_port is not None:
        lines.append(f"  dicom:    AE title {settings.dicom.ae_title}, port {dicom_port} "
                     f"on {settings.dicom.bind_address}"
                     + (" (TLS)" if settings.dicom.tls.enabled else "")
                     + (f", {settings.dicom.listener_processes} listener processes"
                        if settings.dicom.listener_processes > 1 else ""))
        lines.extend(destination_lines(settings))
    if web_port is not None:
        lines.append(f"  web:      port {web_port} on {settings.web.host}")
    if worker is not None:
        lines.append(f"  worker:   {worker}")
    return lines


def destination_lines(settings: Settings) -> list[str]:
    """One summary line per destination: what it receives and how delivery is confirmed."""
    lines = []
    for destination in settings.destinations:
        if not destination.auto_export:
            what = "C-MOVE destination only"
        elif destination.receives_drafts():
            what = "drafts and signed reports"
        else:
            what = "signed reports only"
            if destination.exports_by_default:
                what += (' (exports not set; before this setting drafts went to every '
                         'destination: set exports = "drafts_and_finals" to keep that)')
        if destination.storage_commitment and destination.auto_export:
            what += ", storage commitment"
        lines.append(f"  export:   {destination.ae_title} at {destination.host}:"
                     f"{destination.port}: {what}")
    return lines


__all__ = [
    "BundleSummary",
    "destination_lines",
    "check_broker",
    "check_bundle",
    "check_database",
    "check_port",
    "database_description",
    "summary_lines",
]
