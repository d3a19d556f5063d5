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
