"""A site's sampling settings reach the drafts the workers make."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.config import DecodeEngineMode, load_settings
from tests.conftest import DEMO_BUNDLE_DIR, REPO_ROOT
from workers.context import BundleDrafter
from workers.inference.synth.studies import write_demo_studies


def test_generation_overrides_come_from_settings_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the values a site sets override the bundle's defaults."""
    assert load_settings().model.generation_overrides() == {}
    monkeypatch.setenv("RADNODE_MODEL__TEMPERATURE", "0.4")
    monkeypatch.setenv("RADNODE_MODEL__TOP_P", "0.8")
    assert load_settings().model.generation_overrides() == {"temperature": 0.4, "top_p": 0.8}


@pytest.mark.usefixtures("demo_bundle_built")
def test_drafter_applies_the_site_token_limit(tmp_path: Path) -> None:
    """A site limit on new tokens shortens the draft the worker's drafter makes."""
    study = write_demo_studies(tmp_path, count=1, seed=7, with_lateral=False)[0]
    full = BundleDrafter(DEMO_BUNDLE_DIR, "cpu")([study.frontal], None)
    limited = BundleDrafter(DEMO_BUNDLE_DIR, "cpu", {"max_new_tokens": 4})([study.frontal], None)
    assert full.to_json_dict()["tokens"]["generated"] > 4
    assert limited.to_json_dict()["tokens"]["generated"] <= 4


@pytest.mark.usefixtures("demo_bundle_built")
def test_decode_engine_drafts_what_transformers_drafts(tmp_path: Path) -> None:
    """Concurrent drafts through the engine equal one-at-a-time ``model.generate`` drafts."""
    studies = write_demo_studies(tmp_path, count=4, seed=11, with_lateral=False)
    plain = BundleDrafter(DEMO_BUNDLE_DIR, "cpu", decode_engine=DecodeEngineMode.OFF)
    batched = BundleDrafter(DEMO_BUNDLE_DIR, "cpu", decode_engine=DecodeEngineMode.ON,
                            engine_batch=3)
    expected = [plain([s.frontal], None).raw_text for s in studies]
    with ThreadPoolExecutor(max_workers=4) as pool:
        drafted = list(pool.map(lambda s: batched([s.frontal], None).raw_text, studies))
    assert batched.bundle().engine is not None and plain.bundle().engine is None
    assert drafted == expected
    assert all(text.strip() for text in drafted)
    assert batched.bundle().engine.engine.stats.requests == len(studies)


@pytest.mark.usefixtures("demo_bundle_built")
def test_engine_parity_check_passes_on_the_cpu(tmp_path: Path) -> None:
    """The device parity script (bench/engine_parity.py) runs and agrees on the CPU."""
    out = tmp_path / "parity.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "engine_parity.py"), str(DEMO_BUNDLE_DIR),
         "--device", "cpu", "--images", "6", "--slots", "3", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["identical"] == report["images"] == 6
    assert report["encoder_backend"] == "onnx"


@pytest.mark.usefixtures("demo_bundle_built")
def test_site_token_limit_above_the_bundles_reaches_the_engine() -> None:
    """A site allowing more new tokens than the bundle sizes the engine for them."""
    manifest_limit = BundleDrafter(DEMO_BUNDLE_DIR, "cpu").bundle().manifest.generation
    wider = BundleDrafter(DEMO_BUNDLE_DIR, "cpu",
                          {"max_new_tokens": manifest_limit.max_new_tokens + 64},
                          decode_engine=DecodeEngineMode.ON)
    engine = wider.bundle().engine
    assert engine is not None
    assert engine.engine.max_new_tokens == manifest_limit.max_new_tokens + 64


@pytest.mark.usefixtures("demo_bundle_built")
def test_an_llm_the_engine_cannot_run_is_refused_only_when_the_engine_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``on`` refuses such a bundle; ``auto`` drafts it with ``model.generate``."""
    from workers.inference import bundle as bundle_module
    from workers.inference.engine import weights

    monkeypatch.setattr(weights, "unsupported_reason", lambda model: "a decoder of another kind")
    with pytest.raises(bundle_module.BundleError, match="another kind"):
        bundle_module.load_bundle(DEMO_BUNDLE_DIR, decode_engine=True)
    loaded = bundle_module.load_bundle(DEMO_BUNDLE_DIR, decode_engine=True,
                                       engine_required=False)
    assert loaded.engine is None
