"""``[worker]`` settings for workers without the shared folder, and move-only destinations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.config import (
    CONFIG_ENV_VAR,
    ConfigError,
    DecodeEngineMode,
    InstanceSource,
    load_settings,
)
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "radnode.example.toml"


def test_shared_folder_is_the_default() -> None:
    worker = load_settings().worker
    assert worker.instance_source is InstanceSource.SHARED
    assert (worker.heartbeat_seconds, worker.lost_after_seconds,
            worker.stale_after_seconds) == (10.0, 30.0, 60.0)


def test_a_worker_is_lost_only_after_two_missed_beats() -> None:
    with pytest.raises(ConfigError, match="at least twice heartbeat_seconds"):
        load_settings(worker={"heartbeat_seconds": 10, "lost_after_seconds": 15})


def test_http_source_needs_a_node_url_and_a_token() -> None:
    with pytest.raises(ConfigError, match="needs node_url"):
        load_settings(worker={"instance_source": "http", "token": "t"})
    with pytest.raises(ConfigError, match="needs token or token_file"):
        load_settings(worker={"instance_source": "http", "node_url": "http://node:8080"})
    with pytest.raises(ConfigError, match="must be an http:// or https:// address"):
        load_settings(worker={"instance_source": "http", "node_url": "node:8080", "token": "t"})


def test_token_comes_from_the_setting_or_the_file(tmp_path: Path) -> None:
    worker = load_settings(worker={"instance_source": "http", "node_url": "https://n:8443/",
                                   "token": "rnw_abc"}).worker
    assert (worker.node_url, worker.bearer_token()) == ("https://n:8443", "rnw_abc")
    token_file = tmp_path / "worker.token"
    token_file.write_text("rnw_from_file\n", encoding="ascii")
    worker = load_settings(worker={"instance_source": "http", "node_url": "http://n",
                                   "token_file": str(token_file)}).worker
    assert worker.bearer_token() == "rnw_from_file"
    token_file.write_text("\n", encoding="ascii")
    with pytest.raises(ConfigError, match="is empty"):
        worker.bearer_token()
    token_file.unlink()
    with pytest.raises(ConfigError, match="token_file"):
        worker.bearer_token()


def test_environment_selects_the_http_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADNODE_WORKER__INSTANCE_SOURCE", "http")
    monkeypatch.setenv("RADNODE_WORKER__NODE_URL", "http://node.internal:8080")
    monkeypatch.setenv("RADNODE_WORKER__TOKEN", "rnw_env")
    worker = load_settings().worker
    assert worker.instance_source is InstanceSource.HTTP
    assert worker.bearer_token() == "rnw_env"


def test_example_configuration_with_a_remote_worker(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    token_file = tmp_path / "worker.token"
    token_file.write_text("rnw_example\n", encoding="ascii")
    remote = re.sub(r'^# (instance_source|node_url|fetch_\w+|scratch_dir) =', r"\1 =", text,
                    flags=re.M)
    remote = remote.replace('instance_source = "shared"', "", 1)
    remote = remote.replace("# token_file = \"/etc/radnode/worker.token\"",
                            f'token_file = "{token_file}"')
    config = tmp_path / "radnode.toml"
    config.write_text(remote, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    settings = load_settings()
    assert settings.worker.instance_source is InstanceSource.HTTP
    assert settings.worker.node_url == "https://radnode.internal:8443"
    assert settings.worker.bearer_token() == "rnw_example"
    assert [(d.ae_title, d.auto_export) for d in settings.destinations] == [
        ("PACS", True), ("VIEWER1", False)]


def test_decode_engine_follows_the_device_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.context import engine_wanted

    mode = load_settings().worker.decode_engine
    assert mode is DecodeEngineMode.AUTO
    assert engine_wanted(mode, "cuda:0") and not engine_wanted(mode, "cpu")
    monkeypatch.setenv("RADNODE_WORKER__DECODE_ENGINE", "on")
    assert engine_wanted(load_settings().worker.decode_engine, "cpu")
    assert not engine_wanted(DecodeEngineMode.OFF, "cuda")
    monkeypatch.setenv("RADNODE_WORKER__DECODE_ENGINE", "fast")
    with pytest.raises(ConfigError, match="decode_engine"):
        load_settings()


def test_earlier_shared_storage_key_still_loads() -> None:
    assert load_settings(worker={"shared_storage": True}).worker.instance_source \
        is InstanceSource.SHARED
    with pytest.raises(ConfigError, match='instance_source = "http"'):
        load_settings(worker={"shared_storage": False})
