"""After a model swap the server hands the memory the old model freed back to the OS
(reliability row 25: RSS flat over a 30-minute soak with a swap every 5 minutes)."""

from __future__ import annotations

import threading

from serving import model_holder
from serving.model_holder import ModelHolder, return_freed_memory
from serving.testing import copy_bundle, copy_models


def test_a_swap_returns_the_old_models_memory(models_dir, tmp_path, monkeypatch):
    models = copy_models(models_dir, tmp_path / "models")
    copy_bundle(models, "v1", "v2")
    released = threading.Event()
    monkeypatch.setattr(model_holder, "RELEASE_AFTER_SWAP_S", 0.01)
    monkeypatch.setattr(model_holder, "return_freed_memory", released.set)
    holder = ModelHolder(models, threads=1)
    try:
        holder.load_current()
        released.clear()
        holder.reload("v2")
        assert released.wait(5)
        assert holder.current.version == "v2"
    finally:
        holder.close()


def test_returning_freed_memory_is_safe_to_call():
    return_freed_memory()


def test_every_load_runs_on_one_long_lived_loader_thread(models_dir, tmp_path):
    """Loads asked from different (short-lived) threads all run on the holder's one loader
    thread: a load on a thread that then ends left part of the freed model behind at each
    swap (docs/benchmarks.md, 30-minute soak)."""
    from recsys.recommender import Recommender

    models = copy_models(models_dir, tmp_path / "models")
    copy_bundle(models, "v1", "v2")
    loaded_on: list[tuple[int, str]] = []

    def loader(path, **kwargs):
        thread = threading.current_thread()
        loaded_on.append((thread.ident, thread.name))
        return Recommender.load(path, **kwargs)

    holder = ModelHolder(models, threads=1, loader=loader)
    try:
        holder.load_current()
        for version in ("v2", "v1", "v2"):
            asker = threading.Thread(target=holder.reload, args=(version,))
            asker.start()
            asker.join()
        assert holder.current.version == "v2"
    finally:
        holder.close()
    assert len(loaded_on) == 4
    assert len(set(loaded_on)) == 1, loaded_on
    assert loaded_on[0][1].startswith("model-loader")
