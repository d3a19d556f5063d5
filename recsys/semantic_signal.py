"""Whether the text encoder tells this catalogue's items apart: the semantic score's AUC.

An encoder that does not read the catalogue's language (English MiniLM on Danish news) still
returns vectors, and every downstream step runs on them without complaint. This check ranks each
case's target items against items sampled from the catalogue by the semantic score alone; an
AUC whose confidence interval reaches 0.5 means the score is no better than a coin toss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from recsys.interest import semantic_scores
from recsys.ranking_context import RankingContext
from recsys.splits import Case

# Items sampled per target; each case's AUC is the share of (target, sampled item) pairs won.
NEGATIVES_PER_TARGET = 100
# Below this many cases with a history the interval is too wide to call anything.
MIN_CASES = 20
# A seeded sample of this many cases bounds the check's cost on large logs (interval ~ +-0.01).
MAX_CASES = 2_000
Z_95 = 1.96
# Bound the [cases x items] score block held at once.
SCORE_BLOCK = 20_000_000

VERDICTS = ("better_than_random", "no_better_than_random", "too_few_cases")


@dataclass(frozen=True)
class SemanticSignal:
    """The semantic score's AUC over cases, with a 95% interval over cases (random = 0.5)."""

    auc: float
    low: float
    high: float
    cases: int
    negatives_per_target: int
    verdict: str

    def to_dict(self) -> dict:
        return {key: (round(value, 4) if isinstance(value, float) else value)
                for key, value in asdict(self).items()}

    def describe(self, split: str) -> str:
        """One line for a person: the figure, its interval and what it means."""
        if self.cases == 0:
            return f"semantic signal on {split}: no case with a history to check"
        figure = (f"semantic signal on {split}: AUC {self.auc:.3f} "
                  f"(95% CI {self.low:.3f}-{self.high:.3f}, {self.cases} cases; random = 0.5)")
        meaning = {"better_than_random": "the encoder tells these items apart",
                   "no_better_than_random": "NO BETTER THAN RANDOM",
                   "too_few_cases": f"too few cases to tell (fewer than {MIN_CASES})"}
        return f"{figure}: {meaning[self.verdict]}"

    def warning(self, split: str) -> str | None:
        """The one-line warning `train` prints, or None when there is nothing to warn about."""
        if self.verdict != "no_better_than_random":
            return None
        return (f"warning: the semantic score is no better than random on {split} "
                f"(AUC {self.auc:.3f}, 95% CI {self.low:.3f}-{self.high:.3f}, {self.cases} cases): "
                "the item texts, as encoded, do not predict clicks; if they are not in English, "
                "train with --encoder multilingual (README, 'Language')")


def semantic_signal(context: RankingContext, cases: Sequence[Case], *,
                    negatives: int = NEGATIVES_PER_TARGET, seed: int = 0) -> SemanticSignal:
    """Rank each case's targets against `negatives` sampled items per target by the semantic
    score (the same score semantic retrieval and `evaluate`'s semantic baseline use).

    Negatives are drawn uniformly from the catalogue, never a target or a history item, so the
    check means the same under every protocol. Cases without a history have no profile to
    score from and are skipped.
    """
    n_items = len(context.item_vectors)
    usable = [c for c in cases if c.history and c.targets]
    rng = np.random.default_rng(seed)
    if len(usable) > MAX_CASES:
        keep = np.sort(rng.choice(len(usable), MAX_CASES, replace=False))
        usable = [usable[i] for i in keep]
    per_case: list[float] = []
    block = max(1, SCORE_BLOCK // max(n_items, 1))
    for start in range(0, len(usable), block):
        chunk = usable[start:start + block]
        requests = context.requests([c.history for c in chunk],
                                    np.array([c.time for c in chunk], dtype=np.float64),
                                    np.array([c.last_time for c in chunk], dtype=np.float64))
        scores = semantic_scores(requests.profiles, context.item_vectors,
                                 [c.history for c in chunk], context.interest)
        for j, case in enumerate(chunk):
            auc = _case_auc(scores[j], case, negatives, rng, n_items)
            if auc is not None:
                per_case.append(auc)
    return _summarise(np.asarray(per_case, dtype=np.float64), negatives)


def _case_auc(scores: np.ndarray, case: Case, negatives: int, rng: np.random.Generator,
              n_items: int) -> float | None:
    excluded = np.zeros(n_items, dtype=bool)
    excluded[np.asarray(case.targets, dtype=np.int64)] = True
    excluded[np.asarray(case.history, dtype=np.int64)] = True
    pool = np.flatnonzero(~excluded)
    if pool.size == 0:
        return None
    targets = np.unique(np.asarray(case.targets, dtype=np.int64))
    sampled = rng.choice(pool, size=(targets.size, negatives), replace=True)
    target_scores = scores[targets][:, None]
    other_scores = scores[sampled]
    wins = (target_scores > other_scores).mean() + 0.5 * (target_scores == other_scores).mean()
    return float(wins)


def _summarise(per_case: np.ndarray, negatives: int) -> SemanticSignal:
    cases = int(per_case.size)
    if cases == 0:
        return SemanticSignal(0.5, 0.0, 1.0, 0, negatives, "too_few_cases")
    auc = float(per_case.mean())
    # Cases are the independent units: pairs within one case share a profile.
    margin = Z_95 * float(per_case.std(ddof=1)) / np.sqrt(cases) if cases > 1 else 0.5
    low, high = max(0.0, auc - float(margin)), min(1.0, auc + float(margin))
    if cases < MIN_CASES:
        verdict = "too_few_cases"
    elif low > 0.5:
        verdict = "better_than_random"
    else:
        verdict = "no_better_than_random"
    return SemanticSignal(auc, low, high, cases, negatives, verdict)
