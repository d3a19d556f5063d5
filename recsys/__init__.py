"""recsys: personalized recommendations for catalogues whose items have text.

The public surface is small: load a bundle into a `Recommender` and ask it for recommendations.
Names are imported lazily, so `recsys --help` does not pay for loading FAISS, LightGBM or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "Recommender": "recsys.recommender",
    "Recommendation": "recsys.recommender",
    "Filters": "recsys.recommender",
    "History": "recsys.recommender",
    "Encoder": "recsys.encoder",
    "ItemIndex": "recsys.index",
    "Dataset": "recsys.data",
    "load_dataset": "recsys.data",
    "import_dataset": "recsys.data",
    "evaluate": "recsys.evaluate",
    "RecsysError": "recsys.errors",
    "DataError": "recsys.errors",
    "BundleError": "recsys.errors",
    "NotFoundError": "recsys.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'recsys' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
