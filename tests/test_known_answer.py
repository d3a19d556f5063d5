"""A world whose right answers are known, run through the public commands end to end.

Eight topics of ten items each; every item's title and text name its topic, and nothing else in
the data says which topic an item belongs to (ids are opaque, no category). Each of 80 readers
reads one topic only, so the next click is always an unread item of the reader's topic: a working
pipeline recalls it in its top 10 almost always, popularity (which knows no topics) rarely.

The clicks come in rounds that land one per window of the time protocol (recsys/splits.py):
three rounds of history, one for the ranker's labels (the last 10% of the training span), one in
valid and one in test. A reader reads six of their topic's ten items, so even a bundle that knows
all six has four of the topic left to recommend.
"""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recsys.cli import main

TOPICS = {
    "astronomy": "telescopes, planets, comets and distant galaxies in the night sky",
    "baking": "bread dough, sourdough starters, ovens and flaky pastry",
    "chess": "chess openings, endgames, grandmasters and the chess clock",
    "gardening": "garden soil, seedlings, compost and pruning roses",
    "jazz": "jazz saxophone solos, swing rhythm and bebop improvisation",
    "football": "football matches, goals, strikers and the league table",
    "sailing": "sailing boats, wind, knots, harbours and the open sea",
    "volcanoes": "volcanoes, lava flows, magma chambers and eruptions",
}
ITEMS_PER_TOPIC = 10
READERS_PER_TOPIC = 10
# hours from the first click at which each round starts; the span ends at 100 h, so test is
# [90, 100], valid [80, 90), and the ranker's labels the last tenth of [0, 80)
ROUND_HOURS = [0, 25, 50, 76, 85, 98]
START = datetime(2025, 3, 1, tzinfo=UTC)


def write_world(folder: Path) -> tuple[Path, Path, dict[str, str], dict[str, str]]:
    """items.csv and clicks.csv of the world; returns their paths and the topic of every item
    and of every reader."""
    rng = random.Random(23)
    item_topic, reader_topic = {}, {}
    items = []
    numbers = rng.sample(range(1000), len(TOPICS) * ITEMS_PER_TOPIC)
    for t, (topic, words) in enumerate(TOPICS.items()):
        for n in range(ITEMS_PER_TOPIC):
            item_id = f"i{numbers[t * ITEMS_PER_TOPIC + n]:03d}"
            item_topic[item_id] = topic
            items.append({"item_id": item_id, "title": f"{topic.title()} notes, part {n + 1}",
                          "text": f"An article about {topic}: {words}. Part {n + 1}."})
    readers = [(f"reader-{t}{r}", topic) for t, topic in enumerate(TOPICS)
               for r in range(READERS_PER_TOPIC)]
    rng.shuffle(readers)
    clicks = []
    for position, (reader, topic) in enumerate(readers):
        reader_topic[reader] = topic
        own_items = [item for item, item_topic_ in item_topic.items() if item_topic_ == topic]
        reading_order = rng.sample(own_items, len(ROUND_HOURS))
        for hours, item_id in zip(ROUND_HOURS, reading_order, strict=True):
            # a reader a minute after the one before, so the last round ends at exactly 100 h
            moment = START + timedelta(hours=hours, minutes=position * 120 / len(readers))
            clicks.append({"user_id": reader, "item_id": item_id,
                           "timestamp": moment.isoformat()})
    items_file, clicks_file = folder / "items.csv", folder / "clicks.csv"
    for path, rows in ((items_file, items), (clicks_file, clicks)):
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return items_file, clicks_file, item_topic, reader_topic


def run(*argv: str) -> None:
    assert main([str(a) for a in argv]) == 0, f"recsys {' '.join(map(str, argv))} failed"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("known-answer")
    items_file, clicks_file, item_topic, reader_topic = write_world(folder)
    dataset, models = folder / "dataset", folder / "models"
    run("import", "files", "--items", items_file, "--events", clicks_file, "--out", dataset)
    run("train", dataset, "--out", models, "--version", "v1")
    return {"folder": folder, "dataset": dataset, "models": models,
            "item_topic": item_topic, "reader_topic": reader_topic}


def test_the_pipeline_recalls_the_next_click_and_popularity_does_not(world):
    report_file = world["folder"] / "evaluation.json"
    run("evaluate", world["models"], world["dataset"], "--json", report_file)
    report = json.loads(report_file.read_text())
    recall = {method: values["recall@10"] for method, values in report["metrics"].items()}
    ndcg = {method: values["ndcg@10"] for method, values in report["metrics"].items()}
    assert report["details"]["cases"] == len(world["reader_topic"])
    assert recall["pipeline"] >= 0.95, recall
    assert recall["popularity"] <= 0.4, recall
    assert recall["pipeline"] - recall["popularity"] >= 0.5, recall
    # the five unread items of the reader's topic are equally right: when they fill the top
    # five, whichever is the target, ndcg@10 averages (1 + 1/log2(3) + ... + 1/log2(6)) / 5 = 0.59
    assert ndcg["pipeline"] >= 0.45, ndcg


def test_recommend_lists_only_the_readers_topic(world, capsys):
    reader = sorted(world["reader_topic"])[0]
    capsys.readouterr()
    unread = ITEMS_PER_TOPIC - len(ROUND_HOURS)
    run("recommend", world["models"], reader, "--k", unread)
    lines = capsys.readouterr().out.splitlines()
    headline, header, rows = lines[0], lines[1].split(), [line.split() for line in lines[2:]]
    assert "ranked by the model" in headline or "retrieval order" in headline, headline
    item_column = header.index("item_id")
    listed = [row[item_column] for row in rows]
    assert len(listed) == unread
    topics = {world["item_topic"][item] for item in listed}
    assert topics == {world["reader_topic"][reader]}, (reader, listed)
