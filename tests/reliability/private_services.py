"""Private PostgreSQL and Redis servers that a test may stop, kill and start again.

The shared servers at 127.0.0.1:5432 and :6379 serve every other test and are
never touched here: each scenario runs its own cluster or redis-server on a free
port, with its data in a temporary folder removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

POSTGRES_BIN_DIRS = tuple(
    sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
)


def postgres_program(name: str) -> str:
    """Path of a PostgreSQL server program (``initdb``, ``pg_ctl``); fails when missing."""
    search = os.pathsep.join([*POSTGRES_BIN_DIRS, os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    assert found is not None, f"{name} not installed (PostgreSQL server binaries)"
    return found


def redis_server_program() -> str:
    """Path of ``redis-server``; fails when missing."""
    found = shutil.which("redis-server", path=os.environ.get("PATH", "") + ":/usr/sbin")
    assert found is not None, "redis-server not installed"
    return found


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _server_user() -> str | None:
    """The account PostgreSQL runs as when this process is root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise AssertionError("running as root and neither a postgres nor a nobody account exists")


class PrivatePostgres:
    """A PostgreSQL cluster of its own: ``initdb`` into a temporary folder, ``pg_ctl``
    on a free port, trust authentication on the loopback interface only.

    As root, the cluster belongs to the ``postgres`` account (``nobody`` when there is
    none) and every server program runs through ``runuser``. The folder is made with
    :func:`tempfile.mkdtemp` rather than under pytest's ``tmp_path``, whose parents
    only root may enter.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.user = _server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="radnode-pg-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "postgres.log"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o700)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user is not None else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True,
                                timeout=timeout, check=False, cwd=self.folder)
        assert result.returncode == 0, (
            f"{' '.join(command[:2])} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}\n{self.log_tail()}"
        )
        return result

    def init(self) -> None:
        """Create the cluster (superuser ``postgres``, trust authentication)."""
        self._run(postgres_program("initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self) -> float:
        """Start the server and wait until it accepts connections; return the seconds taken."""
        started = time.monotonic()
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories='{self.folder}' -c max_connections=100")
        self._run(postgres_program("pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
                  "-o", options, "-w", "-t", "60", "start")
        assert _accepts_connections(self.port), self.log_tail()
        return time.monotonic() - started

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` (no checkpoint, crash recovery on the next
        start), ``fast`` or ``smart``."""
        self._run(postgres_program("pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "stop")

    def running(self) -> bool:
        """Whether the postmaster is up (``pg_ctl status``)."""
        prefix = ["runuser", "-u", self.user, "--"] if self.user is not None else []
        result = subprocess.run([*prefix, postgres_program("pg_ctl"), "-D", str(self.data),
                                 "status"], capture_output=True, timeout=30, check=False)
        return result.returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        if self.data.exists() and self.running():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, removed on exit."""
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


class PrivateRedis:
    """A ``redis-server`` on a free port with no persistence: a restart starts empty."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.log_path = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start the server and wait until it answers; return the seconds taken."""
        started = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [redis_server_program(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not _accepts_connections(self.port):
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: whatever the server held is gone."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


@contextmanager
def private_redis(folder: Path) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, killed on exit."""
    server = PrivateRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.kill()
