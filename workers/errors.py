"""Which drafting failures are worth retrying."""

from __future__ import annotations


class PermanentJobError(Exception):
    """Retrying cannot help (bad input, no usable image): fail the job at once."""


class InstanceFetchError(Exception):
    """A worker without the shared folder could not fetch an instance from the node
    (unreachable, refused, or not the instance asked for). Transient: the job is retried
    with back-off until its attempts run out."""


class ModelUnavailableError(Exception):
    """This worker's model bundle cannot be loaded: the worker is broken, not the job.
    The job goes back to the queue unchanged (no attempt counted) for another worker."""


def is_permanent(exc: BaseException) -> bool:
    """Return whether ``exc`` is a permanent failure.

    Deterministic input errors are permanent: undecodable pixels, missing attributes
    (pydicom's ``AttributeError``, an unreadable DICOM file), images of several patients
    or studies (:class:`~workers.inference.drafting.MixedStudyError`, checked before the
    model runs; :class:`~node.reports.sr_builder.EvidenceError`); everything else
    (broker or database hiccups, GPU out of memory, a missing shared folder, a node
    that cannot be reached to fetch instances from) is
    retried with back-off until the attempts run out.
    """
    from pydicom.errors import InvalidDicomError

    from node.reports.sr_builder import EvidenceError
    from workers.inference.drafting import MixedStudyError, NoFrontalImageError
    from workers.inference.preprocess import ImageDecodeError

    return isinstance(exc, PermanentJobError | ImageDecodeError | NoFrontalImageError
                      | MixedStudyError | EvidenceError | InvalidDicomError | AttributeError)
