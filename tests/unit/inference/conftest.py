"""Shared tiny checkpoints and imported bundles (built once per test session)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.fixtures.checkpoints import (  # noqa: E402
    CxrLlavaFixture,
    LlavaRadFixture,
    build_cxr_llava,
    build_llava_rad,
)
from workers.inference.bundle import LoadedBundle, load_bundle  # noqa: E402
from workers.inference.importers.cxr_llava import import_cxr_llava  # noqa: E402
from workers.inference.importers.llava_rad import import_llava_rad  # noqa: E402


@dataclass
class Imported:
    """A source fixture and the bundle imported from it."""

    bundle_dir: Path
    progress: list[tuple[str, float]]


@pytest.fixture(scope="session")
def llava_rad_source(tmp_path_factory: pytest.TempPathFactory) -> LlavaRadFixture:
    return build_llava_rad(tmp_path_factory.mktemp("llava-rad-src"))


@pytest.fixture(scope="session")
def llava_rad_imported(
    llava_rad_source: LlavaRadFixture, tmp_path_factory: pytest.TempPathFactory
) -> Imported:
    events: list[tuple[str, float]] = []
    out = tmp_path_factory.mktemp("llava-rad-out") / "bundle"
    import_llava_rad(
        llava_rad_source.llava_rad_dir,
        llava_rad_source.base_dir,
        out,
        progress=lambda message, fraction: events.append((message, fraction)),
    )
    return Imported(out, events)


@pytest.fixture(scope="session")
def llava_rad_bundle(llava_rad_imported: Imported) -> LoadedBundle:
    return load_bundle(llava_rad_imported.bundle_dir)


@pytest.fixture(scope="session")
def cxr_source(tmp_path_factory: pytest.TempPathFactory) -> CxrLlavaFixture:
    return build_cxr_llava(tmp_path_factory.mktemp("cxr-src"))


@pytest.fixture(scope="session")
def cxr_imported(cxr_source: CxrLlavaFixture, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    events: list[tuple[str, float]] = []
    out = tmp_path_factory.mktemp("cxr-out") / "bundle"
    import_cxr_llava(cxr_source.src_dir, out, progress=lambda m, f: events.append((m, f)))
    return Imported(out, events)


@pytest.fixture(scope="session")
def cxr_bundle(cxr_imported: Imported) -> LoadedBundle:
    return load_bundle(cxr_imported.bundle_dir)
