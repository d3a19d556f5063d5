"""Cold items: `recsys dataset hold-out-items` and the cold/warm slices of `recsys evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.build import MISSING_RANK
from recsys.cli import EXIT_BAD_INPUT, main
from recsys.data.dataset import load_dataset
from recsys.data.hold_out import hold_out_items
from recsys.evaluate import (
    METHODS,
    _impression_slices,
    evaluate,
    format_table,
    items_with_training_events,
)
from recsys.ranking_context import keep_new_items_up
from recsys.splits import Split


def split_of(path):
    dataset = load_dataset(path)
    return Split.of(dataset, dataset.items["item_id"].to_list())


def held_out_ids(original, copy) -> set[str]:
    """Items that lost an event in the copy."""
    removed = original.events.join(copy.events.select("event_id"), on="event_id", how="anti")
    return set(removed["item_id"].to_list())


def before_test(split) -> pl.DataFrame:
    if split.protocol == "leave_one_out":
        return split.events.filter(pl.col("split").is_in(["train", "valid"]))
    return split.events.filter(pl.col("timestamp") < split.test_start)


@pytest.fixture(scope="module")
def recbole_copy(tmp_path_factory, recbole_dataset):
    out = tmp_path_factory.mktemp("holdout") / "recbole-cold"
    held = hold_out_items(recbole_dataset, out, fraction=0.3, seed=1)
    return out, held


def test_hold_out_removes_training_and_valid_events_and_keeps_test(recbole_dataset, recbole_copy):
    out, held = recbole_copy
    original, copy = split_of(recbole_dataset), split_of(out)
    assert main(["validate", str(out)]) == 0
    items = load_dataset(out).items
    assert items.drop("created_at").equals(load_dataset(recbole_dataset).items), \
        "held-out items keep their text"
    assert held.held_out_items == round(0.3 * items.height)
    # the held-out items are created at the end of what the model sees; the others keep no time
    created = items.filter(pl.col("created_at").is_not_null())
    assert created.height == held.held_out_items
    assert created["created_at"].unique().to_list() == [before_test(copy)["timestamp"].max()]
    gone = held_out_ids(original, copy)
    assert gone, "some held-out item had training events to lose"
    # no held-out item has a training or valid event left ...
    assert not set(before_test(copy)["item_id"].to_list()) & gone
    assert len(gone) <= held.held_out_items
    # ... every other event is untouched, and the test cases are the same cases
    removed = original.events.height - copy.events.height
    assert removed == held.removed_events > 0
    assert [(c.user_id, c.targets) for c in copy.cases("test")] == \
        [(c.user_id, c.targets) for c in original.cases("test")]
    cold = ~items_with_training_events(copy)
    assert sum(cold[c.targets[0]] for c in copy.cases("test")) >= held.cold_test_targets > 0
    assert gone <= set(created["item_id"].to_list())


def test_hold_out_is_reproducible_and_seeded(recbole_dataset, recbole_copy, tmp_path):
    out, _ = recbole_copy
    again, other = tmp_path / "again", tmp_path / "other"
    hold_out_items(recbole_dataset, again, fraction=0.3, seed=1)
    hold_out_items(recbole_dataset, other, fraction=0.3, seed=2)
    events = pl.read_parquet(out / "events.parquet")
    assert pl.read_parquet(again / "events.parquet").equals(events)
    assert not pl.read_parquet(other / "events.parquet").equals(events)


def test_hold_out_on_a_time_split_keeps_the_test_window(movielens_dataset, tmp_path):
    out = tmp_path / "ml-cold"
    held = hold_out_items(movielens_dataset, out, fraction=0.3, seed=0)
    original, copy = split_of(movielens_dataset), split_of(out)
    gone = held_out_ids(original, copy)
    assert gone and held.removed_events > 0
    assert not set(before_test(copy)["item_id"].to_list()) & gone
    assert len(gone) <= held.held_out_items
    # the copy's test window holds every event the original's held
    window = original.events.filter(pl.col("timestamp") >= copy.test_start)
    assert set(window["event_id"].to_list()) <= set(copy.events["event_id"].to_list())


def test_a_user_whose_every_click_is_held_out_is_kept_as_a_cold_user(recbole_dataset, tmp_path):
    out = tmp_path / "mostly-cold"
    held = hold_out_items(recbole_dataset, out, fraction=0.9, seed=0)
    copy = split_of(out)
    empty = [c for c in copy.cases("test") if not c.history]
    assert held.users_left_without_history == len(empty) > 0
    assert "users kept with an empty history" in held.summary(out)


@pytest.mark.parametrize("args, message", [
    (["--fraction", "0"], "strictly between 0 and 1"),
    (["--fraction", "1"], "strictly between 0 and 1"),
    (["--fraction", "-0.5"], "strictly between 0 and 1"),
    (["--fraction", "0.0001"], "leaves some items on each side"),
])
def test_hold_out_refuses_bad_fractions_in_one_line(recbole_dataset, tmp_path, capsys, args,
                                                     message):
    out = tmp_path / "out"
    code = main(["dataset", "hold-out-items", str(recbole_dataset), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_hold_out_refuses_a_missing_dataset_and_a_used_out_folder(recbole_dataset, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    assert main(["dataset", "hold-out-items", str(tmp_path / "nowhere"), "--out",
                 str(out)]) == EXIT_BAD_INPUT
    assert "no such dataset folder" in capsys.readouterr().err
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["dataset", "hold-out-items", str(recbole_dataset), "--out",
                 str(out)]) == EXIT_BAD_INPUT
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # an empty folder is fine, and the summary names what was done
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert main(["dataset", "hold-out-items", str(recbole_dataset), "--out", str(fresh)]) == 0
    assert "held out" in capsys.readouterr().out
    assert sorted(p.name for p in fresh.iterdir()) == ["dataset.json", "events.parquet",
                                                        "items.parquet"]
    assert not list(tmp_path.glob(".fresh.*")), "no staging folder left behind"


# -- evaluate's slices ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cold_report(models_dir, recbole_copy):
    """The shared bundle evaluated on the hold-out copy: its held-out test targets are cold."""
    out, _ = recbole_copy
    return evaluate(models_dir, out, "test", log=lambda _: None)


def test_evaluate_reports_cold_and_warm_slices(cold_report, recbole_copy):
    out, _ = recbole_copy
    split = split_of(out)
    trained = items_with_training_events(split)
    cases = split.cases("test")
    slices = cold_report["slices"]
    bins = ["warm_1-4_events", "warm_5-14_events", "warm_15-49_events", "warm_50+_events"]
    assert list(slices) == ["cold_items", "warm_items", *bins]
    n_cold = sum(not trained[c.targets[0]] for c in cases)
    assert 0 < n_cold < len(cases)
    assert slices["cold_items"]["cases"] == n_cold
    assert slices["warm_items"]["cases"] == len(cases) - n_cold
    for part in slices.values():
        assert set(part["metrics"]) == (set(METHODS) if part["cases"] else set())
    # the warm targets by their training events, counted here from the events themselves
    events = split.train_events()["item"].value_counts()
    count = dict(zip(events["item"].to_list(), events["count"].to_list(), strict=True))
    seen = [count.get(c.targets[0], 0) for c in cases]
    for name, (low, high) in zip(bins, [(1, 4), (5, 14), (15, 49), (50, 10**9)], strict=True):
        assert slices[name]["cases"] == sum(low <= n <= high for n in seen), name
    # one target per case: cold and warm, and the warm bins, weighted by cases, give the whole
    for parts, whole in ((["cold_items", "warm_items"], cold_report["metrics"]),
                         (bins, slices["warm_items"]["metrics"])):
        total = sum(slices[name]["cases"] for name in parts)
        for method in METHODS:
            for metric, value in whole[method].items():
                mixed = sum(slices[name]["cases"] * slices[name]["metrics"][method][metric]
                            for name in parts if slices[name]["cases"]) / total
                assert mixed == pytest.approx(value, abs=1e-9), (parts, method, metric)
    # the cold slice is the per-case values of the cold cases
    cold_ndcg = [v for c, v in zip(cases, cold_report["per_case"]["ndcg@10"]["semantic"],
                                   strict=True) if not trained[c.targets[0]]]
    assert slices["cold_items"]["metrics"]["semantic"]["ndcg@10"] == \
        pytest.approx(np.mean(cold_ndcg), abs=1e-5)
    json.dumps(cold_report["slices"], allow_nan=False)


def test_slices_are_in_the_table_and_the_html_report(cold_report, tmp_path):
    from recsys.report import write_report

    table = format_table(cold_report)
    cold_line = next(line for line in table.splitlines() if line.startswith("cold_items"))
    pipeline = cold_report["slices"]["cold_items"]["metrics"]["pipeline"]
    assert f"({cold_report['slices']['cold_items']['cases']})" in cold_line
    assert f"{pipeline['ndcg@10']:.4f}/{pipeline['recall@50']:.4f}" in cold_line
    page = write_report(cold_report, tmp_path / "r").read_text()
    assert "Cold and warm items" in page and "cold_items" in page
    assert json.loads((tmp_path / "r" / "report.json").read_text())["slices"] == \
        cold_report["slices"]


def test_impression_slices_rank_each_slice_s_clicks_against_the_non_clicked():
    trained = np.array([True, True, False, False, True])
    shown = [np.array([0, 2, 1]), np.array([3, 4, 1]), np.array([0, 1])]
    labels = [np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0])]
    scores = {m: [np.array([0.1, 0.9, 0.5]), np.array([0.8, 0.2, 0.3]), np.array([0.7, 0.4])]
              for m in METHODS}
    slices = _impression_slices(scores, labels, shown, trained)
    cold, warm = slices["cold_items"], slices["warm_items"]
    # list 0's cold click (item 2) tops its non-click: AUC 1; no other list has a cold click
    assert cold["cases"] == 1 and cold["metrics"]["pipeline"]["auc"] == 1.0
    # warm: list 0's item 0 (below its non-click), list 1's item 4 (below both), list 2's item 0
    assert warm["cases"] == 3
    assert warm["metrics"]["pipeline"]["auc"] == pytest.approx((0.0 + 0.0 + 1.0) / 3)


def test_slices_of_an_empty_side_have_no_metrics():
    trained = np.array([True, True])
    slices = _impression_slices({m: [np.array([0.3, 0.1])] for m in METHODS},
                                [np.array([1.0, 0.0])], [np.array([0, 1])], trained)
    assert slices["cold_items"] == {"cases": 0, "metrics": {}}


def test_an_item_added_through_put_items_is_ranked_as_a_catalogue_item_without_history(
        recommender):
    """PUT /items calls `with_items`: the new row has no clicks, no co-visitation and sorts last
    in popularity, so the ranker reads it as it reads a catalogue item that no training event
    touched (the cold slice), and both are kept up to their semantic rank. (With real time,
    item_age_days differs too: an added item is first seen when added; this bundle's time is
    order only.)"""
    from features.build import FEATURES

    state = recommender.state
    never_clicked = np.flatnonzero(state.clicks_ == 0)
    assert never_clicked.size, "the fixture bundle has items without training clicks"
    cold = int(never_clicked[0])
    fresh = recommender.with_items(
        ["fresh-item"], [recommender.titles[cold]],
        [recommender.category_names[c] if (c := recommender.item_categories[cold]) >= 0
         else None], recommender.item_vectors[cold:cold + 1])
    new_row = fresh.item_rows["fresh-item"]
    # a unit vector is stored as given, bit for bit, as the bundle's own are
    assert np.array_equal(fresh.item_vectors[new_row], recommender.item_vectors[cold])
    history = [int(i) for i in np.flatnonzero(state.clicks_ > 0)[:3]]
    requests = fresh.context.requests([history], np.array([np.nan]), np.array([np.nan]))
    candidates, rows = fresh.context.rows(requests, given=[[cold, new_row]])
    frame = rows.to_numpy()
    by_item = {int(item): frame[j] for j, item in enumerate(candidates.item)}
    differ = [name for j, name in enumerate(FEATURES)
              if not np.array_equal(by_item[cold][j], by_item[new_row][j], equal_nan=True)]
    # only the popularity position differs (both come after every clicked item), and the
    # semantic rank by at most one: a twin's score is summed at another row of the search or of
    # the catalogue product (FAISS or BLAS), so the two can differ in the last bit
    sem = FEATURES.index("sem_rank")
    assert abs(by_item[cold][sem] - by_item[new_row][sem]) <= 1
    assert [name for name in differ if name != "sem_rank"] == ["pop_rank"]
    clicked = int((state.clicks_ > 0).sum())
    pop = FEATURES.index("pop_rank")
    assert by_item[cold][pop] >= clicked and by_item[new_row][pop] >= clicked


def test_put_items_stores_unit_vectors_as_given(recommender):
    """The same text must score alike as a bundle item and as an added one: a unit vector is
    kept bit for bit (dividing by its float32 norm would move last bits), others are scaled."""
    n = len(recommender.item_ids)
    given = np.vstack([recommender.item_vectors, 3.0 * recommender.item_vectors[:1]])
    grown = recommender.with_items([f"copy-{i}" for i in range(n + 1)], [""] * (n + 1),
                                   [None] * (n + 1), given)
    assert np.array_equal(grown.item_vectors[n:2 * n], recommender.item_vectors)
    np.testing.assert_allclose(grown.item_vectors[2 * n], recommender.item_vectors[0], atol=1e-6)


# -- new items are never ranked below their semantic rank -----------------------------------------
def test_a_new_item_the_ranker_put_low_moves_up_to_its_semantic_rank():
    from recsys.ranking_context import keep_new_items_up

    items = np.array([10, 11, 12, 13, 14, 15])
    sem_rank = np.array([5, 4, 1000, 3, 0, 2], dtype=np.float32)   # 1000: not from semantic
    is_new = np.zeros(20, dtype=bool)
    is_new[[14, 15, 12]] = True
    best_first = np.array([0, 1, 2, 3, 4, 5])       # the ranker's order: 14 at 4, 15 at 5
    scores = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    order = keep_new_items_up(best_first, items, sem_rank, is_new, scores)
    # 14 (semantic rank 0) goes first, 15 (rank 2) to position 2; 12 has no semantic rank
    assert items[order].tolist() == [14, 10, 15, 11, 12, 13]
    for position, p in enumerate(order):
        if is_new[items[p]] and sem_rank[p] < 1000:
            assert position <= sem_rank[p]
    # the moved items take the score of the item below them: scores fall along the order
    assert scores[order].tolist() == [6.0, 6.0, 5.0, 5.0, 4.0, 3.0]


def test_an_order_that_already_respects_new_items_is_left_alone():
    from recsys.ranking_context import keep_new_items_up

    items = np.array([3, 1, 2])
    is_new = np.array([False, True, False, True])
    best_first = np.array([1, 0, 2])
    order = keep_new_items_up(best_first, items, np.array([2.0, 0.0, 1.0], np.float32), is_new)
    assert order is best_first


class ClicksOnly:
    """A ranker that judges by clicks alone: an item without any comes last."""

    features = ["item_clicks_log"]

    def predict(self, rows) -> np.ndarray:
        from features.build import FEATURES

        return np.asarray(rows[:, FEATURES.index("item_clicks_log")], dtype=np.float32)


def _keep_new_items_up_by_hand(best_first, items, sem_rank, is_new, scores):
    """The rule spelled out one place at a time: at each place, the next moved item (by
    semantic rank) once the list has reached its rank, else the ranker's next item."""
    ranks = sem_rank[best_first]
    moved = is_new[items[best_first]] & (ranks < MISSING_RANK) & \
        (np.arange(best_first.size) > ranks)
    pinned = sorted((float(ranks[i]), int(best_first[i])) for i in np.flatnonzero(moved))
    order, placed, j = [], set(), 0
    rest = iter(int(p) for p in best_first)
    while len(order) < best_first.size:
        if j < len(pinned) and pinned[j][0] <= len(order):
            position = pinned[j][1]
            j += 1
        else:
            position = next(p for p in rest if p not in placed)
        if position not in placed:
            order.append(position)
            placed.add(position)
    for i in range(len(order) - 2, -1, -1):
        scores[order[i]] = max(scores[order[i]], scores[order[i + 1]])
    return np.asarray(order)


def test_the_new_item_rule_equals_placing_items_one_by_one():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(1, 40))
        items = rng.choice(60, n, replace=False)
        # distinct ranks as retrieval gives them, or ties as impression lists can have
        sem = (rng.permutation(n) if rng.random() < 0.5 else rng.integers(0, n, n)).astype(
            np.float32)
        sem[rng.random(n) < 0.2] = MISSING_RANK
        is_new = rng.random(60) < 0.4
        scores = rng.standard_normal(n).astype(np.float32)
        best_first = np.argsort(-scores, kind="stable")
        expected_scores, got_scores = scores.copy(), scores.copy()
        expected = _keep_new_items_up_by_hand(best_first, items, sem, is_new, expected_scores)
        got = keep_new_items_up(best_first, items, sem, is_new, got_scores)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got_scores, expected_scores)


def test_the_new_item_rule_over_a_batch_equals_it_request_by_request():
    """What serving runs: one pass over a whole batch's orders, each request in its own slice."""
    from recsys.ranking_context import keep_new_items_up_in_batch

    rng = np.random.default_rng(1)
    for _ in range(300):
        sizes = rng.integers(0, 25, int(rng.integers(1, 8)))
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        items = np.concatenate([rng.choice(60, n, replace=False) for n in sizes]).astype(np.int64)
        sem = np.concatenate([rng.permutation(n) for n in sizes]).astype(np.float32)
        sem[rng.random(sem.size) < 0.2] = MISSING_RANK
        is_new = rng.random(60) < 0.4
        scores = rng.standard_normal(items.size)
        slices = list(zip(bounds[:-1], bounds[1:], strict=True))
        order = np.concatenate([lo + np.argsort(-scores[lo:hi], kind="stable")
                                for lo, hi in slices]).astype(np.int64)
        expected_scores, got_scores = scores.copy(), scores.copy()
        expected = [lo + _keep_new_items_up_by_hand(order[lo:hi] - lo, items[lo:hi], sem[lo:hi],
                                                    is_new, expected_scores[lo:hi])
                    for lo, hi in slices]
        got = keep_new_items_up_in_batch(order, bounds, items, sem, is_new, got_scores, True)
        np.testing.assert_array_equal(got, np.concatenate(expected).astype(np.int64))
        np.testing.assert_array_equal(got_scores, expected_scores)


def test_an_item_added_through_put_items_that_fits_the_user_is_served_first(recommender):
    """The served path (`recommend_histories`, what the API and batch scoring call): a new item
    the semantic source ranks first for a user is recommended first, even from a ranker that
    puts every item without clicks last."""
    from recsys.recommender import History

    history = [int(i) for i in np.flatnonzero(recommender.state.clicks_ > 0)[:4]]
    profile = recommender.context.requests([history], np.array([np.nan]),
                                           np.array([np.nan])).profiles[0]
    fresh = recommender.with_items(["fresh-item"], ["a new item"], [None], profile[None, :])
    [answer] = fresh.with_ranker(ClicksOnly()).recommend_histories([History(history)], k=10)
    assert answer.item_ids[0] == "fresh-item"
    assert answer.scores == sorted(answer.scores, reverse=True)


@pytest.fixture(scope="module")
def copy_models(tmp_path_factory, recbole_copy) -> Path:
    """A bundle trained on the hold-out copy: for it the held-out items are brand new."""
    from training.pipeline import train

    out, _ = recbole_copy
    models = tmp_path_factory.mktemp("copy-models")
    train(out, models, version="v1", log=lambda _: None)
    return models


def test_new_items_are_the_ones_created_after_the_data_not_every_item_without_events(
        models_dir, copy_models, recbole_copy):
    """An item nobody touched is new only when the catalogue says it came after the log (the
    held-out items); one that was in the catalogue all along and drew no event is not."""
    from recsys.ranking_context import new_item_rows
    from recsys.recommender import Recommender

    out, _ = recbole_copy
    copy = Recommender.load(copy_models)
    items = load_dataset(out).items
    held = set(items.filter(pl.col("created_at").is_not_null())["item_id"].to_list())
    trained = items_with_training_events(split_of(out))
    new = new_item_rows(copy.state)
    assert {copy.item_ids[r] for r in np.flatnonzero(new)} == \
        {i for i in held if not trained[copy.item_rows[i]]}
    assert new.any()
    original = Recommender.load(models_dir)
    without_events = original.state.shown_ == 0
    assert without_events.any(), "the fixture has catalogue items without training events"
    assert not new_item_rows(original.state).any()


def test_evaluate_ranks_new_items_as_served(recbole_copy, tmp_path, monkeypatch):
    """`recsys evaluate` builds the pipeline's order with the same rule: in a catalogue where
    every item without a training event came after the log, a ranker that puts every item
    without clicks last still leaves the cold slice at least at the semantic source's."""
    import shutil

    import recsys.evaluate as evaluation
    from recsys.atomic_files import write_parquet
    from recsys.recommender import Recommender
    from training.pipeline import train

    out, _ = recbole_copy
    data = tmp_path / "all-cold-new"
    shutil.copytree(out, data)
    split = split_of(out)
    cold = ~items_with_training_events(split)
    end = before_test(split)["timestamp"].max()
    items = load_dataset(out).items.with_columns(
        pl.when(pl.Series(cold)).then(pl.lit(end, pl.Datetime("us", "UTC")))
        .otherwise(pl.col("created_at")).alias("created_at"))
    write_parquet(items, data / "items.parquet")
    train(data, tmp_path / "models", version="v1", log=lambda _: None)

    load = Recommender.load
    monkeypatch.setattr(evaluation.Recommender, "load",
                        classmethod(lambda cls, path, **kw: load(path, **kw)
                                    .with_ranker(ClicksOnly())))
    report = evaluate(tmp_path / "models", data, "test", log=lambda _: None)
    cold = report["slices"]["cold_items"]["metrics"]
    for metric in ("ndcg@10", "recall@10", "ndcg@50", "recall@50", "mrr"):
        assert cold["pipeline"][metric] >= cold["semantic"][metric] - 1e-12, metric
    assert cold["pipeline"]["recall@50"] > 0


def test_an_item_is_new_when_it_has_no_event_and_was_created_at_most_a_day_before_the_log_ends():
    from datetime import UTC, datetime, timedelta

    from features.state import BehaviourState

    end = datetime(2024, 3, 10, 12, tzinfo=UTC)
    events = pl.DataFrame({"user_id": ["u", "u"], "item": [0, 1],
                           "timestamp": [end - timedelta(days=5), end],
                           "type": ["click", "impression"]})
    created = np.array([end.timestamp(),                             # clicked: not new
                        end.timestamp(),                             # shown: not new
                        (end - timedelta(hours=12)).timestamp(),     # in the grace: new
                        (end - timedelta(days=2)).timestamp(),       # old, never touched
                        np.nan,                                      # unknown
                        (end + timedelta(days=1)).timestamp()])      # after the log: new
    state = BehaviourState(n_items=6).fit(events, created_s=created)
    assert state.new_.tolist() == [False, False, True, False, False, True]
    assert not BehaviourState(n_items=6).fit(events).new_.any()
    with pytest.raises(ValueError, match="created_s"):
        BehaviourState(n_items=6).fit(events, created_s=created[:3])
