"""Training pairs for the encoder from the training part of a click log: (user interest, next
clicked item), with hard negatives mined from the current (base encoder) retrieval results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from features.state import POSITIVE_TYPES
from recsys.retrieval import PROFILE_DECAY, user_profiles

USER_SIDES = ("interest", "profile", "text")
# Clicks the learned "interest" profile reads (recsys.interest.InterestModel.positions).
INTEREST_POSITIONS = 20
# How the recent items' texts are joined for the "text" user side (most recent first).
HISTORY_SEPARATOR = " | "


@dataclass
class Transition:
    """One next-click: the user's clicks before it (item rows, oldest first) and the click."""

    history: list[int]
    target: int


def finetune_events(split, before_labels: bool, label_clicks: int = 1) -> pl.DataFrame:
    """The events fine-tuning learns from: the whole training part, or (`before_labels`) only
    the part before the ranker's label window (`label_clicks` per user, as the ranker's rows
    are made), the events the ranker's behavioural state is fit on. The ranker learns how far
    to trust the semantic score from its label cases; an encoder trained on those very clicks
    scores them better than it ever scores a new one, and a ranker trained on such rows
    over-trusts it (bundles int1 and int2 in
    benchmarks/results/finetune_ablation.json)."""
    if not before_labels:
        return split.train_events()
    state_events, _ = split.label_cases(label_clicks)
    return state_events


def transitions(train_events: pl.DataFrame) -> list[Transition]:
    """Every next click inside the training part (each user's first click has no history)."""
    clicks = train_events.filter(pl.col("type").is_in(POSITIVE_TYPES)).sort(
        ["user_id", "timestamp"], maintain_order=True)
    out = []
    for _, rows in clicks.group_by("user_id", maintain_order=True).agg(pl.col("item")).iter_rows():
        rows = [int(r) for r in rows]
        out.extend(Transition(rows[:i], rows[i]) for i in range(1, len(rows)))
    return out


def sample_transitions(all_transitions: list[Transition], max_pairs: int | None,
                       seed: int) -> list[Transition]:
    if max_pairs is None or len(all_transitions) <= max_pairs:
        return list(all_transitions)
    keep = np.random.default_rng(seed).choice(len(all_transitions), max_pairs, replace=False)
    return [all_transitions[i] for i in np.sort(keep)]


def anchor_texts(pairs: Sequence[Transition], texts: Sequence[str], user_side: str,
                 history_items: int, seed: int, decay: float = PROFILE_DECAY) -> list[str]:
    """The user side of each pair, as text the encoder reads.

    "profile": one of the last `history_items` clicks, the k-th most recent drawn with weight
    decay**k. Online the user vector is the recency-weighted mean of item vectors with the same
    decay, so training item -> next item with these odds fits what serving computes.
    "interest": the recent clicks as item rows (`history_strings`), read by the learned profile.
    "text": the last `history_items` clicks' texts joined, most recent first (needs the encoder
    at request time).
    """
    if user_side not in USER_SIDES:
        raise ValueError(f"user_side must be one of {USER_SIDES}, got {user_side!r}")
    if user_side == "interest":
        return history_strings([p.history for p in pairs])
    rng = np.random.default_rng(seed)
    out = []
    for pair in pairs:
        recent = pair.history[-history_items:][::-1]
        if user_side == "text":
            out.append(HISTORY_SEPARATOR.join(texts[i] for i in recent))
            continue
        weights = decay ** np.arange(len(recent), dtype=np.float64)
        out.append(texts[recent[rng.choice(len(recent), p=weights / weights.sum())]])
    return out


def history_strings(histories: Sequence[Sequence[int]], positions: int = INTEREST_POSITIONS
                    ) -> list[str]:
    """The "interest" user side's input: the last `positions` item rows, oldest first."""
    return [" ".join(str(int(i)) for i in list(h)[-positions:]) for h in histories]


def history_query_texts(histories: Sequence[Sequence[int]], texts: Sequence[str],
                        history_items: int) -> list[str]:
    """The "text" user side for evaluation cases (same format as the training anchors)."""
    return [HISTORY_SEPARATOR.join(texts[i] for i in list(h)[-history_items:][::-1])
            for h in histories]


def mine_hard_negatives(pairs: Sequence[Transition], item_vectors: np.ndarray,
                        rank_range: tuple[int, int], seed: int,
                        decay: float = PROFILE_DECAY, block: int = 2048) -> np.ndarray:
    """One hard negative per pair: an item the current semantic retrieval ranks inside
    `rank_range` for this user, never the target or a history item.

    The top ranks are skipped on purpose: on a catalogue like this the nearest neighbours of a
    profile are often true next clicks that this user just did not make (false negatives).
    """
    low, high = rank_range
    rng = np.random.default_rng(seed)
    negatives = np.empty(len(pairs), dtype=np.int64)
    n_items = item_vectors.shape[0]
    high = min(high, n_items)
    for start in range(0, len(pairs), block):
        chunk = pairs[start:start + block]
        profiles = user_profiles([p.history for p in chunk], item_vectors, decay)
        scores = profiles @ item_vectors.T
        for j, pair in enumerate(chunk):
            scores[j, pair.history] = -np.inf
            scores[j, pair.target] = -np.inf
        top = np.argpartition(-scores, high - 1, axis=1)[:, :high]
        for j in range(len(chunk)):
            ranked = top[j][np.argsort(-scores[j, top[j]], kind="stable")]
            ranked = ranked[np.isfinite(scores[j, ranked])]
            window = ranked[low:high] if ranked.size > low else ranked
            if window.size == 0:  # a catalogue too small to have any other item
                window = np.array([(pairs[start + j].target + 1) % n_items])
            negatives[start + j] = int(window[rng.integers(window.size)])
    return negatives
