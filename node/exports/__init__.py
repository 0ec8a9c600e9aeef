"""Delivering reports to DICOM destinations: export rows, retries and the dead letter."""

from node.exports.service import ExportService, backoff_delay, queue_exports

__all__ = ["ExportService", "backoff_delay", "queue_exports"]
