"""Retrieval settings: how many candidates each source offers, and the profile's recency decay.

Saved in a bundle's manifest (`config.retrieval`, the dict of these fields) and read back from it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Profile recency weighting: the k-th most recent item weighs PROFILE_DECAY ** k. Chosen on the
# amazon-scientific valid split (see docs/benchmarks.md).
PROFILE_DECAY = 0.7
PROFILE_MAX_ITEMS = 50


@dataclass
class RetrievalConfig:
    n_semantic: int = 100
    n_covisitation: int = 100
    n_popular: int = 20
    n_item_item: int = 50   # EASE item-item candidates (features/item_item.py); 0: none
    include_history: bool = True  # offer items the user already has; the ranker learns repeats
    profile_decay: float = PROFILE_DECAY

    def to_dict(self) -> dict:
        return dict(self.__dict__)
