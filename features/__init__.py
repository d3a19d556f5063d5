"""Behavioural features and the ranker's feature rows, from events up to a cut-off time.

Imports nothing from recsys, serving or training (only polars, numpy, scipy and numba): it
takes events and candidates as frames/arrays with documented columns, so `recsys` can depend
on it without a cycle.
"""

from features.build import FEATURE_GROUPS, FEATURES, Candidates, Requests, candidate_features
from features.covisitation import Covisitation
from features.state import BehaviourState

__all__ = ["FEATURE_GROUPS", "FEATURES", "BehaviourState", "Candidates", "Covisitation",
           "Requests", "candidate_features"]
