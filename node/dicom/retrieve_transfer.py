"""How retrieved instances travel: transfer syntax negotiation and fitting, Move Originator.

* A C-GET requestor is the storage SCP of its own association; when it proposes a
  storage SOP class with the SCP role, its order of transfer syntaxes decides which one
  is accepted (among uncompressed and lossless syntaxes the node can write), so a
  requestor that prefers JPEG-LS lossless gets JPEG-LS instances as stored, not decoded.
* :func:`fit_to_syntaxes` sends an instance as stored when the peer accepted its
  syntax, and otherwise decodes it, or encodes it losslessly, into an accepted one.
* :func:`originate_from` makes the C-STORE sub-operations of a C-MOVE name the
  requestor's AE title as Move Originator (PS3.7 9.3.1.1), where pynetdicom names the
  node's own.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from node.dicom.export import UNCOMPRESSED_LITTLE_ENDIAN
from node.logs import log_event

logger = logging.getLogger(__name__)

#: Lossless compressed syntaxes the node can encode (pyjpegls, pylibjpeg-openjpeg, RLE).
LOSSLESS_ENCODABLE: frozenset[str] = frozenset({JPEGLSLossless, JPEG2000Lossless, RLELossless})


def _can_write(syntax: UID) -> bool:
    return not syntax.is_compressed or syntax in LOSSLESS_ENCODABLE


def prefer_requestor_syntaxes(event: Any) -> None:
    """Accept a C-GET requestor's preferred transfer syntax for the classes it stores.

    Bound to ``evt.EVT_REQUESTED`` (before the presentation contexts are negotiated).
    For each storage SOP class the requestor proposes with the SCP role, the node's
    supported syntaxes are reordered to follow the requestor's order; syntaxes the node
    could not produce from any stored instance (lossy ones) keep their place after the
    node's own order, so they are never chosen over an uncompressed one.

    Parameters
    ----------
    event
        The pynetdicom ``EVT_REQUESTED`` event of an association the node accepts.
    """
    assoc: Association = event.assoc
    try:
        retrieving = {uid for uid, item in assoc.requestor.role_selection.items()
                      if item.scp_role}
        if not retrieving:
            return
        request = assoc.requestor.primitive
        if request is None:
            return
        proposed: dict[str, list[UID]] = {}
        for cx in request.presentation_context_definition_list:
            if cx.abstract_syntax in retrieving:
                order = proposed.setdefault(str(cx.abstract_syntax), [])
                order.extend(UID(ts) for ts in cx.transfer_syntax if UID(ts) not in order)
        contexts: list[PresentationContext] = []
        for cx in assoc.acceptor.supported_contexts:
            wanted = proposed.get(str(cx.abstract_syntax))
            if not wanted or cx.abstract_syntax is None:
                contexts.append(cx)
                continue
            ours = [UID(ts) for ts in cx.transfer_syntax]
            first = [ts for ts in wanted if ts in ours and _can_write(ts)]
            syntaxes: list[str | UID] = [*first, *(ts for ts in ours if ts not in first)]
            context = build_context(cx.abstract_syntax, syntaxes)
            context.scu_role, context.scp_role = cx.scu_role, cx.scp_role
            contexts.append(context)
        assoc.acceptor.supported_contexts = contexts
    except Exception as exc:  # negotiation then runs with the node's own order
        log_event(logger, logging.WARNING, "retrieve_syntax_preference_failed",
                  error=type(exc).__name__)


def fit_to_syntaxes(dataset: Dataset, accepted: list[UID]) -> Dataset | None:
    """Return ``dataset`` in a form one of the ``accepted`` transfer syntaxes can carry.

    Parameters
    ----------
    dataset
        A stored instance, read with its file meta.
    accepted
        The transfer syntaxes the peer accepted for the instance's SOP class.

    Returns
    -------
    Dataset or None
        The instance unchanged when its syntax was accepted (or an uncompressed syntax
        of the same byte order, which pynetdicom converts to); decoded when only
        uncompressed syntaxes were accepted; losslessly encoded when the peer accepted
        only a lossless syntax the node writes (an instance without pixel data, such
        as an SR, is labelled with the accepted encapsulated syntax, whose encoding
        of it is Explicit VR Little Endian); ``None`` when none of these applies.

    Raises
    ------
    Exception
        Whatever the pixel decoder or encoder raises on a damaged instance.
    """
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    if syntax in accepted:
        return dataset
    uncompressed = [ts for ts in accepted if not ts.is_compressed]
    if not syntax.is_compressed and any(
        ts.is_little_endian == syntax.is_little_endian for ts in uncompressed
    ):
        return dataset  # pynetdicom converts between Explicit and Implicit VR
    if syntax.is_compressed and any(ts in UNCOMPRESSED_LITTLE_ENDIAN for ts in accepted):
        dataset.decompress(generate_instance_uid=False)
        return dataset
    if "PixelData" not in dataset and syntax == ExplicitVRLittleEndian:
        # Without pixel data, an encapsulated syntax encodes exactly as Explicit VR LE.
        encapsulated = next((ts for ts in accepted if ts.is_encapsulated), None)
        if encapsulated is not None:
            dataset.file_meta.TransferSyntaxUID = encapsulated
            return dataset
    target = next((ts for ts in accepted if ts in LOSSLESS_ENCODABLE), None)
    if target is None or "PixelData" not in dataset:
        return None
    if syntax.is_compressed:
        dataset.decompress(generate_instance_uid=False)
    elif not syntax.is_little_endian:
        return None
    dataset.compress(target, generate_instance_uid=False)
    return dataset


def originate_from(assoc: Association, requestor_ae: str) -> None:
    """Name ``requestor_ae`` as Move Originator on every C-STORE sent over ``assoc``.

    pynetdicom's C-MOVE service passes the node's own AE title as Move Originator
    Application Entity Title (and the C-MOVE's Message ID as Move Originator Message
    ID) to ``send_c_store``; the AE title is replaced by the C-MOVE requestor's here.

    Parameters
    ----------
    assoc
        The association to the move destination, once established.
    requestor_ae
        The calling AE title of the C-MOVE; when empty, pynetdicom's value is kept.
    """
    send = assoc.send_c_store

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        return send(dataset, msg_id=msg_id, priority=priority,
                    originator_aet=requestor_ae or originator_aet, originator_id=originator_id)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]


__all__ = ["LOSSLESS_ENCODABLE", "fit_to_syntaxes", "originate_from",
           "prefer_requestor_syntaxes"]
