"""Per-process worker state: the database, and the model loaded once, lazily.

Nothing here runs at import time, so a Celery parent process never touches
CUDA or ONNX Runtime; the first task in a process loads the bundle.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from node.config import DecodeEngineMode, InstanceSource, Settings, load_settings
from node.db.engine import Database
from node.jobs.bundle_identity import read_bundle_identity
from node.reports.sr_content import ModelProvenance
from node.storage import InstanceStore
from workers.errors import ModelUnavailableError, PermanentJobError
from workers.instance_source import HttpInstances, InstanceProvider, SharedFolderInstances
from workers.jobs import DraftLike, JobContext

_load_lock = threading.Lock()


def resolve_device(requested: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_wanted(mode: DecodeEngineMode, device: str) -> bool:
    """Whether to generate through the decode engine on ``device`` (already resolved)."""
    if mode is DecodeEngineMode.AUTO:
        return device.startswith("cuda")
    return mode is DecodeEngineMode.ON


class BundleDrafter:
    """Load a model bundle on first use and draft studies with it (thread-safe).

    Parameters
    ----------
    bundle_dir
        The bundle folder.
    device
        ``auto``, ``cpu`` or ``cuda[:N]``.
    generation_overrides
        The site's generation values (``[model]``), over the bundle's.
    seed
        Sampling seed.
    decode_engine
        Whether to generate through the decode engine (see :func:`engine_wanted`).
    engine_batch
        The engine's slots (the worker's concurrent drafts).
    """

    def __init__(self, bundle_dir: Path, device: str = "auto",
                 generation_overrides: dict[str, float | int] | None = None,
                 seed: int = 0, *, decode_engine: DecodeEngineMode = DecodeEngineMode.AUTO,
                 engine_batch: int = 4) -> None:
        self.bundle_dir = bundle_dir
        self.device = device
        self.generation_overrides = generation_overrides or {}
        self.seed = seed
        self.decode_engine = decode_engine
        self.engine_batch = engine_batch
        self._bundle: Any = None
        self.broken_reason: str | None = None
        """Why the bundle failed to load (then this drafter never tries again)."""

    def bundle(self) -> Any:
        """Return the loaded bundle, loading it on the first call.

        Raises
        ------
        ModelUnavailableError
            When the bundle fails to load; the drafter is then broken (the worker's
            heartbeat says why) and every later call raises at once.
        """
        if self._bundle is None:
            with _load_lock:
                if self.broken_reason is not None:
                    raise ModelUnavailableError(self.broken_reason)
                if self._bundle is None:
                    try:
                        self._bundle = self._load()
                    except Exception as exc:
                        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        self.broken_reason = (f"model bundle {self.bundle_dir} failed to "
                                              f"load: {first}")[:1000]
                        raise ModelUnavailableError(self.broken_reason) from exc
        return self._bundle

    def _load(self) -> Any:
        from workers.inference.bundle import load_bundle

        device = resolve_device(self.device)
        return load_bundle(
            self.bundle_dir, device=device,
            decode_engine=engine_wanted(self.decode_engine, device),
            engine_batch=self.engine_batch,
            engine_required=self.decode_engine is DecodeEngineMode.ON,
            engine_max_new_tokens=int(self.generation_overrides.get("max_new_tokens", 0)) or None)

    def __call__(self, paths: Sequence[Path], indication: str | None) -> DraftLike:
        from workers.inference.drafting import draft_study

        if not paths:
            raise PermanentJobError("the study has no stored instances")
        bundle = self.bundle()
        generation = bundle.manifest.generation.with_overrides(self.generation_overrides)
        result: DraftLike = draft_study(list(paths), bundle, indication=indication,
                                        generation=generation, seed=self.seed)
        return result


def bundle_problem(bundle_dir: Path) -> str | None:
    """Why the model bundle at ``bundle_dir`` cannot be used, without loading it.

    Reads the manifest and checks that every file it lists is present (sizes and
    hashes are left to ``radnode model verify``).

    Returns
    -------
    str or None
        One line naming the path and the problem; ``None`` when the bundle looks whole.
    """
    from workers.inference.manifest import MANIFEST_FILENAME, BundleManifest

    if not (bundle_dir / MANIFEST_FILENAME).is_file():
        return f"no model bundle at {bundle_dir} (no {MANIFEST_FILENAME})"
    try:
        manifest = BundleManifest.load(bundle_dir)
    except Exception as exc:  # noqa: BLE001 - any parse or validation error makes it unusable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"model bundle at {bundle_dir} has an unreadable manifest: {first}"
    missing = sorted(rel for rel in manifest.files if not (bundle_dir / rel).is_file())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                           if len(missing) > 3 else "")
        return f"model bundle at {bundle_dir} lacks {shown}"
    return None


def build_job_context(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    drafter: Any | None = None,
) -> JobContext:
    """Assemble a :class:`JobContext` from settings.

    Parameters
    ----------
    settings
        Database, storage, model and job policy.
    sessions
        An existing session factory (the node's own, in embedded mode).
    drafter
        A drafter to use instead of loading ``model.bundle``.

    Raises
    ------
    RuntimeError
        If no model bundle is installed at ``model.bundle``.
    """
    identity = read_bundle_identity(settings.model.bundle)
    if identity is None:
        raise RuntimeError(f"no model bundle at {settings.model.bundle}")
    if sessions is None:
        sessions = Database.from_settings(settings).sessions
    store = InstanceStore(settings.storage.root, min_free_mb=settings.storage.min_free_mb,
                          max_used_percent=settings.storage.max_used_percent)
    return JobContext(
        sessions=sessions,
        store=store,
        drafter=drafter or BundleDrafter(settings.model.bundle, settings.worker.device,
                                         settings.model.generation_overrides(),
                                         settings.model.seed,
                                         decode_engine=settings.worker.decode_engine,
                                         engine_batch=settings.worker.concurrency),
        model=ModelProvenance(name=identity.name[:64], version=identity.version[:64],
                              manufacturer="radnode", device_uid=identity.device_uid,
                              synthetic=identity.synthetic),
        policy=settings.jobs,
        destinations=settings.destinations,
        quality=settings.quality,
        instances=build_instance_provider(settings, store),
    )


def build_instance_provider(settings: Settings, store: InstanceStore) -> InstanceProvider:
    """The shared storage folder, or the node's WADO-RS service (``[worker] instance_source``).

    Raises
    ------
    ConfigError
        When the worker's token file cannot be read.
    """
    worker = settings.worker
    if worker.instance_source is InstanceSource.SHARED:
        return SharedFolderInstances(store)
    ssl_context = None
    if worker.ca_file is not None:
        ssl_context = ssl.create_default_context(cafile=str(worker.ca_file))
    return HttpInstances(worker.node_url, worker.bearer_token(),
                         timeout_seconds=worker.fetch_timeout_seconds,
                         attempts=worker.fetch_attempts, scratch_dir=worker.scratch_dir,
                         ssl_context=ssl_context)


def preload_model() -> str | None:
    """Load this process's model now (before a worker consumes anything).

    Returns
    -------
    str or None
        One line naming the bundle and why it failed to load; ``None`` when loaded.
    """
    drafter = process_job_context().drafter
    if not isinstance(drafter, BundleDrafter):
        return None
    try:
        drafter.bundle()
    except ModelUnavailableError as exc:
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return None


@cache
def process_job_context() -> JobContext:
    """The job context of this worker process (built once, from the environment)."""
    return build_job_context(load_settings())
