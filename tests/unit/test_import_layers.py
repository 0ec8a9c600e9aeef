"""The import-layer contract in pyproject.toml, checked by the real ``lint-imports``.

Layers, top to bottom: composition roots (node.cli, node.runtime, node.listener_processes,
node.demo), the worker
process (workers.tasks, celery_app, jobs, context, heartbeat, instance_source, errors), the
node core, the inference and evaluation packages, and the vocabulary (node.states,
node.observations). A layer may import the ones below it, never one above.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _layers() -> list[list[str]]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.replace("|", ":").split(":")]
            for layer in contract["layers"]]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_code_keeps_the_layer_contract() -> None:
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_every_module_of_node_and_workers_has_a_layer() -> None:
    """A new top-level module or package must be placed in the picture, not left out of it."""
    listed = {name for layer in _layers() for name in layer}
    present = set()
    for package in ("node", "workers"):
        for path in (REPO_ROOT / package).iterdir():
            if path.suffix == ".py" and path.stem != "__init__":
                present.add(f"{package}.{path.stem}")
            elif (path / "__init__.py").is_file():
                present.add(f"{package}.{path.name}")
    assert present == listed


def _copy_of_the_code(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for package in ("node", "workers"):
        shutil.copytree(REPO_ROOT / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates",
                                                      "data", "rules"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("module", "upward_import"),
    [
        ("node/db/models.py", "workers.jobs"),  # core -> worker process
        ("node/web/app.py", "node.runtime"),  # core -> composition root
        ("node/jobs/queue.py", "workers.celery_app"),  # core -> worker process
        ("workers/context.py", "node.runtime"),  # worker process -> composition root
        ("workers/inference/preprocess.py", "node.storage"),  # leaf -> core
        ("node/observations.py", "workers.evaluation.labeler"),  # vocabulary -> leaf
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str,
                                              upward_import: str) -> None:
    root = _copy_of_the_code(tmp_path)
    target = root / module
    target.write_text(target.read_text() + f"\n\ndef _upward() -> None:\n"
                                           f"    import {upward_import}  # noqa: F401\n")
    result = _lint_imports(root)
    importer = module.removesuffix(".py").replace("/", ".")
    assert result.returncode != 0, result.stdout
    assert "0 kept, 1 broken" in result.stdout
    assert f"- {importer} -> {upward_import} (l." in result.stdout
