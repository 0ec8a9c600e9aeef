"""Which calling AEs the listener accepts, from where, and what each may do.

Configured by ``[[dicom.peers]]`` (per-AE permissions) and ``dicom.allowed_calling_aes``
(the older plain list: those AEs may do everything). With neither, the node is open: any
AE may store, query and retrieve. Once AEs are named, a TLS client certificate is bound
to the AE it was issued for: its subject common name must be the peer's
``tls_common_name``, or its AE title.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from node.config import DicomPeer, DicomSettings


class Permission(enum.Enum):
    """What a calling AE may ask of the node."""

    STORE = "store"
    """C-STORE."""
    QUERY = "query"
    """C-FIND."""
    RETRIEVE = "retrieve"
    """C-GET, and C-MOVE to a configured destination."""


@dataclass(frozen=True)
class Grant:
    """One calling AE's permissions and where it may connect from."""

    permissions: frozenset[Permission]
    host: str | None = None
    tls_common_name: str | None = None


_EVERYTHING = Grant(frozenset(Permission))


def _grant(peer: DicomPeer) -> Grant:
    flags = {Permission.STORE: peer.store, Permission.QUERY: peer.query,
             Permission.RETRIEVE: peer.retrieve}
    return Grant(frozenset(p for p, on in flags.items() if on), peer.host,
                 peer.tls_common_name)


class AccessPolicy:
    """The listener's access rules.

    Parameters
    ----------
    settings
        The ``[dicom]`` section.
    """

    def __init__(self, settings: DicomSettings) -> None:
        self._grants: dict[str, Grant] = {ae: _EVERYTHING for ae in settings.allowed_calling_aes}
        self._grants.update({peer.ae_title: _grant(peer) for peer in settings.peers})
        self.open = not self._grants
        """No AE is named: every AE is accepted with every permission."""

    def grant(self, calling_ae: str) -> Grant | None:
        """The permissions of ``calling_ae``; ``None`` when it is not accepted."""
        if self.open:
            return _EVERYTHING
        return self._grants.get(calling_ae.strip())

    def allows(self, calling_ae: str, permission: Permission) -> bool:
        """Whether ``calling_ae`` may use ``permission``."""
        grant = self.grant(calling_ae)
        return grant is not None and permission in grant.permissions

    def refusal(self, calling_ae: str, address: str, *, tls: bool,
                certificate_name: str | None) -> str | None:
        """Why an association request from ``calling_ae`` at ``address`` is refused.

        Parameters
        ----------
        calling_ae
            The Calling AE Title of the A-ASSOCIATE-RQ.
        address
            The peer's IP address.
        tls
            Whether the connection is TLS.
        certificate_name
            The subject common name of the peer's client certificate, if it sent one.

        Returns
        -------
        str or None
            The reason, or ``None`` when the request may proceed.
        """
        grant = self.grant(calling_ae)
        if grant is None:
            return "calling AE title not accepted"
        if grant.host is not None and grant.host != address:
            return "calling AE title not accepted from this address"
        if tls and certificate_name is not None and not self.open:
            bound = grant.tls_common_name or calling_ae.strip()
            if certificate_name != bound:
                return "client certificate was issued to another AE"
        return None
