"""What every section of the settings shares: the error, the section base, AE titles."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


class ConfigError(ValueError):
    """The configuration file or environment holds an invalid value."""


def check_ae_title(value: str) -> str:
    """``value`` without surrounding blanks, when it is a valid DICOM AE title."""
    stripped = value.strip()
    if not stripped or not AE_TITLE_PATTERN.match(value):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return stripped


class Section(BaseModel):
    """A section of the settings: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
