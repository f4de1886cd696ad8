"""The label tasks' helpers that run outside a flow too."""

from __future__ import annotations

from pathlib import Path

from airrep.config import load_config
from airrep.keys import base_llm_key
from flows.common import config_data
from infra.storage import open_store
from tasks.labels import local_llm_path


def test_a_base_llm_known_only_by_its_key_is_fetched_from_the_store(tiny_random_lm, tmp_path, monkeypatch):
    """A registered model names its base LLM by fingerprint alone (no producer's path): an
    empty path must mean 'fetch it', not the current directory."""
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "store"
    config = config_data(load_config("configs/tiny.yaml", [f"storage.uri={store}"], environ={}))
    key = base_llm_key("sha256:0123abcd")
    open_store(str(store)).put_dir(key, tiny_random_lm.path)

    path = Path(local_llm_path(config, {"path": "", "fingerprint": "sha256:0123abcd", "key": key}))

    assert path.is_relative_to(tmp_path / "cache")
    assert (path / "config.json").read_bytes() == (tiny_random_lm.path / "config.json").read_bytes()
