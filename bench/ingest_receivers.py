"""Receivers for the ingest benchmark: storescp, the node, Orthanc and a bare pynetdicom SCP.

Each receiver starts fresh in its own folder on a free loopback port, reports how many
instances it stored, and stops; helpers here also wait for a quiet CPU and for DICOM echo.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

SENDER_AE = "BENCHSCU"
PDU_BYTES = 131072
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
MIB = 1024 * 1024
#: The demo model bundle (``radnode serve`` checks that one is installed; nothing is
#: drafted during a run).
DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "var" / "models" / "demo"


def warm_page_cache(files: Iterable[Path]) -> None:
    """Read every file once so the sender never waits on the disk."""
    for path in files:
        with path.open("rb") as handle:
            while handle.read(8 * MIB):
                pass


# --------------------------------------------------------------------------- receivers


def free_port() -> int:
    """Return a TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


def cpu_busy(interval: float = 0.5) -> float:
    """Return the fraction of all CPUs busy over ``interval`` seconds (0 where unknown)."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(interval)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    spent = total1 - total0
    return 1.0 - (idle1 - idle0) / spent if spent else 0.0


def wait_until_quiet(threshold: float, timeout: float) -> float:
    """Wait until other work uses less than ``threshold`` of the CPUs; return the last reading.

    The machine may be shared: starting a timed run while something else keeps
    the cores busy would measure that, not the receiver.
    """
    deadline = time.monotonic() + timeout
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def echo(port: int, called_ae: str, timeout: float = 2.0) -> bool:
    """Return whether a C-ECHO to ``port`` succeeds."""
    result = subprocess.run(
        [
            "echoscu",
            "-aet",
            SENDER_AE,
            "-aec",
            called_ae,
            "-to",
            "2",
            "-ta",
            "2",
            "127.0.0.1",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout + 5,
        check=False,
    )
    return result.returncode == 0


def wait_for_echo(
    port: int, called_ae: str, process: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    """Wait until the receiver answers C-ECHO.

    Raises
    ------
    RuntimeError
        If the process exits first or the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with status {process.returncode} before answering")
        if echo(port, called_ae):
            return
        time.sleep(0.2)
    raise RuntimeError(f"receiver on port {port} did not answer C-ECHO within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Ask a receiver to stop (SIGTERM), then kill it if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _children(pid: int) -> list[int]:
    """Process ids of ``pid``'s children (every thread's), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found.extend(int(v) for v in (task / "children").read_text().split())
    return found


def _process_tree(pid: int) -> Iterator[int]:
    """``pid`` and its descendants, as long as /proc shows them."""
    pending = [pid]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(_children(current))


def _status_mib(pid: int, field: str) -> float:
    """A ``/proc/PID/status`` size field of ``pid`` and its descendants, summed, in MiB."""
    total_kib = 0
    for current in _process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def peak_rss_mib(pid: int) -> float:
    """Memory high-water mark (``VmHWM``) of ``pid`` and its descendants, summed, in MiB.

    Read while the processes are alive (just before they are stopped); 0 where unknown.
    """
    return _status_mib(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Restart the high-water mark of ``pid`` and its descendants at their current size.

    Writing 5 to ``/proc/PID/clear_refs`` resets ``VmHWM`` (Linux 4.0 and later), so that
    the mark read after a run is the peak during that run, not during start-up.
    """
    for current in _process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{current}/clear_refs").write_text("5")


def rss_mib(pid: int) -> float:
    """Resident memory (``VmRSS``) of ``pid`` and its descendants, summed, in MiB."""
    return _status_mib(pid, "VmRSS")


def _cpu_ticks(pid: int) -> int:
    """User and system clock ticks of ``pid`` and its descendants."""
    ticks = 0
    for current in _process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def wait_until_idle(pid: int, timeout: float = 60.0, interval: float = 0.5) -> None:
    """Wait until ``pid`` (with its children) has finished starting up: less than 5 % of
    one CPU over ``interval``, or ``timeout`` seconds."""
    per_second = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    before = _cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        after = _cpu_ticks(pid)
        if (after - before) / per_second < 0.05 * interval:
            return
        before = after


class Receiver(Protocol):
    """A storage SCP under test."""

    name: str
    ae_title: str
    port: int

    def start(self, folder: Path) -> None:
        """Start fresh in ``folder`` and return once it answers C-ECHO."""

    def stored_count(self) -> int:
        """Return how many instances the receiver holds now."""

    def start_memory_mib(self) -> float:
        """Return the receiver's resident memory now, and restart its high-water mark."""

    def peak_memory_mib(self) -> float:
        """Return the receiver's memory high-water mark since :meth:`start_memory_mib`."""

    def stop(self) -> None:
        """Stop and release everything started by :meth:`start`."""


class _ProcessReceiver:
    """A receiver running as a subprocess: its memory is that of the process tree."""

    #: Seconds the process gets to end on its own when stopped.
    stop_timeout = 20.0

    def __init__(self) -> None:
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start_memory_mib(self) -> float:
        """The process tree's resident memory now; its high-water mark starts again."""
        if self._process is None:
            return 0.0
        reset_peak_rss(self._process.pid)
        return rss_mib(self._process.pid)

    def peak_memory_mib(self) -> float:
        """The process tree's memory high-water mark since :meth:`start_memory_mib`."""
        return peak_rss_mib(self._process.pid) if self._process is not None else 0.0

    def stop(self) -> None:
        """Stop the process, if it runs."""
        if self._process is not None:
            stop_process(self._process, timeout=self.stop_timeout)
            self._process = None


class StoreScpReceiver(_ProcessReceiver):
    """DCMTK ``storescp`` in bit-preserving mode (no fsync), one association at a time."""

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self) -> None:
        super().__init__()
        self._out: Path | None = None

    def start(self, folder: Path) -> None:
        self._out = folder / "out"
        self._out.mkdir(parents=True)
        self.port = free_port()
        log = (folder / "storescp.log").open("wb")
        self._process = subprocess.Popen(
            [
                "storescp",
                "+B",
                "+xa",
                "-pdu",
                str(PDU_BYTES),
                "-aet",
                self.ae_title,
                "-od",
                str(self._out),
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_echo(self.port, self.ae_title, self._process)

    def stored_count(self) -> int:
        assert self._out is not None
        return sum(1 for p in self._out.iterdir() if p.is_file())


class NodeReceiver(_ProcessReceiver):
    """``radnode serve`` as a subprocess, with SQLite or a fresh PostgreSQL schema."""

    ae_title = "RADNODE"

    #: ``[broker] url`` given to every node started: with a broker, ``radnode serve``
    #: does not load the model for an embedded drafting worker (nothing is drafted during
    #: a run either way). Empty: the embedded queue, and a slower start.
    broker_url = ""

    def __init__(self, database: str, source: Path | None = None, label: str = "",
                 extra_env: dict[str, str] | None = None) -> None:
        """Describe the node to start.

        Parameters
        ----------
        database
            ``"sqlite"`` (a file in the run folder) or ``"postgres"`` (a fresh schema).
        source
            Import the ``node`` package from this folder instead of the installed
            one (to compare two versions in the same interleaved run).
        label
            Appended to the receiver name.
        extra_env
            More ``RADNODE_*`` settings for this receiver.
        """
        self.extra_env = dict(extra_env or {})
        if database not in ("sqlite", "postgres"):
            raise ValueError(f"unknown database {database!r}")
        self.database = database
        self.source = source
        self.name = ("node-sqlite" if database == "sqlite" else "node-pg") + label
        super().__init__()
        self._sqlite_path: Path | None = None
        self._schema: str | None = None

    def _database_url(self, folder: Path) -> str:
        if self.database == "sqlite":
            self._sqlite_path = folder / "radnode.db"
            return f"sqlite:///{self._sqlite_path}"
        import psycopg

        self._schema = f"bench_{secrets.token_hex(6)}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self._schema}"')
        return (
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
            f"?options=-csearch_path%3D{self._schema}"
        )

    def start(self, folder: Path) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "RADNODE_DICOM__PORT": str(self.port),
                "RADNODE_DICOM__BIND_ADDRESS": "127.0.0.1",
                "RADNODE_DICOM__AE_TITLE": self.ae_title,
                "RADNODE_DATABASE__URL": self._database_url(folder),
                "RADNODE_STORAGE__ROOT": str(folder / "storage"),
                "RADNODE_LOGGING__LEVEL": "WARNING",
                "RADNODE_LOGGING__FORMAT": "text",
                "RADNODE_WEB__HOST": "127.0.0.1",
                "RADNODE_WEB__PORT": str(free_port()),
                "RADNODE_MODEL__BUNDLE": str(DEMO_BUNDLE),
                # Ingest only: no study becomes stable (and is drafted) during a run.
                "RADNODE_ASSEMBLY__QUIET_SECONDS": "3600",
                "RADNODE_ASSEMBLY__EARLY_STABLE_SINGLE_IMAGE": "false",
                "RADNODE_BROKER__URL": self.broker_url,
                "RADNODE_BROKER__DRAFT_QUEUE": f"bench-{secrets.token_hex(4)}",
                **self.extra_env,
            }
        )
        env.pop("RADNODE_CONFIG", None)
        log = (folder / "radnode.log").open("wb")
        radnode = Path(sys.executable).with_name("radnode")
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
            command = [sys.executable, "-m", "node.cli.main", "serve"]
        elif radnode.exists():
            command = [str(radnode), "serve"]
        else:
            command = [sys.executable, "-m", "node.cli.main", "serve"]
        self._process = subprocess.Popen(
            command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_echo(self.port, self.ae_title, self._process)
        # The embedded drafting worker loads its model after the listener answers.
        wait_until_idle(self._process.pid)

    def stored_count(self) -> int:
        if self.database == "sqlite":
            assert self._sqlite_path is not None
            with contextlib.closing(sqlite3.connect(self._sqlite_path, timeout=30)) as conn:
                return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])
        import psycopg

        assert self._schema is not None
        with psycopg.connect(POSTGRES_ADMIN_URL) as conn:
            row = conn.execute(f'SELECT count(*) FROM "{self._schema}".instances').fetchone()
            assert row is not None
            return int(row[0])

    def stop(self) -> None:
        super().stop()
        if self._schema is not None:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self._schema}" CASCADE')
            self._schema = None


def serve_minimal_scp(port: int, folder: Path) -> None:
    """Run the calibration SCP: pynetdicom writing ``encoded_dataset()`` with fsync.

    It is the floor for a Python receiver that answers only once the bytes are
    durable: no parsing, no hashing, no database.
    """
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    folder.mkdir(parents=True, exist_ok=True)
    directory_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)

    def on_store(event: object) -> int:
        data = event.encoded_dataset()  # type: ignore[attr-defined]
        name = str(event.request.AffectedSOPInstanceUID)  # type: ignore[attr-defined]
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(directory_fd)
        return 0x0000

    ae = AE(ae_title=MinimalScpReceiver.ae_title)
    ae.maximum_pdu_size = 0
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(
            context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


class MinimalScpReceiver(_ProcessReceiver):
    """Calibration: the smallest durable pynetdicom SCP (fsync, no parsing, no index)."""

    name = "pynetdicom-fsync"
    ae_title = "MINISCP"

    def __init__(self) -> None:
        super().__init__()
        self._out: Path | None = None

    def start(self, folder: Path) -> None:
        self._out = folder / "out"
        self.port = free_port()
        log = (folder / "minimal.log").open("wb")
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve().with_name("ingest.py")),
                "--minimal-scp",
                str(self.port),
                str(self._out),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_echo(self.port, self.ae_title, self._process)

    def stored_count(self) -> int:
        assert self._out is not None
        return sum(1 for p in self._out.iterdir() if p.is_file())


class OrthancReceiver(_ProcessReceiver):
    """Orthanc 1.x with its defaults (SQLite index, ``SyncStorageArea``), no plugins."""

    name = "orthanc"
    ae_title = "ORTHANC"
    stop_timeout = 60.0

    def __init__(self, executable: str = "Orthanc") -> None:
        super().__init__()
        self.executable = shutil.which(executable) or "/usr/sbin/Orthanc"
        self.http_port = 0

    def start(self, folder: Path) -> None:
        self.port = free_port()
        self.http_port = free_port()
        storage = folder / "storage"
        config = {
            "Name": "bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "SyncStorageArea": True,  # the default, stated: fsync before answering
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "RegisteredUsers": {},
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "MaximumPduLength": PDU_BYTES,
            "StableAge": 60,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "ConcurrentJobs": 2,
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = (folder / "orthanc.log").open("wb")
        self._process = subprocess.Popen(
            [self.executable, str(config_path)], cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_echo(self.port, self.ae_title, self._process)

    def stored_count(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (loopback)
            return int(json.load(response)["CountInstances"])



# --------------------------------------------------------------------------- senders


def dd_fsync_seconds(folder: Path, total_bytes: int) -> float:
    """Seconds for ``dd`` to write ``total_bytes`` of zeros to ``folder`` and fsync them.

    The disk's durable write bandwidth, measured in the same run: a floor no receiver
    that fsyncs what it stores can beat.
    """
    target = folder / "dd-fsync.bin"
    count = max(1, -(-total_bytes // MIB))
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={count}", "conv=fsync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    target.unlink(missing_ok=True)
    return seconds * total_bytes / (count * MIB)
