"""Radiology reports as DICOM Structured Reports.

One builder makes every SR the node writes, through highdicom, from the declarative template
in :mod:`dicom_templates`:

* :func:`build_draft_sr` — the model's draft (PARTIAL / UNVERIFIED / PRELIMINARY);
* :func:`build_final_sr` — a radiologist's signed report or amendment
  (COMPLETE / VERIFIED / FINAL, with a predecessor);
* :func:`sr_to_bytes`, :func:`write_sr`, :func:`read_sr` — Part 10 encoding and decoding;
* :func:`read_report_content` — what a report says, read back from its SR;
  :func:`read_amendment_reason` — why an amendment was made.
"""

from node.reports.sr_builder import (
    SPECIFIC_CHARACTER_SET,
    build_draft_sr,
    build_final_sr,
    latest_verification,
    read_sr,
    sr_to_bytes,
    write_sr,
)
from node.reports.sr_content import (
    ModelProvenance,
    ReportContent,
    Verifier,
    read_amendment_reason,
    read_report_content,
)
from node.reports.sr_template import (
    PRESENCE_VALUES,
    Presence,
    ReportTemplate,
    load_report_template,
)

__all__ = [
    "PRESENCE_VALUES",
    "SPECIFIC_CHARACTER_SET",
    "ModelProvenance",
    "Presence",
    "ReportContent",
    "ReportTemplate",
    "Verifier",
    "build_draft_sr",
    "build_final_sr",
    "latest_verification",
    "load_report_template",
    "read_amendment_reason",
    "read_report_content",
    "read_sr",
    "sr_to_bytes",
    "write_sr",
]
