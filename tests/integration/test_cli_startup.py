"""What an administrator meets when starting radnode: one-line refusals and the summary.

Each case runs the real ``radnode`` console script in a subprocess (this checkout first on
``PYTHONPATH``) from an empty folder, and asserts the exit code, the single line on
standard error naming the setting and its value, and that no traceback escapes. The
misconfigured commands are started together (they only import and check) to keep the
file fast on two cores.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DEMO_BUNDLE_DIR, REPO_ROOT, free_port
from tests.process_tree import descendants
from tests.reliability.private_services import private_redis

RADNODE = shutil.which("radnode", path=str(Path(sys.executable).parent)) or "radnode"
PASSWORD = "correct-horse-battery-staple"
#: Seconds a refused start may take: imports and a check on a loaded 2-core machine.
REFUSAL_TIMEOUT = 120


def radnode_env(folder: Path, **variables: str) -> dict[str, str]:
    """The environment of a ``radnode`` run: none of the caller's RADNODE_ variables, this
    checkout on the path, free ports and the demo bundle unless ``variables`` say else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update({"RADNODE_DICOM__PORT": str(free_port()), "RADNODE_WEB__PORT": str(free_port()),
                "RADNODE_MODEL__BUNDLE": str(DEMO_BUNDLE_DIR),
                "RADNODE_LOGGING__FORMAT": "text"})
    env.update(variables)
    folder.mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class Refusal:
    """A misconfigured start and what its one line must say."""

    args: tuple[str, ...]
    variables: dict[str, str]
    expected: tuple[str, ...]
    forbidden: tuple[str, ...] = ()


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))
    sock.listen(1)
    return sock


def _cases(tmp: Path, busy_port: int) -> dict[str, Refusal]:
    closed = free_port()
    corrupt = tmp / "corrupt-bundle"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text(json.dumps({"name": "x", "version": "1"}))
    garbled = tmp / "garbled-bundle"
    garbled.mkdir()
    (garbled / "manifest.json").write_text('{"name": ')
    return {
        "wrong database URL": Refusal(
            ("serve",), {"RADNODE_DATABASE__URL": "postgres-ql://radnode@db/radnode"},
            ("[database] url = 'postgres-ql://radnode@db/radnode'", "not a usable database")),
        "database unreachable": Refusal(
            ("serve",),
            {"RADNODE_DATABASE__URL": f"postgresql://radnode:s3cret@127.0.0.1:{closed}/radnode"},
            (f"[database] url = 'postgresql://radnode:***@127.0.0.1:{closed}/radnode'",
             "database unreachable"), forbidden=("s3cret",)),
        "database unreachable, other command": Refusal(
            ("studies",),
            {"RADNODE_DATABASE__URL": f"postgresql://radnode:s3cret@127.0.0.1:{closed}/radnode"},
            ("[database] url = 'postgresql://radnode:***@127.0.0.1", "Connection refused"),
            forbidden=("s3cret",)),
        "broker unreachable (serve)": Refusal(
            ("serve",), {"RADNODE_BROKER__URL": f"redis://:pw0rd@127.0.0.1:{closed}/0"},
            (f"[broker] url = 'redis://:***@127.0.0.1:{closed}/0'", "broker unreachable"),
            forbidden=("pw0rd",)),
        "broker unreachable (worker)": Refusal(
            ("worker",), {"RADNODE_BROKER__URL": f"redis://127.0.0.1:{closed}/0"},
            (f"[broker] url = 'redis://127.0.0.1:{closed}/0'", "broker unreachable")),
        "DICOM port in use": Refusal(
            ("serve",), {"RADNODE_DICOM__PORT": str(busy_port)},
            (f"[dicom] port = {busy_port}", "in use")),
        "web port in use": Refusal(
            ("serve",), {"RADNODE_WEB__PORT": str(busy_port),
                         "RADNODE_WEB__HOST": "127.0.0.1"},
            (f"[web] port = {busy_port}", "in use")),
        "missing bundle": Refusal(
            ("serve",), {"RADNODE_MODEL__BUNDLE": str(tmp / "no-bundle")},
            (f"[model] bundle = '{tmp / 'no-bundle'}'", "no model bundle there")),
        "corrupt bundle": Refusal(
            ("serve",), {"RADNODE_MODEL__BUNDLE": str(corrupt)},
            (f"[model] bundle = '{corrupt}'", "corrupt model bundle", "manifest.json invalid")),
        "garbled manifest": Refusal(
            ("serve",), {"RADNODE_MODEL__BUNDLE": str(garbled)},
            (f"[model] bundle = '{garbled}'", "corrupt model bundle", "unreadable")),
        "variable with one underscore": Refusal(
            ("serve",), {"RADNODE_DICOM_PORT": "11190"},
            ("RADNODE_DICOM_PORT='11190'", "did you mean RADNODE_DICOM__PORT?")),
    }


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, tuple[Refusal, subprocess.CompletedProcess[str]]]]:
    """Every case, run at once; each result as ``(case, completed process)``."""
    tmp = tmp_path_factory.mktemp("refusals")
    with _listening_socket() as busy:
        cases = _cases(tmp, int(busy.getsockname()[1]))
        running = {}
        for n, (name, case) in enumerate(cases.items()):
            folder = tmp / f"run{n}"
            running[name] = subprocess.Popen(
                [RADNODE, *case.args], cwd=folder, env=radnode_env(folder, **case.variables),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
        results = {}
        for name, process in running.items():
            try:
                out, err = process.communicate(timeout=REFUSAL_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
            results[name] = (cases[name], subprocess.CompletedProcess(
                process.args, process.returncode, out, err))
    yield results


CASE_NAMES = [
    "wrong database URL", "database unreachable", "database unreachable, other command",
    "broker unreachable (serve)", "broker unreachable (worker)", "DICOM port in use",
    "web port in use", "missing bundle", "corrupt bundle", "garbled manifest",
    "variable with one underscore",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_misconfiguration_is_one_line_and_a_failing_exit(
        refusals: dict[str, tuple[Refusal, subprocess.CompletedProcess[str]]],
        name: str) -> None:
    case, result = refusals[name]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("radnode: "), lines[0]
    for text in case.expected:
        assert text in lines[0], lines[0]
    for text in case.forbidden:
        assert text not in output


def _read_until(process: subprocess.Popen[bytes], done: Callable[[str], bool],
                timeout: float) -> list[str]:
    """Lines of the process's standard output up to the first one ``done`` accepts."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([descriptor], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(descriptor, 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, rest = buffer.split(b"\n")
        buffer = rest
        lines.extend(line.decode() for line in complete)
        if any(done(line) for line in lines):
            return lines
    raise AssertionError(f"no summary within {timeout} s: {lines} {buffer!r}")


def test_serve_prints_one_summary_with_embedded_defaults(tmp_path: Path) -> None:
    dicom_port, web_port = free_port(), free_port()
    env = radnode_env(tmp_path, RADNODE_DICOM__PORT=str(dicom_port),
                      RADNODE_WEB__PORT=str(web_port))
    process = subprocess.Popen([RADNODE, "serve"], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        lines = _read_until(process, lambda line: line.startswith("  web:"), timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        rc = process.wait(timeout=60)
    assert rc == 0
    summary = lines[lines.index("radnode serve starting"):]
    assert summary == [
        "radnode serve starting",
        "  config:   built-in defaults (RADNODE_CONFIG not set)",
        f"  database: SQLite database file {tmp_path.resolve() / 'var' / 'radnode.db'}",
        "  broker:   embedded (in-process queue, no broker)",
        summary[4],
        f"  dicom:    AE title RADNODE, port {dicom_port} on 0.0.0.0",
        f"  web:      port {web_port} on 127.0.0.1",
    ]
    manifest = json.loads((DEMO_BUNDLE_DIR / "manifest.json").read_text())
    assert summary[4].startswith(f"  model:    {manifest['name']} {manifest['version']} "
                                 f"(device UID {manifest['device_uid']}, manifest sha256 ")
    assert summary[4].endswith(f") at {DEMO_BUNDLE_DIR.resolve()}")


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, and not a zombie left for the init process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_serve_with_two_listener_processes_answers_and_stops_them(tmp_path: Path) -> None:
    """``radnode serve`` itself (its console script is the module the listener process is
    spawned from): ready once both listen, and SIGTERM ends it and them."""
    dicom_port = free_port()
    env = radnode_env(tmp_path, RADNODE_DICOM__PORT=str(dicom_port),
                      RADNODE_DICOM__LISTENER_PROCESSES="2")
    process = subprocess.Popen([RADNODE, "serve"], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        lines = _read_until(process, lambda line: line.startswith("  web:"), timeout=120)
        children = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()
                    for pid in descendants(process.pid)}
        echo = subprocess.run(["echoscu", "127.0.0.1", str(dicom_port)], timeout=30,
                              capture_output=True, check=False)
        assert echo.returncode == 0, echo.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        rc = process.wait(timeout=60)
    assert rc == 0
    assert (f"  dicom:    AE title RADNODE, port {dicom_port} on 0.0.0.0, "
            "2 listener processes") in lines
    listeners = [pid for pid, command in children.items() if b"spawn_main" in command]
    assert len(listeners) == 1, children
    # Stopped and collected by serve before it exits.
    assert not [pid for pid in listeners if _running(pid)]
    # multiprocessing's resource tracker ends once serve's end closes its pipe.
    deadline = time.monotonic() + 10
    while [pid for pid in children if _running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _running(pid)]


def test_user_add_names_the_database(tmp_path: Path, postgres_url: str) -> None:
    args = [RADNODE, "user", "add", "alice", "--role", "radiologist", "--name", "Doe^Alice",
            "--password-stdin"]
    embedded = subprocess.run(args, cwd=tmp_path, env=radnode_env(tmp_path), text=True,
                              input=PASSWORD + "\n", capture_output=True, timeout=120)
    assert embedded.returncode == 0, embedded.stderr
    database = tmp_path.resolve() / "var" / "radnode.db"
    assert embedded.stdout.strip().endswith(
        f"in SQLite database file {database} (built-in defaults: RADNODE_CONFIG not set)")
    assert database.is_file()

    config = tmp_path / "radnode.toml"
    config.write_text(f'[database]\nurl = "{postgres_url}"\n')
    configured = subprocess.run(args, cwd=tmp_path, text=True, input=PASSWORD + "\n",
                                env=radnode_env(tmp_path, RADNODE_CONFIG=str(config)),
                                capture_output=True, timeout=120)
    assert configured.returncode == 0, configured.stderr
    assert configured.stdout.strip().endswith(f"in database {postgres_url}")
    assert "built-in defaults" not in configured.stdout


def test_worker_prints_one_summary(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as broker:
        env = radnode_env(tmp_path, RADNODE_BROKER__URL=broker.url,
                          RADNODE_WORKER__DEVICE="cpu")
        process = subprocess.Popen([RADNODE, "worker", "--name", "t1", "--concurrency", "2"],
                                   cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            lines = _read_until(process, lambda line: line.startswith("  worker:"),
                                timeout=120)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    summary = lines[lines.index("radnode worker starting"):]
    assert summary[1:4] == [
        "  config:   built-in defaults (RADNODE_CONFIG not set)",
        f"  database: SQLite database file {tmp_path.resolve() / 'var' / 'radnode.db'}",
        f"  broker:   {broker.url}",
    ]
    assert summary[4].startswith("  model:    ")
    assert summary[5] == "  worker:   radnode-draft-t1, 2 task(s) at once, device cpu, queue draft"
