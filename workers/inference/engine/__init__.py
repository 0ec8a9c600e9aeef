"""GPU-first decode engine: static KV cache, graph-captured steps, continuous batching."""

from workers.inference.engine.engine import DecodeEngine, DecodeOutput, DecodeRequest, EngineStats
from workers.inference.engine.sampling import SamplingSettings
from workers.inference.engine.weights import UnsupportedModelError, unsupported_reason

__all__ = [
    "DecodeEngine",
    "DecodeOutput",
    "DecodeRequest",
    "EngineStats",
    "SamplingSettings",
    "UnsupportedModelError",
    "unsupported_reason",
]
