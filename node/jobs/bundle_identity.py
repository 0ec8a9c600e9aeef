"""Which model bundle the node schedules jobs for, read without loading a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundleIdentity:
    """Name, version and Device UID of a model bundle (from its manifest)."""

    name: str
    version: str
    device_uid: str
    synthetic: bool
    licence: str
    intended_use: str

    @property
    def job_key(self) -> str:
        """The ``model_version`` a job is unique by: one draft per study and model build."""
        return self.device_uid


def read_bundle_identity(bundle_dir: Path) -> BundleIdentity | None:
    """Read ``manifest.json`` of a bundle; ``None`` when there is no bundle there.

    Raises
    ------
    ValueError
        If the manifest exists but lacks the identity fields.
    """
    manifest_path = bundle_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    try:
        return BundleIdentity(
            name=str(data["name"]),
            version=str(data["version"]),
            device_uid=str(data["device_uid"]),
            synthetic=bool(data.get("synthetic", False)),
            licence=str(data.get("licence", "")),
            intended_use=str(data.get("intended_use", "")),
        )
    except KeyError as exc:
        raise ValueError(f"bundle manifest {manifest_path} lacks {exc.args[0]!r}") from exc
