"""A tiny synthetic bundle trained once per test run (a few seconds), shared by test modules."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from workers.inference.synth.train import REDUCED_CONFIG, synthesize_demo_bundle

DEMO_BUNDLE = Path(__file__).resolve().parents[3] / "var" / "models" / "demo"
"""Where the full demonstration bundle is written by the setup (``make``)."""


@functools.cache
def tiny_synth_bundle() -> Path:
    """Train :data:`REDUCED_CONFIG` once per process and return the bundle folder."""
    root = Path(tempfile.mkdtemp(prefix="radnode-tiny-synth-"))
    return synthesize_demo_bundle(root / "bundle", seed=0, config=REDUCED_CONFIG)
