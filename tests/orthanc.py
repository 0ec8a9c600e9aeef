"""A real Orthanc server for integration tests: free ports, storage in a temporary folder.

:class:`OrthancServer` writes a JSON configuration (no plugins, no HTTP authentication,
loopback only), starts ``Orthanc`` on it, waits until a C-ECHO is answered, and can be
stopped and started again on the same ports and storage. Its REST API, reached with
:mod:`urllib`, tells which instances arrived.

Example
-------
>>> with running_orthanc(tmp_path / "orthanc") as orthanc:   # doctest: +SKIP
...     send_something(orthanc.dicom_port)
...     assert uid in orthanc.sop_instance_uids()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import free_port

ORTHANC_AE = "ORTHANC"

#: The AE title of the start-up C-ECHO; always listed in ``DicomModalities`` so that
#: start-up is detected even when Orthanc refuses unknown AEs (``DicomAlwaysAllowEcho``
#: false).
PROBE_AE = "ORTHANCPROBE"


def orthanc_binary() -> str | None:
    """Path of the ``Orthanc`` executable (Debian installs it in ``/usr/sbin``)."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    return found


requires_orthanc = pytest.mark.usefixtures("orthanc_installed")
"""Marks tests that run Orthanc; they fail (never skip) when it is missing."""
requires_openssl = pytest.mark.usefixtures("openssl_installed")


class OrthancServer:
    """One Orthanc process with its own configuration, ports and storage.

    Parameters
    ----------
    folder
        Holds the configuration, the storage and index, and ``orthanc.log``.
    config
        Extra configuration keys, overriding the defaults (e.g.
        ``{"DicomAlwaysAllowStore": False}``, or :meth:`TestPki.orthanc_tls_config`).
    aet
        Orthanc's own AE title (``DicomAet``).
    probe_tls
        Client TLS context for the readiness C-ECHO when Orthanc speaks DICOM TLS.
    """

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any] | None = None,
        *,
        aet: str = ORTHANC_AE,
        probe_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.folder = folder
        self.aet = aet
        self.probe_tls = probe_tls
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.extra_config = dict(config or {})
        self._process: subprocess.Popen[bytes] | None = None

    # -- configuration --------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """Where the generated JSON configuration is written."""
        return self.folder / "orthanc.json"

    @property
    def log_path(self) -> Path:
        """Orthanc's standard output and error, appended across restarts."""
        return self.folder / "orthanc.log"

    def configuration(self) -> dict[str, Any]:
        """The configuration Orthanc is started with."""
        storage = self.folder / "storage"
        config: dict[str, Any] = {
            "Name": f"radnode-test-{self.dicom_port}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "DicomModalitiesInDatabase": False,
            "SaveJobs": False,
            "StableAge": 1,
            "ConcurrentJobs": 1,
        }
        config.update(self.extra_config)
        config["DicomModalities"] = {
            **config["DicomModalities"],
            "readiness-probe": [PROBE_AE, "127.0.0.1", 104],
        }
        return config

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start Orthanc and wait until it answers C-ECHO and HTTP.

        Raises
        ------
        RuntimeError
            When Orthanc exits or does not answer within ``timeout`` seconds
            (the end of its log is included).
        """
        if self.running:
            return
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.configuration(), indent=2))
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"Orthanc exited at start-up:\n{self._log_tail()}")
            if self._http_ready() and self.echo():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self._log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); the storage stays for a restart."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def kill(self) -> None:
        """Kill Orthanc at once (SIGKILL): a crash, or a quick end when the data is discarded."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(15)

    def restart(self) -> None:
        """Stop and start again on the same ports and storage."""
        self.stop()
        self.start()

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- probes ---------------------------------------------------------------------------

    def echo(self, calling_ae: str = PROBE_AE, timeout: float = 2.0) -> bool:
        """Whether Orthanc answers a C-ECHO with Success."""
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        tls_args = (self.probe_tls, "127.0.0.1") if self.probe_tls is not None else None
        assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title=self.aet, tls_args=tls_args)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and int(status.Status) == 0x0000
        finally:
            assoc.release()

    def _http_ready(self) -> bool:
        try:
            self.get("/system")
        except (OSError, ValueError):
            return False
        return True

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET a REST resource and decode its JSON body."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """Send ``method`` (POST, DELETE...) with ``body`` (text as is, else JSON); decode
        the JSON answer."""
        data = body.encode() if isinstance(body, str) else json.dumps(body or {}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=data if method != "DELETE" else None,
                                         method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            payload = response.read()
        return json.loads(payload) if payload.strip() else None

    def delete_instance(self, sop_instance_uid: str) -> None:
        """Delete the stored instance with this SOP Instance UID (it must be stored)."""
        [found] = self.request("POST", "/tools/lookup", sop_instance_uid) or [None]
        assert found is not None and found["Type"] == "Instance", found
        self.request("DELETE", f"/instances/{found['ID']}")

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The Part 10 file Orthanc stores for this SOP Instance UID."""
        [found] = self.request("POST", "/tools/lookup", sop_instance_uid) or [None]
        assert found is not None and found["Type"] == "Instance", found
        url = f"http://127.0.0.1:{self.http_port}/instances/{found['ID']}/file"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
            return bytes(response.read())

    def jobs(self) -> list[dict[str, Any]]:
        """Orthanc's jobs with their type, state and error."""
        return list(self.get("/jobs?expand"))

    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UIDs of every stored instance, one entry per stored copy."""
        instances = self.get("/instances?expand")
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in instances]

    def instance_count(self) -> int:
        """How many instances Orthanc holds (``/statistics``)."""
        return int(self.get("/statistics")["CountInstances"])


@contextmanager
def running_orthanc(
    folder: Path,
    config: dict[str, Any] | None = None,
    *,
    aet: str = ORTHANC_AE,
    probe_tls: ssl.SSLContext | None = None,
) -> Iterator[OrthancServer]:
    """Start an :class:`OrthancServer` in ``folder``; kill it on exit (the data is discarded)."""
    server = OrthancServer(folder, config, aet=aet, probe_tls=probe_tls)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass(frozen=True)
class TestPki:
    """A throw-away certificate authority with a server (127.0.0.1) and a client certificate."""

    __test__ = False  # not a test class, despite the name

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def orthanc_tls_config(self, *, require_client_cert: bool = True) -> dict[str, Any]:
        """Orthanc keys for DICOM TLS with these certificates."""
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.server_cert),
            "DicomTlsPrivateKey": str(self.server_key),
            "DicomTlsTrustedCertificates": str(self.ca_file),
            "DicomTlsRemoteCertificateRequired": require_client_cert,
        }

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting the CA and presenting the client certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self.ca_file)
        context.load_cert_chain(certfile=self.client_cert, keyfile=self.client_key)
        return context


def make_test_pki(folder: Path) -> TestPki:
    """Create a CA, a server certificate for 127.0.0.1 and a client one with ``openssl``."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=radnode test CA")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=RADNODE")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", subject)
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra)
    return TestPki(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                   folder / "client.pem", folder / "client.key")
