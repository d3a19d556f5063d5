"""The interest model's sequence block: attention over the order of the recent clicks. The numpy
block that serves computes what the torch block trains, it starts as today's model, it reads the
order of the clicks, and interest files with and without it load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.interest import INTEREST_FILE, InterestModel
from recsys.retrieval import PROFILE_DECAY, user_profiles
from training.finetune_adapter import new_adapter
from training.finetune_data import history_strings
from training.finetune_interest import CatalogueSoftmaxLoss, interest_model

HISTORIES = [[3], [0, 5, 2], [7, 1, 4, 6, 0, 2, 9, 8, 3, 5, 1, 7, 2, 6, 4, 0, 9, 3, 8, 5, 1, 2]]


def _model(seed: int = 0, rank: int = 8):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((10, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"item text {i}" for i in range(10)]
    # dropout acts while training only: the query route (eval mode) is the exported function
    model, pooling = interest_model(texts, vectors, new_adapter(16, 1), "cpu", PROFILE_DECAY,
                                    sequence_rank=rank, sequence_dropout=0.5)
    return texts, vectors, model, pooling


def _perturb(module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))


def test_untrained_sequence_block_is_the_recency_weighted_mean():
    _, vectors, model, pooling = _model()
    exported = pooling.export()
    assert exported.sequence is not None and not exported.sequence.out.any()
    queries = model.encode(history_strings(HISTORIES[:2]), task="query",
                           normalize_embeddings=True)
    np.testing.assert_allclose(queries, user_profiles(HISTORIES[:2], vectors), atol=1e-6)
    np.testing.assert_allclose(exported.profiles(HISTORIES[:2], vectors),
                               user_profiles(HISTORIES[:2], vectors), atol=1e-6)


def test_numpy_block_computes_the_torch_query_route():
    texts, _, model, pooling = _model()
    _perturb(model)
    items = model.encode(texts, task="document", normalize_embeddings=True)
    queries = model.encode(history_strings(HISTORIES), task="query", normalize_embeddings=True)
    exported = pooling.export()
    np.testing.assert_allclose(exported.profiles(HISTORIES, items), queries, atol=1e-5)
    # the block carries weight: without it the query is another one
    exported.sequence = None
    assert not np.allclose(exported.profiles(HISTORIES, items), queries, atol=1e-3)


def test_the_block_reads_the_order_of_the_clicks():
    texts, _, model, pooling = _model()
    # the position weights alone: equal for every click, so only the block sees the order
    with torch.no_grad():
        pooling.offsets.copy_(-torch.log(torch.tensor(PROFILE_DECAY))
                              * torch.arange(pooling.offsets.numel()))
    plain = pooling.export()
    plain.sequence = None
    _perturb(pooling.sequence)
    items = model.encode(texts, task="document", normalize_embeddings=True)
    exported = pooling.export()
    forward, backward = [[0, 5, 2, 7]], [[7, 2, 5, 0]]
    np.testing.assert_allclose(plain.profiles(forward, items), plain.profiles(backward, items),
                               atol=1e-6)
    assert not np.allclose(exported.profiles(forward, items), exported.profiles(backward, items),
                           atol=1e-3)
    queries = model.encode(history_strings(forward + backward), task="query",
                           normalize_embeddings=True)
    np.testing.assert_allclose(exported.profiles(forward + backward, items), queries, atol=1e-5)


def test_catalogue_loss_trains_the_block():
    _, _, model, pooling = _model()
    loss = CatalogueSoftmaxLoss(model, target_rows=[3, 5, 7], pooling=pooling)
    features = model[0].preprocess(history_strings([[3, 1], [5, 2, 8]]), task="query")
    loss([dict(features)], torch.tensor([7, 3])).backward()
    # the output map starts at zero, so it is the first to move
    assert pooling.sequence.out.grad is not None and pooling.sequence.out.grad.abs().sum() > 0


def test_save_load_round_trip_and_refusals(tmp_path):
    _, vectors, model, pooling = _model()
    _perturb(model)
    exported = pooling.export()
    exported.save(tmp_path / INTEREST_FILE)
    loaded = InterestModel.load(tmp_path / INTEREST_FILE, 16)
    for name in ("project", "position", "query", "key", "value", "out"):
        np.testing.assert_array_equal(getattr(loaded.sequence, name),
                                      getattr(exported.sequence, name))
    np.testing.assert_array_equal(loaded.profiles(HISTORIES, vectors),
                                  exported.profiles(HISTORIES, vectors))

    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / INTEREST_FILE))
    old = {k: v for k, v in tensors.items() if not k.startswith("sequence_")}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"decay": "0.7"})
    assert InterestModel.load(tmp_path / "old.safetensors", 16).sequence is None
    save_file({k: v for k, v in tensors.items() if k != "sequence_key"},
              str(tmp_path / "partial.safetensors"), metadata={"decay": "0.7"})
    with pytest.raises(ValueError, match="lacks key"):
        InterestModel.load(tmp_path / "partial.safetensors", 16)
    save_file({**tensors, "sequence_position": tensors["sequence_position"][:5]},
              str(tmp_path / "short.safetensors"), metadata={"decay": "0.7"})
    with pytest.raises(ValueError, match="sequence tensor position"):
        InterestModel.load(tmp_path / "short.safetensors", 16)
