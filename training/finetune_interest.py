"""The "interest" user side of the adapter mode: a learned profile, trained with the item adapter.

A sentence-transformers model with two routes (`Router`): "document" is an item text, read as
its cached base vector, through the residual adapter (the item side, as in the plain adapter
mode); "query" is a user's recent clicks, written as their item rows ("17 4 230", oldest
first), each read as its adapted item vector, pooled by `InterestPooling` (recency weights with
learned offsets, then a linear map) into a query vector. Both routes share the adapter, so the
query reads exactly the item vectors the bundle will hold.

The loss is a softmax over every item clicked in training (`CatalogueSoftmaxLoss`): with cached
vectors all their adapted vectors cost one small matrix product per step, so each pair's
negatives are all other clicked items rather than the batch's, which on amazon-scientific valid
beats in-batch negatives by far.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.modules import Dense, InputModule, Normalize
from torch import nn

from recsys.interest import SEQUENCE_TENSORS, InterestModel, SequenceAttention
from training.finetune_adapter import CachedVectors
from training.finetune_data import INTEREST_POSITIONS

DOCUMENT = "document"   # the Router's item route ("query" is the user side)


class AdaptedHistory(InputModule):
    """Query input: item rows -> their adapted, normalised item vectors, most recent first."""

    def __init__(self, vectors: CachedVectors, adapter: Sequence[Dense], positions: int) -> None:
        super().__init__()
        self.vectors = vectors                      # shared with the document route
        self.adapter = nn.ModuleList(adapter)       # the same layers as the document route
        self.positions = positions

    def preprocess(self, inputs, prompt=None, **kwargs) -> dict:
        rows = torch.full((len(inputs), self.positions), -1, dtype=torch.long)
        for b, text in enumerate(inputs):
            recent = [int(t) for t in str(text).split()][-self.positions:][::-1]
            if recent:
                rows[b, :len(recent)] = torch.tensor(recent)
        # named input_ids: the trainer recognises model inputs by that suffix
        return {"input_ids": rows}

    def forward(self, features: dict, **kwargs) -> dict:
        rows = features["input_ids"].to(self.vectors.vectors.device)
        present = rows >= 0
        # adapt each distinct item once (a batch of histories repeats popular items many times)
        unique, inverse = torch.unique(rows.clamp(min=0), return_inverse=True)
        out = {"sentence_embedding": self.vectors.vectors[unique]}
        for layer in self.adapter:
            out = layer(out)
        adapted = F.normalize(out["sentence_embedding"], dim=-1)[inverse]
        features["token_embeddings"] = adapted * present[..., None]
        features["attention_mask"] = present
        return features

    def get_embedding_dimension(self) -> int:
        return self.vectors.get_embedding_dimension()

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        raise RuntimeError("training-only module; the bundle stores an InterestModel instead")


class SequenceBlock(nn.Module):
    """One causal self-attention layer over the recent items, read at the most recent click:
    `recsys.interest.SequenceAttention` in torch. The output map starts at zero, so step 0 adds
    nothing to the weighted mean (the zero-shot profile)."""

    def __init__(self, dim: int, positions: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        # training only (the exported block is the eval-mode function)
        self.dropout = nn.Dropout(dropout)
        seeded = torch.Generator().manual_seed(0)    # the same start on every run

        def normal(*shape: int, std: float) -> nn.Parameter:
            return nn.Parameter(std * torch.randn(*shape, generator=seeded))

        # unit-norm item vectors -> hidden entries of about unit size
        self.project = normal(dim, rank, std=1.0)
        self.position = normal(positions, rank, std=0.1)
        self.query = normal(rank, rank, std=1 / math.sqrt(rank))
        self.key = normal(rank, rank, std=1 / math.sqrt(rank))
        self.value = normal(rank, rank, std=1 / math.sqrt(rank))
        self.out = nn.Parameter(torch.zeros(rank, dim))

    def forward(self, recent: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """recent [B, P, d] most recent first, present [B, P] -> [B, d]."""
        hidden = self.dropout(recent @ self.project + self.position[:recent.shape[1]])
        logits = torch.einsum("bpr,br->bp", hidden @ self.key, hidden[:, 0] @ self.query)
        logits = (logits / math.sqrt(self.project.shape[1])).masked_fill(~present, -torch.inf)
        # a row with no clicks at all (never a training pair) would be NaN: its weights are 0
        weights = torch.softmax(logits.masked_fill(~present.any(1, keepdim=True), 0.0), dim=-1)
        attended = torch.einsum("bp,bpr->br", weights, hidden @ self.value)
        return (self.dropout(torch.relu(attended)) @ self.out) * present.any(1, keepdim=True)

    def export(self) -> SequenceAttention:
        return SequenceAttention(**{name: getattr(self, name).detach().cpu().numpy().copy()
                                    for name in SEQUENCE_TENSORS})


class InterestPooling(nn.Module):
    """Recency-weighted mean (decay**k * exp(offset_k)) -> linear map. Starts as the plain mean:
    offsets 0, identity map, so step 0 is the zero-shot profile. (A second map on the last click
    alone scores lower on amazon valid: bundle int3 in
    benchmarks/results/finetune_ablation.json.)"""

    def __init__(self, dim: int, positions: int, decay: float, bias: bool = True,
                 repeat: bool = True, sequence_rank: int = 0,
                 sequence_dropout: float = 0.0) -> None:
        super().__init__()
        # reads the order of the clicks (0 = off): added to the weighted mean before the map
        self.sequence = (SequenceBlock(dim, positions, sequence_rank, sequence_dropout)
                         if sequence_rank else None)
        self.decay = decay
        self.offsets = nn.Parameter(torch.zeros(positions))
        # added to the score of an item the user clicked k-th most recently (cosine units); read
        # by the loss, not by forward: it scores items, not the query. Starts at 0 (zero-shot).
        self.repeat = nn.Parameter(torch.zeros(positions)) if repeat else None
        # the bias is one direction added to every user's query: a learned popularity prior
        self.linear = nn.Linear(dim, dim, bias=bias)
        nn.init.eye_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: dict, **kwargs) -> dict:
        k = torch.arange(self.offsets.shape[0], dtype=torch.float32, device=self.offsets.device)
        weights = torch.exp(math.log(self.decay) * k + self.offsets)
        weights = weights * features["attention_mask"]
        mean = (weights[..., None] * features["token_embeddings"]).sum(dim=1)
        if self.sequence is not None:
            mean = mean + self.sequence(features["token_embeddings"],
                                        features["attention_mask"].bool())
        features["sentence_embedding"] = self.linear(mean)
        return features

    def export(self) -> InterestModel:
        return InterestModel(decay=float(self.decay),
                             position_offsets=self.offsets.detach().cpu().numpy().copy(),
                             weight=self.linear.weight.detach().cpu().numpy().copy(),
                             bias=(self.linear.bias.detach().cpu().numpy().copy()
                                   if self.linear.bias is not None
                                   else np.zeros(self.linear.out_features, np.float32)),
                             repeat=(self.repeat.detach().cpu().numpy().copy()
                                     if self.repeat is not None else None),
                             sequence=(self.sequence.export() if self.sequence is not None
                                       else None))

    def save(self, *args, **kwargs) -> None:
        raise RuntimeError("training-only module; the bundle stores an InterestModel instead")


def interest_model(texts: Sequence[str], vectors: np.ndarray, adapter: list[Dense],
                   device: str, decay: float, positions: int = INTEREST_POSITIONS,
                   bias: bool = True, repeat: bool = True, sequence_rank: int = 0,
                   sequence_dropout: float = 0.0):
    """The two-route training model and its pooling module (to export the learned profile)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    cached = CachedVectors(texts, vectors)
    pooling = InterestPooling(vectors.shape[1], positions, decay, bias, repeat, sequence_rank,
                              sequence_dropout)
    router = Router.for_query_document(
        query_modules=[AdaptedHistory(cached, adapter, positions), pooling],
        document_modules=[cached, *adapter])
    return SentenceTransformer(modules=[router, Normalize()], device=device), pooling


class CatalogueSoftmaxLoss(nn.Module):
    """Cross-entropy of the next clicked item against the catalogue's clicked items.

    The competing items are `target_rows`, the items that are the next click of some training
    pair. An item nobody clicked in training would otherwise be a negative in every step and
    never a positive, a push against exactly the new items that only text can recommend. (On
    amazon this alone does not win back the unseen-item slice: bundle int5 in
    benchmarks/results/finetune_ablation.json.) The label is the
    positive's item row (texts can repeat across items, so the row is not read back from the
    text). The competing items' document vectors are computed once per step from the cached
    base vectors.
    """

    def __init__(self, model, target_rows: Sequence[int], scale: float = 20.0,
                 pooling: InterestPooling | None = None, identity_penalty: float = 0.0) -> None:
        super().__init__()
        self.model = model
        # lambda * (|W - I|^2 + |b|^2) keeps the query map near the plain mean; on amazon valid
        # 0.01 raised the pipeline's Recall@50 (it did not win back the unseen-item slice)
        self.pooling = pooling
        self.identity_penalty = identity_penalty
        rows = torch.as_tensor(sorted(set(int(r) for r in target_rows)), dtype=torch.long)
        self.register_buffer("rows", rows, persistent=False)
        position = torch.full((int(rows.max()) + 1,), -1, dtype=torch.long)
        position[rows] = torch.arange(rows.numel())
        self.register_buffer("position", position, persistent=False)
        self.scale = scale

    def forward(self, sentence_features: Iterable[dict], labels: torch.Tensor) -> torch.Tensor:
        query_features = next(iter(sentence_features))
        queries = self.model(query_features)["sentence_embedding"]
        device = queries.device
        competing = self.model({"input_ids": self.rows.to(device),
                                "task": DOCUMENT})["sentence_embedding"]
        targets = self.position.to(device)[labels.to(device).long()]
        scores = queries @ competing.T
        if self.pooling is not None and self.pooling.repeat is not None:
            scores = scores + self._repeat_terms(query_features["input_ids"].to(device),
                                                 scores.shape)
        loss = F.cross_entropy(self.scale * scores, targets)
        if self.identity_penalty and self.pooling is not None:
            linear = self.pooling.linear
            drift = (linear.weight - torch.eye(linear.in_features, device=device)).pow(2).sum()
            if linear.bias is not None:
                drift = drift + linear.bias.pow(2).sum()
            loss = loss + self.identity_penalty * drift
        return loss

    def _repeat_terms(self, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """[batch, competing] the learned repeat term of each query's recent items (the most
        recent position of each distinct item; `InterestModel.repeat_terms` at serving)."""
        positions = rows.shape[1]
        earlier = torch.tril(torch.ones(positions, positions, dtype=torch.bool,
                                        device=rows.device), diagonal=-1)
        repeated = ((rows[:, :, None] == rows[:, None, :]) & earlier).any(dim=-1)
        position = self.position.to(rows.device)
        inside = (rows >= 0) & (rows < position.numel())   # later rows: never a next click
        column = torch.where(inside, position[rows.clamp(0, position.numel() - 1)], -1)
        keep = inside & ~repeated & (column >= 0)
        query, k = torch.nonzero(keep, as_tuple=True)
        terms = torch.zeros(shape, dtype=self.pooling.repeat.dtype, device=rows.device)
        return terms.index_put((query, column[query, k]), self.pooling.repeat[k],
                               accumulate=True)

    def get_config_dict(self) -> dict:
        return {"scale": self.scale, "negatives": "every other item clicked in training",
                "identity_penalty": self.identity_penalty,
                "competing_items": int(self.rows.numel())}
