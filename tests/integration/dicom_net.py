"""Talking to a node over DICOM: DCMTK command-line senders and pynetdicom SCUs."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification

from node.config import Settings
from node.dicom.scp import ACCEPTED_TRANSFER_SYNTAXES
from node.runtime import NodeServices
from tests.conftest import make_settings

T = TypeVar("T")

DCMTK_TOOLS = ("storescu", "echoscu", "dcmconv", "dcmcjpeg", "dcmcjpls", "dcmcrle")


def dcmtk_tool(name: str) -> str | None:
    """Path of a DCMTK program, skipping pynetdicom's same-named apps in the venv."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    folders = os.environ.get("PATH", "").split(os.pathsep)
    search = os.pathsep.join(p for p in folders if p and Path(p).resolve() != venv_bin)
    return shutil.which(name, path=search)


requires_dcmtk = pytest.mark.usefixtures("dcmtk_installed")
"""Marks tests that drive DCMTK; they fail (never skip) when it is missing."""


def _dcmtk(name: str) -> str:
    path = dcmtk_tool(name)
    assert path is not None, f"{name} not installed"
    return path


def storescu(
    port: int,
    files: Sequence[Path],
    *flags: str,
    calling_ae: str = "STORESCU",
    called_ae: str = "RADNODE",
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK ``storescu -v`` in one association."""
    command = [
        _dcmtk("storescu"), "-v", "-aet", calling_ae, "-aec", called_ae, *flags,
        "127.0.0.1", str(port), *map(str, files),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(
    port: int, *, calling_ae: str = "ECHOSCU", called_ae: str = "RADNODE"
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``echoscu``."""
    command = [_dcmtk("echoscu"), "-v", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1",
               str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def store_successes(result: subprocess.CompletedProcess[str]) -> int:
    """How many C-STORE responses ``storescu -v`` reported as Success."""
    return (result.stdout + result.stderr).count("Received Store Response (Success)")


def storescu_profile(path: Path, sop_class_uid: str, transfer_syntax_uid: str) -> list[str]:
    """Write a storescu configuration proposing exactly one context; return the flags."""
    path.write_text(
        "[[TransferSyntaxes]]\n[Only]\n"
        f"TransferSyntax1 = {transfer_syntax_uid}\n"
        "[[PresentationContexts]]\n[Contexts]\n"
        f"PresentationContext1 = {sop_class_uid}\\Only\n"
        "[[Profiles]]\n[Single]\nPresentationContexts = Contexts\n"
    )
    return ["-xf", str(path), "Single"]


@dataclass
class ScuResult:
    """What a pynetdicom association attempt produced."""

    established: bool
    rejected: bool
    aborted: bool
    statuses: list[int] = field(default_factory=list)
    reject: A_ASSOCIATE | None = None


def make_scu(calling_ae: str = "TESTSCU", sop_classes: Sequence[str] = ()) -> AE:
    """A pynetdicom AE proposing Verification and, for each of ``sop_classes``, one
    presentation context per transfer syntax the node accepts."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = 10
    ae.dimse_timeout = 20
    ae.network_timeout = 20
    ae.add_requested_context(Verification)
    for sop_class in sop_classes:
        for syntax in ACCEPTED_TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    return ae


def exchange(
    port: int,
    requests: Sequence[Dataset | Path | None] = (),
    *,
    calling_ae: str = "TESTSCU",
    called_ae: str = "RADNODE",
    sop_classes: Sequence[str] = (),
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> ScuResult:
    """Associate, send each request (``None``: C-ECHO), release; report what happened.

    Paths are sent byte for byte as their files hold them (not decoded first).
    """
    ae = make_scu(calling_ae, sop_classes)
    received: list[A_ASSOCIATE] = []

    def _on_acse(event: Any) -> None:
        if isinstance(event.primitive, A_ASSOCIATE) and event.primitive.result is not None:
            received.append(event.primitive)

    kwargs: dict[str, Any] = {
        "ae_title": called_ae,
        "evt_handlers": [(evt.EVT_ACSE_RECV, _on_acse)],
    }
    if tls is not None:
        kwargs["tls_args"] = tls
    raw_files = any(isinstance(request, Path) for request in requests)
    with _raw_file_sending() if raw_files else nullcontext():
        assoc: Association = ae.associate("127.0.0.1", port, **kwargs)
        result = ScuResult(assoc.is_established, assoc.is_rejected, assoc.is_aborted)
        result.reject = received[0] if assoc.is_rejected and received else None
        if assoc.is_established:
            for request in requests:
                status = assoc.send_c_echo() if request is None else assoc.send_c_store(request)
                result.statuses.append(int(status.Status) if "Status" in status else -1)
            assoc.release()
    return result


@contextmanager
def _raw_file_sending() -> Iterator[None]:
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def radnode_command() -> list[str]:
    """How to run the ``radnode`` console script of this environment."""
    script = Path(sys.executable).with_name("radnode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "node.cli.main"]


def receiver_settings(tmp_path: Path, database_url: str, **sections: Any) -> Settings:
    """Test settings for a node that receives and assembles but has no model to draft with."""
    sections.setdefault("model", {"bundle": str(tmp_path / "no-model")})
    return make_settings(tmp_path, database_url, **sections)


@contextmanager
def running_node(settings: Settings, *, assembly: bool = True) -> Iterator[NodeServices]:
    """A node serving DICOM in this process; without ``assembly`` only the listener runs."""
    services = NodeServices.build(settings)
    if assembly:
        services.start()
    else:
        services.store.sweep_temporaries()
        services.listener.start()
        if services.listener_processes is not None:
            services.listener_processes.start(services.listener.port)
    try:
        yield services
    finally:
        if assembly:
            services.stop()
        else:
            if services.listener_processes is not None:
                services.listener_processes.stop()
            services.listener.stop()
            services.work_queue.close()
            services.database.engine.dispose()


def wait_for(probe: Callable[[], T], *, timeout: float = 30.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(0.05)
