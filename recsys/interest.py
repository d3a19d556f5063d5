"""The learned user side: a user's interest vector from the vectors of the items they clicked.

Without fine-tuning a user is the recency-weighted mean of their items' vectors
(`recsys.retrieval.user_profiles`). Fine-tuning learns two things on top of that mean, with the
item adapter, from the training clicks (`training/finetune_interest.py`): how much each of the
last `positions` clicks counts (a learned offset on the fixed decay), and a linear map from that
mean to the query vector that is searched in the item index. The map is what lets a query move
*away* from the items a user already has towards what they click next, which a plain mean
cannot do. It reads cached item vectors only, so a request costs one small matrix product.

It also learns how likely a user is to click again an item they already clicked, by how recently
(`repeat`, a term added to that item's score). A query built from a user's own items lies close
to them, so without this term the items they already have fill the top of the list; with it,
the data decides (rare repeats on a review log, common ones on groceries or music).

The order of the clicks beyond those position weights is read by an optional sequence block
(`SequenceAttention`, trained with the rest): one causal self-attention layer over the last
`positions` clicks' vectors, projected to a low dimension (64) with learned position
embeddings. Only the most recent click's output is needed (it is the query), so a request costs
one attention row over at most `positions` items, not the full square; the block's output is
mapped back to the item dimension and added to the weighted mean before the linear map. It
starts at zero (the output map is zero), so an untrained block is today's model, and a bundle
without it (an interest.safetensors from before it existed) loads and serves as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

INTEREST_FILE = "interest.safetensors"
SEQUENCE_TENSORS = ("project", "position", "query", "key", "value", "out")


@dataclass
class SequenceAttention:
    """One causal self-attention layer over a user's recent item vectors, read at the most
    recent click (k = 0). `training/finetune_interest.py`'s `SequenceBlock` is the same function
    in torch."""
    project: np.ndarray    # [d, r] item vector -> attention space
    position: np.ndarray   # [positions, r] added at the k-th most recent click
    query: np.ndarray      # [r, r]
    key: np.ndarray        # [r, r]
    value: np.ndarray      # [r, r]
    out: np.ndarray        # [r, d] back to the item dimension (zero = no effect)

    def __call__(self, recent: np.ndarray) -> np.ndarray:
        """recent [n, d], most recent first (n >= 1) -> [d] added to the weighted mean."""
        hidden = recent @ self.project + self.position[:recent.shape[0]]
        logits = (hidden @ self.key) @ (hidden[0] @ self.query)        # [n]
        logits = logits / np.float32(np.sqrt(self.project.shape[1]))
        weights = np.exp(logits - logits.max())
        attended = (weights / weights.sum()) @ (hidden @ self.value)
        return np.maximum(attended, 0.0) @ self.out

    def check(self, path: Path, dim: int, positions: int) -> None:
        rank = self.project.shape[1]
        shapes = {"project": (dim, rank), "position": (positions, rank), "query": (rank, rank),
                  "key": (rank, rank), "value": (rank, rank), "out": (rank, dim)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{path}: interest sequence tensor {name} has shape "
                                 f"{getattr(self, name).shape}, expected {shape}")


@dataclass
class InterestModel:
    decay: float
    position_offsets: np.ndarray   # [positions] log-weight added to decay**k, k = 0 most recent
    weight: np.ndarray             # [d, d] query = weight @ mean + bias
    bias: np.ndarray               # [d]
    # [positions] added to the score of an item whose most recent click is the k-th most recent;
    # None (a bundle from before the term existed) = 0
    repeat: np.ndarray | None = None
    # reads the order of the recent clicks; None (a bundle without it) = the weighted mean alone
    sequence: SequenceAttention | None = None

    @property
    def positions(self) -> int:
        return int(self.position_offsets.shape[0])

    def position_weights(self) -> np.ndarray:
        """Weight of the k-th most recent click (k = 0 first)."""
        k = np.arange(self.positions, dtype=np.float64)
        return (np.exp(np.log(self.decay) * k + self.position_offsets)).astype(np.float32)

    def profiles(self, histories: Sequence[Sequence[int]], item_vectors: np.ndarray) -> np.ndarray:
        """Query vectors, L2-normalised; zeros for empty histories (they get the fallback)."""
        dim = item_vectors.shape[1]
        weights = self.position_weights()
        means = np.zeros((len(histories), dim), dtype=np.float32)
        has_history = np.zeros(len(histories), dtype=bool)
        for u, history in enumerate(histories):
            recent = np.asarray(list(history)[-self.positions:][::-1], dtype=np.int64)
            if recent.size:
                vectors = item_vectors[recent]
                means[u] = weights[:recent.size] @ vectors
                if self.sequence is not None:
                    means[u] += self.sequence(vectors)
                has_history[u] = True
        queries = means @ self.weight.T + self.bias
        queries[~has_history] = 0.0
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        return np.divide(queries, norms, out=np.zeros_like(queries), where=norms > 0)

    def repeat_terms(self, histories: Sequence[Sequence[int]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(request, item, term) for each distinct item among a request's last `positions`
        clicks, with the learned term of its most recent position."""
        requests, items, positions = [], [], []
        if self.repeat is not None:
            for u, history in enumerate(histories):
                latest: dict[int, int] = {}
                for k, item in enumerate(list(history)[-self.positions:][::-1]):
                    latest.setdefault(int(item), k)
                requests.extend([u] * len(latest))
                items.extend(latest)
                positions.extend(latest.values())
        terms = (self.repeat[np.asarray(positions, dtype=np.int64)] if positions
                 else np.zeros(0, np.float32))
        return (np.asarray(requests, dtype=np.int64), np.asarray(items, dtype=np.int64),
                terms.astype(np.float32))

    def add_repeat_terms(self, scores: np.ndarray, histories: Sequence[Sequence[int]]) -> None:
        """Adds the repeat terms to `scores` [requests, items] in place."""
        requests, items, terms = self.repeat_terms(histories)
        scores[requests, items] += terms

    def save(self, path: Path) -> None:
        tensors = {"position_offsets": self.position_offsets.astype(np.float32),
                   "weight": np.ascontiguousarray(self.weight, dtype=np.float32),
                   "bias": self.bias.astype(np.float32),
                   "repeat": (np.zeros(self.positions, np.float32) if self.repeat is None
                              else self.repeat.astype(np.float32))}
        if self.sequence is not None:
            tensors.update({f"sequence_{name}": np.ascontiguousarray(
                getattr(self.sequence, name), dtype=np.float32) for name in SEQUENCE_TENSORS})
        save_file(tensors, str(path), metadata={"decay": json.dumps(self.decay)})

    @classmethod
    def load(cls, path: Path, dim: int) -> InterestModel:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            decay = float(json.loads((handle.metadata() or {})["decay"]))
        tensors = load_file(str(path))
        sequence = None
        if any(name.startswith("sequence_") for name in tensors):
            missing = [n for n in SEQUENCE_TENSORS if f"sequence_{n}" not in tensors]
            if missing:
                raise ValueError(f"{path}: interest sequence block lacks {', '.join(missing)}")
            sequence = SequenceAttention(**{n: tensors[f"sequence_{n}"]
                                            for n in SEQUENCE_TENSORS})
        model = cls(decay, tensors["position_offsets"], tensors["weight"], tensors["bias"],
                    tensors.get("repeat"), sequence)
        if (model.weight.shape != (dim, dim) or model.bias.shape != (dim,)
                or (model.repeat is not None and model.repeat.shape != (model.positions,))):
            raise ValueError(f"{path}: interest model is for {model.weight.shape[1]}-d vectors, "
                             f"the item vectors are {dim}-d")
        if sequence is not None:
            sequence.check(path, dim, model.positions)
        if not (all(np.isfinite(t).all() for t in tensors.values()) and 0 < decay <= 1):
            raise ValueError(f"{path}: interest model has non-finite weights or a bad decay")
        return model


def semantic_scores(profiles: np.ndarray, item_vectors: np.ndarray,
                    histories: Sequence[Sequence[int]],
                    interest: InterestModel | None) -> np.ndarray:
    """Semantic retrieval's score of every item for each request [requests, items]: the
    similarity to the user vector, plus the learned repeat terms where there is a learned side.
    Evaluation and fine-tuning's selection both rank by this, so they judge one thing."""
    scores = profiles @ item_vectors.T
    if interest is not None:
        interest.add_repeat_terms(scores, histories)
    return scores
