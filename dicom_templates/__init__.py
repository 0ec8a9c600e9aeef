"""Declarative DICOM SR content templates and code tables (data, not code).

The files next to this module describe what radnode writes into its Structured Reports:

``chest_xr_report.toml``
    Shape and wording of the chest radiograph report (TID 2000-shaped), its structural codes
    and the local coding scheme it declares.
``chexpert_codes.toml``
    The 14 CheXpert observations, each with its code, and the presence codes.

:mod:`node.reports` reads them; nothing here imports the node.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

CHEST_XR_REPORT = "chest_xr_report.toml"
CHEXPERT_CODES = "chexpert_codes.toml"


def template_file(name: str) -> Traversable:
    """Return the packaged data file ``name`` (e.g. :data:`CHEST_XR_REPORT`).

    Raises
    ------
    FileNotFoundError
        If there is no such file in this package.
    """
    resource = files(__name__).joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(f"no SR template data file named {name!r}")
    return resource


def load_toml(name: str) -> dict[str, Any]:
    """Parse the packaged TOML file ``name`` and return its table."""
    with template_file(name).open("rb") as stream:
        return tomllib.load(stream)


__all__ = ["CHEST_XR_REPORT", "CHEXPERT_CODES", "load_toml", "template_file"]
