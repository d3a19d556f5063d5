"""Coalesced recommendation requests: each answer equals the answer the request gets alone, with
its own user, k and filters; one bad request never fails the others."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.recommender import Filters, Recommender
from serving.main import create_app
from serving.service import RecommendJob, recommend_jobs
from serving.settings import Settings
from serving.testing import copy_models
from tests.keys import DATA_KEY

HEADERS = {"X-API-Key": DATA_KEY}


class FirstCallSlowRanker:
    """Holds the only model thread until released, so the requests behind it queue up."""

    def __init__(self, real) -> None:
        self.real, self.features = real, real.features
        self.calls: list[int] = []
        self.release = threading.Event()

    def predict(self, rows):
        self.calls.append(len(rows))
        if len(self.calls) == 2:  # the first call after the load-time warm-up
            self.release.wait(30)
        return self.real.predict(rows)

    def contributions(self, rows):
        return self.real.contributions(rows)


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def models(models_dir, tmp_path_factory):
    return copy_models(models_dir, tmp_path_factory.mktemp("batching") / "models")


def _requests(model):
    users = sorted(model.users, key=lambda u: (-len(model.users[u].items), u))[:6]
    history = [model.item_ids[r] for r in model.users[users[-1]].items]
    codes, counts = np.unique(model.item_categories[model.item_categories >= 0],
                              return_counts=True)
    category = model.category_names[int(codes[np.argmax(counts)])]  # enough items for k
    return [
        ("GET", f"/recommendations/{users[0]}", {"k": 5}),
        ("GET", f"/recommendations/{users[1]}", {"k": 5}),
        ("GET", f"/recommendations/{users[2]}", {"k": 7, "exclude_seen": "false"}),
        ("GET", f"/recommendations/{users[3]}", {"k": 5, "categories": [category]}),
        ("GET", f"/recommendations/{users[4]}", {"k": 5, "explain": "true"}),
        ("GET", "/recommendations/nobody-knows-me", {"k": 5}),
        ("POST", "/recommendations", {"history": history, "k": 6}),
        ("GET", f"/recommendations/{users[5]}", {"k": 5}),
        ("GET", f"/recommendations/{users[0]}", {"k": 5}),  # the same request twice
    ]


def _send(client, method, path, params):
    if method == "POST":
        return client.post(path, json=params)
    return client.get(path, params=params)


def test_coalesced_answers_equal_the_answers_given_alone(models):
    slow: list[FirstCallSlowRanker] = []

    def loader(path, **kwargs):
        recommender = Recommender.load(path, **kwargs)
        slow.append(FirstCallSlowRanker(recommender.ranker))
        return recommender.with_ranker(slow[-1])

    settings = Settings(models_dir=models, api_keys=[DATA_KEY], poll_current_s=0,
                        rate_limit_per_s=1000, rate_limit_burst=1000, model_threads=1,
                        ranker_timeout_ms=5000)
    with TestClient(create_app(settings, loader=loader), headers=HEADERS) as client:
        model = client.app.state.context.holder.current
        requests = _requests(model)
        together: dict[int, object] = {}

        def ask(n):
            together[n] = _send(client, *requests[n])

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        _wait_for(lambda: len(slow[-1].calls) == 2)   # the first request holds the model thread
        rest = [threading.Thread(target=ask, args=(n,)) for n in range(1, len(requests))]
        for t in rest:
            t.start()
        batcher = client.app.state.context.batcher
        _wait_for(lambda: batcher.pending == len(requests))   # all queued behind it
        slow[-1].release.set()
        for t in [first, *rest]:
            t.join(timeout=30)
        burst_calls = len(slow[-1].calls) - 2  # minus the warm-up and the first request
        metrics = client.get("/metrics").text
        alone = {n: _send(client, *r) for n, r in enumerate(requests)}

    assert len(together) == len(requests)
    for n in range(len(requests)):
        assert together[n].status_code == 200, (n, together[n].text)
        assert together[n].json() == alone[n].json(), requests[n]
    # the queued requests really were answered together: 7 of the 8 behind the first need the
    # ranker, in 5 groups (three share k=5 and the default filters; the popularity answer
    # needs no ranker)
    assert burst_calls == 5, slow[-1].calls
    count = _sample(metrics, "recsys_recommend_batch_size_count")
    total = _sample(metrics, "recsys_recommend_batch_size_sum")
    assert total > count, "some batch held more than one request"
    bodies = [together[n].json() for n in range(len(requests))]
    assert [len(b["items"]) for b in bodies] == [5, 5, 7, 5, 5, 5, 6, 5, 5]
    assert bodies[5]["source"] == "popularity" and bodies[6]["user_id"] is None
    assert all(i["reasons"] for i in bodies[4]["items"]) and bodies[0]["items"][0]["reasons"] \
        is None


def _sample(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


class FailingStore:
    """recent_items fails for one user only."""

    def __init__(self, bad_user: str) -> None:
        self.bad_user = bad_user

    def recent_items(self, user_id, limit, since):
        if user_id == self.bad_user:
            raise OSError("disk gone for this user")
        return [], float("nan")


def test_a_failure_stays_with_its_job(recommender):
    users = sorted(recommender.users)[:3]
    jobs = [RecommendJob(5, Filters(), False, user_id=users[0]),
            RecommendJob(5, Filters(), False, user_id="broken"),
            RecommendJob(5, Filters(), False, user_id=users[1]),
            RecommendJob(5, Filters(diversity="no-such-rule"), False, user_id=users[2])]
    answers = recommend_jobs(jobs, recommender, FailingStore("broken"), live_items=50)
    assert isinstance(answers[1], OSError) and isinstance(answers[3], ValueError)
    for answer, user in ((answers[0], users[0]), (answers[2], users[1])):
        assert answer["user_id"] == user and answer["model_version"] == "v1"
        assert [i["item_id"] for i in answer["items"]] == \
            recommender.recommend([user], k=5)[0].item_ids


def test_a_failing_batch_is_answered_one_job_at_a_time(recommender, monkeypatch):
    users = sorted(recommender.users)[:3]
    expected = [recommender.recommend([u], k=4)[0].item_ids for u in users]
    real = Recommender.recommend_histories

    def fails_for_batches(self, histories, *args, **kwargs):
        if len(histories) > 1:
            raise RuntimeError("batch-only failure")
        return real(self, histories, *args, **kwargs)

    monkeypatch.setattr(Recommender, "recommend_histories", fails_for_batches)
    jobs = [RecommendJob(4, Filters(), False, user_id=u) for u in users]
    answers = recommend_jobs(jobs, recommender, FailingStore("nobody"), live_items=50)
    assert [[i["item_id"] for i in a["items"]] for a in answers] == expected


def test_model_threads_search_with_one_openmp_thread():
    """OpenMP's thread count is per thread: the pool sets it on each of its own threads (set
    only on the event loop's thread, batched FAISS searches ran 2 spinning OpenMP threads)."""
    import faiss

    from serving.deps import ModelPool

    pool = ModelPool(2, 8)
    try:
        counts = {pool.executor.submit(faiss.omp_get_max_threads).result() for _ in range(4)}
    finally:
        pool.close()
    assert counts == {1}
