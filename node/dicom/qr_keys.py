"""Query/Retrieve keys: levels, the keys the node supports, queries and their results.

Shared by the DIMSE Query/Retrieve SCP (:mod:`node.dicom.qr`), the database matching
(:mod:`node.dicom.qr_query`) and DICOMweb (:mod:`node.web.dicomweb`).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

#: SOP class reported for the node's report SRs (the SR template's default IOD).
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


class QueryError(ValueError):
    """A query that cannot be matched: unknown level or a malformed key value."""


class QueryLevel(enum.IntEnum):
    """Query/Retrieve levels, from the top of the hierarchy down."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def parse(cls, value: str) -> QueryLevel:
        """Read a (0008,0052) Query/Retrieve Level value.

        Raises
        ------
        QueryError
            If the value is not PATIENT, STUDY, SERIES or IMAGE.
        """
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise QueryError(f"unsupported query/retrieve level {value!r}") from None


class Matching(enum.Enum):
    """How a key's value is matched."""

    TEXT = "text"
    """Single value or wildcards, case-sensitive."""
    PERSON = "person"
    """Single value or wildcards, case-insensitive."""
    DATE = "date"
    """Single value or range."""
    TIME = "time"
    """Single value or range."""
    UID = "uid"
    """Single value or list of UIDs."""
    NUMBER = "number"
    """Single integer value."""
    MODALITIES = "modalities"
    """Any listed modality among the study's series."""
    RETURN_ONLY = "return"
    """Returned, never matched."""


@dataclass(frozen=True)
class KeyDefinition:
    """A supported key: its level in the hierarchy and how it is matched."""

    keyword: str
    level: QueryLevel
    matching: Matching


def _keys(level: QueryLevel, **matchings: Matching) -> dict[str, KeyDefinition]:
    return {kw: KeyDefinition(kw, level, m) for kw, m in matchings.items()}


#: Every key the node matches or returns, by keyword.
SUPPORTED_KEYS: dict[str, KeyDefinition] = {
    **_keys(
        QueryLevel.PATIENT,
        PatientID=Matching.TEXT,
        PatientName=Matching.PERSON,
        PatientBirthDate=Matching.DATE,
        PatientSex=Matching.TEXT,
        NumberOfPatientRelatedStudies=Matching.RETURN_ONLY,
        NumberOfPatientRelatedSeries=Matching.RETURN_ONLY,
        NumberOfPatientRelatedInstances=Matching.RETURN_ONLY,
    ),
    **_keys(
        QueryLevel.STUDY,
        StudyInstanceUID=Matching.UID,
        StudyDate=Matching.DATE,
        StudyTime=Matching.TIME,
        AccessionNumber=Matching.TEXT,
        StudyID=Matching.TEXT,
        StudyDescription=Matching.TEXT,
        ReferringPhysicianName=Matching.PERSON,
        ModalitiesInStudy=Matching.MODALITIES,
        NumberOfStudyRelatedSeries=Matching.RETURN_ONLY,
        NumberOfStudyRelatedInstances=Matching.RETURN_ONLY,
    ),
    **_keys(
        QueryLevel.SERIES,
        SeriesInstanceUID=Matching.UID,
        Modality=Matching.TEXT,
        SeriesNumber=Matching.NUMBER,
        SeriesDescription=Matching.TEXT,
        BodyPartExamined=Matching.TEXT,
        NumberOfSeriesRelatedInstances=Matching.RETURN_ONLY,
    ),
    **_keys(
        QueryLevel.IMAGE,
        SOPInstanceUID=Matching.UID,
        SOPClassUID=Matching.UID,
        InstanceNumber=Matching.NUMBER,
        Rows=Matching.NUMBER,
        Columns=Matching.NUMBER,
        ViewPosition=Matching.TEXT,
        ImageLaterality=Matching.TEXT,
        AvailableTransferSyntaxUID=Matching.UID,
        CompletionFlag=Matching.TEXT,
        VerificationFlag=Matching.TEXT,
        ContentDate=Matching.DATE,
        ContentTime=Matching.TIME,
    ),
}

#: The unique key of each level.
UNIQUE_KEYS: dict[QueryLevel, str] = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}

Match = dict[str, Any]
"""One matching entity: keyword to value (``str``, ``int``, ``list[str]`` or ``None``)."""


def keys_for_level(level: QueryLevel) -> list[str]:
    """Keywords that have values at ``level``: its own keys and those of the levels above."""
    return [kw for kw, key in SUPPORTED_KEYS.items() if key.level <= level]


@dataclass(frozen=True)
class Query:
    """A C-FIND or QIDO-RS query.

    Parameters
    ----------
    level
        What each match is: a patient, study, series or instance.
    filters
        Keyword to DICOM string value (multiple values ``\\``-separated). Keys of levels
        below ``level``, unsupported keys and empty values do not restrict the matches.
    return_keys
        Keywords wanted in each match; ``None`` for every key of the level. Counts and
        ``ModalitiesInStudy`` are computed only when wanted.
    limit, offset
        The page of matches (in a stable order); ``None`` for no limit.
    """

    level: QueryLevel
    filters: Mapping[str, str]
    return_keys: Collection[str] | None = None
    limit: int | None = None
    offset: int = 0

    def wants(self, keyword: str) -> bool:
        """Whether ``keyword`` is to be returned."""
        return self.return_keys is None or keyword in self.return_keys


@dataclass(frozen=True)
class StoredObject:
    """A stored instance (an indexed instance or a report SR) to be retrieved."""

    study_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    """``None`` for report SRs (read it from the file)."""
    path: str
    """Relative to the storage root."""
    is_report: bool


def match_dataset(match: Mapping[str, Any], keywords: Iterable[str]) -> Dataset:
    """Build a dataset of the ``keywords`` of ``match`` (empty where it has no value).

    Specific Character Set is ISO_IR 192 (UTF-8) when a value is not plain ASCII. A
    stored value that is invalid for its VR is returned empty.
    """
    dataset = Dataset()
    for keyword in keywords:
        value = match.get(keyword)
        try:
            setattr(dataset, keyword, value)
        except (ValueError, TypeError, OverflowError):
            setattr(dataset, keyword, None)
    texts = [v for v in match.values() if isinstance(v, str)]
    if any(not text.isascii() for text in texts):
        dataset.SpecificCharacterSet = "ISO_IR 192"
    return dataset


__all__ = [
    "COMPREHENSIVE_SR",
    "SUPPORTED_KEYS",
    "UNIQUE_KEYS",
    "KeyDefinition",
    "Match",
    "Matching",
    "Query",
    "QueryError",
    "QueryLevel",
    "StoredObject",
    "keys_for_level",
    "match_dataset",
]
