"""Candidate retrieval: user profiles, candidate sources behind one protocol, and their merge.

Sources (one module each): semantic nearest neighbours of the user's profile (an item index,
the fresh-items index included), co-visitation with the user's recent items, popularity (which
also serves users with no history at all) and the user's own history. `registry.SOURCES` lists
them in merge order; `merge.merge_sources` puts any number of them together.
"""

from recsys.retrieval.candidates import ranks_for, retrieve, source_ranks
from recsys.retrieval.config import PROFILE_DECAY, PROFILE_MAX_ITEMS, RetrievalConfig
from recsys.retrieval.fresh_index import FreshItemsIndex
from recsys.retrieval.merge import MergedCandidates, merge_sources, retrieve_from
from recsys.retrieval.profiles import user_profiles
from recsys.retrieval.registry import SOURCES, SourceInputs, build_sources
from recsys.retrieval.source import CandidateSource, RetrievalBatch, SourceHits

__all__ = ["PROFILE_DECAY", "PROFILE_MAX_ITEMS", "SOURCES", "CandidateSource", "FreshItemsIndex",
           "MergedCandidates", "RetrievalBatch", "RetrievalConfig", "SourceHits", "SourceInputs",
           "build_sources", "merge_sources", "ranks_for", "retrieve", "retrieve_from",
           "source_ranks", "user_profiles"]
