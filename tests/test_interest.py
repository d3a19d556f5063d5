"""The learned user side ("interest"): the exported numpy model computes exactly what the
training model's query route computes, starts as the plain recency-weighted mean, round-trips
through safetensors, and a bundle that was sealed with it cannot load without it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from recsys.errors import BundleError
from recsys.interest import INTEREST_FILE, InterestModel, semantic_scores
from recsys.retrieval import PROFILE_DECAY, user_profiles
from training.finetune_adapter import new_adapter
from training.finetune_data import Transition, anchor_texts, history_strings
from training.finetune_interest import CatalogueSoftmaxLoss, interest_model

HISTORIES = [[3], [0, 5, 2], [7, 1, 4, 6, 0, 2, 9, 8, 3, 5, 1, 7, 2, 6, 4, 0, 9, 3, 8, 5, 1, 2], []]


def _catalogue(n: int = 10, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"item text {i}" for i in range(n)], vectors


def _perturb(model):
    """Random weights everywhere, so equality below is not the identity's."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))


def test_untrained_interest_is_the_recency_weighted_mean():
    texts, vectors = _catalogue()
    model, pooling = interest_model(texts, vectors, new_adapter(vectors.shape[1], 1), "cpu",
                                    PROFILE_DECAY)
    short = HISTORIES[:2]               # within both the 20 positions and the mean's 50
    queries = model.encode(history_strings(short), task="query", normalize_embeddings=True)
    np.testing.assert_allclose(queries, user_profiles(short, vectors), atol=1e-6)
    np.testing.assert_allclose(pooling.export().profiles(short, vectors),
                               user_profiles(short, vectors), atol=1e-6)


def test_exported_model_matches_the_query_route():
    texts, vectors = _catalogue()
    adapter = new_adapter(vectors.shape[1], 1)
    model, pooling = interest_model(texts, vectors, adapter, "cpu", PROFILE_DECAY)
    _perturb(model)
    items = model.encode(texts, task="document", normalize_embeddings=True)
    assert not np.allclose(items, vectors, atol=1e-3)               # the adapter moved items
    queries = model.encode(history_strings(HISTORIES[:3]), task="query",
                           normalize_embeddings=True)
    exported = pooling.export()
    np.testing.assert_allclose(exported.profiles(HISTORIES[:3], items), queries, atol=1e-5)
    # only the last 20 clicks count, as in training
    assert exported.positions == 20
    np.testing.assert_allclose(exported.profiles([HISTORIES[2][-20:]], items),
                               exported.profiles([HISTORIES[2]], items), atol=1e-7)
    # no history: a zero vector (the request gets the popularity fallback), never NaN
    assert not exported.profiles([[]], items).any()


def test_catalogue_loss_prefers_the_true_next_item():
    texts, vectors = _catalogue()
    model, _ = interest_model(texts, vectors, new_adapter(vectors.shape[1], 1), "cpu",
                              PROFILE_DECAY)
    loss = CatalogueSoftmaxLoss(model, target_rows=[3, 5, 7])
    router = model[0]
    features = router.preprocess(history_strings([[3], [5]]), task="query")
    # the "next" item equal to the last click scores highest under the untrained mean
    right = loss([dict(features)], torch.tensor([3, 5]))
    wrong = loss([dict(features)], torch.tensor([5, 3]))
    assert right.detach().item() < wrong.detach().item()
    right.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # it is a softmax over the clicked items only: with the untrained (identity) model the loss
    # is exactly cross-entropy over items 3, 5 and 7, never over the others
    with torch.no_grad():
        queries = model.encode(history_strings([[3], [5]]), task="query", convert_to_tensor=True,
                               normalize_embeddings=True)
        items = torch.from_numpy(vectors[[3, 5, 7]])
        expected = torch.nn.functional.cross_entropy(20.0 * queries @ items.T,
                                                     torch.tensor([0, 1]))
    assert abs(right.detach().item() - expected.item()) < 1e-5


def test_anchor_strings_are_item_rows_oldest_first():
    pairs = [Transition(list(range(25)), 30)]
    [anchor] = anchor_texts(pairs, [str(i) for i in range(31)], "interest", 3, seed=0)
    assert anchor == " ".join(str(i) for i in range(5, 25))


def test_save_load_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    model = InterestModel(0.7, rng.standard_normal(20).astype(np.float32),
                          rng.standard_normal((8, 8)).astype(np.float32),
                          rng.standard_normal(8).astype(np.float32),
                          rng.standard_normal(20).astype(np.float32))
    model.save(tmp_path / INTEREST_FILE)
    loaded = InterestModel.load(tmp_path / INTEREST_FILE, 8)
    assert loaded.decay == 0.7
    np.testing.assert_array_equal(loaded.repeat, model.repeat)
    np.testing.assert_array_equal(loaded.weight, model.weight)
    np.testing.assert_array_equal(loaded.position_offsets, model.position_offsets)
    with pytest.raises(ValueError, match="8-d"):
        InterestModel.load(tmp_path / INTEREST_FILE, 16)
    model.weight[0, 0] = np.nan
    model.save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="non-finite"):
        InterestModel.load(tmp_path / "bad.safetensors", 8)


def test_bundle_serves_with_its_interest_model_and_refuses_to_lose_it(models_dir, tmp_path):
    """Add an interest model to a copy of the fixture bundle (resealed): the Recommender's
    profiles come from it; deleting the file afterwards is a refused bundle, not a silent mean."""
    from recsys.bundle_versions import sha256_file
    from recsys.recommender import Recommender

    bundle = tmp_path / "v1"
    shutil.copytree(models_dir / "v1", bundle)
    plain = Recommender.load(bundle)
    dim = plain.item_vectors.shape[1]
    rng = np.random.default_rng(3)
    learned = InterestModel(0.7, np.zeros(20, np.float32),
                            (np.eye(dim) + 0.2 * rng.standard_normal((dim, dim)))
                            .astype(np.float32),
                            np.zeros(dim, np.float32))
    learned.save(bundle / INTEREST_FILE)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][INTEREST_FILE] = sha256_file(bundle / INTEREST_FILE)
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    tuned = Recommender.load(bundle)
    history = [[0, 1, 2]]
    requests = tuned.context.requests(history, np.array([np.nan]), np.array([np.nan]))
    np.testing.assert_allclose(requests.profiles, learned.profiles(history, tuned.item_vectors))
    assert not np.allclose(requests.profiles,
                           plain.context.requests(history, np.array([np.nan]),
                                                  np.array([np.nan])).profiles, atol=1e-3)
    (bundle / INTEREST_FILE).unlink()
    with pytest.raises(BundleError):
        Recommender.load(bundle)


def test_identity_penalty_is_zero_at_the_plain_mean_and_grows_with_the_map():
    texts, vectors = _catalogue()
    model, pooling = interest_model(texts, vectors, new_adapter(vectors.shape[1], 1), "cpu",
                                    PROFILE_DECAY)
    features = model[0].preprocess(history_strings([[3], [5]]), task="query")
    labels = torch.tensor([3, 5])
    plain = CatalogueSoftmaxLoss(model, [3, 5, 7])
    held = CatalogueSoftmaxLoss(model, [3, 5, 7], pooling=pooling, identity_penalty=0.5)
    difference = held([dict(features)], labels).item() - plain([dict(features)], labels).item()
    assert abs(difference) < 1e-6
    with torch.no_grad():
        pooling.linear.weight.add_(0.1)
    drift = 0.5 * (0.1 ** 2) * vectors.shape[1] ** 2
    gap = held([dict(features)], labels).item() - plain([dict(features)], labels).item()
    assert abs(gap - drift) < 1e-3


def test_repeat_terms_take_each_items_most_recent_position_in_the_window():
    model = InterestModel(0.7, np.zeros(4, np.float32), np.eye(3, dtype=np.float32),
                          np.zeros(3, np.float32), np.array([-1.0, -2.0, -3.0, -4.0], np.float32))
    # most recent first: 9 (k=0), 2 (k=1), 9 again (k=2, ignored), 5 (k=3); 1 is outside the 4
    requests, items, terms = model.repeat_terms([[1, 5, 9, 2, 9], [], [4]])
    assert requests.tolist() == [0, 0, 0, 2]
    assert items.tolist() == [9, 2, 5, 4]
    assert terms.tolist() == [-1.0, -2.0, -4.0, -1.0]
    scores = np.zeros((3, 10), np.float32)
    model.add_repeat_terms(scores, [[1, 5, 9, 2, 9], [], [4]])
    assert scores[0, 9] == -1.0 and scores[0, 1] == 0.0 and scores[2, 4] == -1.0
    assert not scores[1].any()


def test_semantic_scores_are_similarity_plus_the_learned_repeat_terms():
    texts, vectors = _catalogue()
    profiles = user_profiles(HISTORIES[:2], vectors)
    plain = semantic_scores(profiles, vectors, HISTORIES[:2], None)
    np.testing.assert_allclose(plain, profiles @ vectors.T)
    learned = InterestModel(0.7, np.zeros(20, np.float32), np.eye(16, dtype=np.float32),
                            np.zeros(16, np.float32), np.full(20, -5.0, np.float32))
    scored = semantic_scores(profiles, vectors, HISTORIES[:2], learned)
    # the user's own items, on top by similarity, fall below every other item
    assert plain[1].argmax() in HISTORIES[1]
    others = np.setdiff1d(np.arange(len(texts)), HISTORIES[1])
    assert scored[1, HISTORIES[1]].max() < scored[1, others].min()


def test_loss_adds_the_same_repeat_terms_the_exported_model_serves():
    texts, vectors = _catalogue()
    model, pooling = interest_model(texts, vectors, new_adapter(vectors.shape[1], 1), "cpu",
                                    PROFILE_DECAY)
    _perturb(model)
    with torch.no_grad():
        pooling.repeat.copy_(torch.linspace(-0.9, 0.4, pooling.repeat.numel()))
    targets = [1, 3, 5, 7, 8]
    loss = CatalogueSoftmaxLoss(model, targets, pooling=pooling)
    histories = [[3, 5, 3], [8, 1, 7, 0], [2]]           # 0 and 2: never a next click
    labels = torch.tensor([7, 5, 1])
    features = model[0].preprocess(history_strings(histories), task="query")
    value = loss([dict(features)], labels)
    value.backward()
    assert pooling.repeat.grad is not None and pooling.repeat.grad.abs().sum() > 0

    exported = pooling.export()
    items = model.encode(texts, task="document", normalize_embeddings=True)
    queries = exported.profiles(histories, items)
    scores = semantic_scores(queries, items, histories, exported)[:, targets]
    expected = torch.nn.functional.cross_entropy(
        20.0 * torch.from_numpy(scores), torch.tensor([targets.index(t) for t in (7, 5, 1)]))
    assert abs(value.item() - expected.item()) < 1e-4
    # and without the terms the loss differs, so the comparison above can fail
    no_repeat = CatalogueSoftmaxLoss(model, targets)
    assert abs(no_repeat([dict(features)], labels).item() - value.item()) > 1e-3


def test_interest_file_without_repeat_terms_loads_as_none(tmp_path):
    from safetensors.numpy import save_file

    save_file({"position_offsets": np.zeros(20, np.float32), "weight": np.eye(4, dtype=np.float32),
               "bias": np.zeros(4, np.float32)}, str(tmp_path / INTEREST_FILE),
              metadata={"decay": "0.7"})
    model = InterestModel.load(tmp_path / INTEREST_FILE, 4)
    assert model.repeat is None
    assert model.repeat_terms([[1, 2]])[0].size == 0
