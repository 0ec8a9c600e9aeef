"""DICOM over TLS with mutual authentication (PS3.15 Annex B)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from node.db.models import Instance
from node.runtime import NodeServices
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_net import exchange, receiver_settings, running_node


@dataclass(frozen=True)
class Pki:
    """A private CA with a server and a client certificate, as PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _issue(
    subject: str,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A hospital CA, the node's server certificate, a modality's client certificate,
    and a client certificate from an unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _ca("Radnode Test CA")
    server_cert, server_key = _issue("localhost", ca_cert.subject, ca_key, server=True)
    client_cert, client_key = _issue("MODALITY1", ca_cert.subject, ca_key, server=False)
    other_ca, other_key = _ca("Somebody Else CA")
    stranger_cert, stranger_key = _issue("STRANGER", other_ca.subject, other_key, server=False)
    return Pki(
        ca_cert=_write_cert(folder / "ca.pem", ca_cert),
        server_cert=_write_cert(folder / "server.pem", server_cert),
        server_key=_write_key(folder / "server.key", server_key),
        client_cert=_write_cert(folder / "client.pem", client_cert),
        client_key=_write_key(folder / "client.key", client_key),
        stranger_cert=_write_cert(folder / "stranger.pem", stranger_cert),
        stranger_key=_write_key(folder / "stranger.key", stranger_key),
    )


@pytest.fixture
def node(tmp_path: Path, pki: Pki) -> Iterator[NodeServices]:
    """A node that speaks only TLS and requires a client certificate from its CA."""
    tls = {
        "enabled": True,
        "cert_file": str(pki.server_cert),
        "key_file": str(pki.server_key),
        "ca_file": str(pki.ca_cert),
        "require_client_cert": True,
    }
    settings = receiver_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'radnode.db'}",
        dicom={"tls": tls, "acse_timeout": 5, "network_timeout": 5},
    )
    with running_node(settings) as services:
        yield services


def _client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if cert is not None and key is not None:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


def test_client_with_certificate_can_echo_and_store(node: NodeServices, pki: Pki) -> None:
    """A modality presenting a certificate from the CA echoes and stores over TLS."""
    context = _client_context(pki, pki.client_cert, pki.client_key)
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    result = exchange(
        node.listener.port, [None, ds], sop_classes=[DX_FOR_PRESENTATION],
        tls=(context, "localhost"),
    )
    assert result.established
    assert result.statuses == [0x0000, 0x0000]
    with node.database.sessions() as session:
        assert session.scalars(select(Instance.sop_instance_uid)).all() == [ds.SOPInstanceUID]


def test_client_without_certificate_is_refused(node: NodeServices, pki: Pki) -> None:
    """A TLS client that presents no certificate gets no association."""
    context = _client_context(pki, None, None)
    result = exchange(node.listener.port, [None], tls=(context, "localhost"))
    assert not result.established
    assert result.statuses == []


def test_client_with_certificate_from_other_ca_is_refused(node: NodeServices, pki: Pki) -> None:
    """A certificate the node's CA did not issue is not enough."""
    context = _client_context(pki, pki.stranger_cert, pki.stranger_key)
    result = exchange(node.listener.port, [None], tls=(context, "localhost"))
    assert not result.established


def test_plaintext_client_is_refused(node: NodeServices, pki: Pki) -> None:
    """An association attempt without TLS fails, and TLS clients are served afterwards."""
    assert not exchange(node.listener.port, [None]).established
    context = _client_context(pki, pki.client_cert, pki.client_key)
    assert exchange(node.listener.port, [None], tls=(context, "localhost")).statuses == [0]


def test_silent_connection_does_not_block_tls_clients(node: NodeServices, pki: Pki) -> None:
    """A TCP peer that connects and never starts the TLS handshake does not stall others."""
    context = _client_context(pki, pki.client_cert, pki.client_key)
    with socket.create_connection(("127.0.0.1", node.listener.port)):
        result = exchange(node.listener.port, [None], tls=(context, "localhost"))
        assert result.statuses == [0x0000]


@pytest.fixture
def bound_node(tmp_path: Path, pki: Pki) -> Iterator[NodeServices]:
    """A TLS node naming its peers: each client certificate is bound to its AE."""
    tls = {"enabled": True, "cert_file": str(pki.server_cert),
           "key_file": str(pki.server_key), "ca_file": str(pki.ca_cert),
           "require_client_cert": True}
    settings = receiver_settings(
        tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}",
        dicom={"tls": tls, "acse_timeout": 5, "network_timeout": 5,
               "peers": [{"ae_title": "MODALITY1"}, {"ae_title": "MODALITY2"},
                         {"ae_title": "WARD_DX", "tls_common_name": "MODALITY1"}]},
    )
    with running_node(settings) as services:
        yield services


def test_certificate_is_bound_to_its_ae(bound_node: NodeServices, pki: Pki) -> None:
    """The certificate issued to MODALITY1 serves MODALITY1 (and WARD_DX, configured to
    use it) but not MODALITY2: A-ASSOCIATE-RJ 1/1/3."""
    context = _client_context(pki, pki.client_cert, pki.client_key)
    port = bound_node.listener.port
    own = exchange(port, [None], calling_ae="MODALITY1", tls=(context, "localhost"))
    assert own.statuses == [0x0000]
    named = exchange(port, [None], calling_ae="WARD_DX", tls=(context, "localhost"))
    assert named.statuses == [0x0000]
    other = exchange(port, [None], calling_ae="MODALITY2", tls=(context, "localhost"))
    assert other.rejected and other.reject is not None
    assert (other.reject.result, other.reject.diagnostic) == (0x01, 0x03)
