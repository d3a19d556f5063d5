"""Named steps for train, evaluate and retrain ("[2/6] embedding 341 items (341 cached)"), one
bar per step only on a terminal, and no third-party bars or unlabelled metric lines."""

from __future__ import annotations

import io
import json
import re

import numpy as np

from recsys.cli import main
from recsys.embedding_cache import encode_cached
from recsys.progress import Steps

NOISE = ("Batches", "Loading weights", "it/s", "valid's ndcg", "%|")


def step_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\[\d+/\d+\] ", line)]


def test_train_prints_six_named_steps_and_nothing_unlabelled(recbole_dataset, tmp_path, capfd):
    assert main(["train", str(recbole_dataset), "--out", str(tmp_path / "m"),
                 "--version", "steps"]) == 0
    captured = capfd.readouterr()
    steps = step_lines(captured.out)
    assert [s.split("]")[0] + "]" for s in steps] == [f"[{i}/6]" for i in range(1, 7)]
    assert re.fullmatch(r"\[2/6\] embedding 341 items \([\d,]+ cached\)", steps[1])
    assert steps[4].startswith("[5/6] training the ranker")
    for noise in NOISE:
        assert noise not in captured.out + captured.err, noise


def test_evaluate_prints_named_steps(models_dir, recbole_dataset, tmp_path, capfd):
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(models_dir), str(recbole_dataset), "--json", str(report)]) == 0
    captured = capfd.readouterr()
    steps = step_lines(captured.out)
    assert steps[0].startswith("[1/3] loading the bundle")
    assert re.match(r"\[2/3\] evaluating v1 on recbole test: 40 cases", steps[1])
    assert steps[2] == f"[3/3] writing {report}"
    assert json.loads(report.read_text())["split"] == "test"
    for noise in NOISE:
        assert noise not in captured.out + captured.err, noise


def test_bars_are_drawn_only_on_a_terminal(capsys):
    lines: list[str] = []
    on_terminal = Steps(2, lines.append, bars=True)
    on_terminal.start("counting")
    with on_terminal.bar(3, "thing") as bar:
        bar.update(3)
    assert "[1/2]" in capsys.readouterr().err
    piped = Steps(2, lines.append)     # pytest's stderr is not a terminal
    piped.start("counting again")
    with piped.bar(3, "thing") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    assert lines == ["[1/2] counting", "[1/2] counting again"]


class FakeEncoder:
    fingerprint, max_length, resolved_precision = "fake", 8, "fp32"

    def __init__(self) -> None:
        self.calls: list[tuple[int, object]] = []

    def encode(self, texts, *, show_progress=None):
        self.calls.append((len(texts), show_progress))
        return np.ones((len(texts), 4), dtype=np.float32)


def test_the_embedding_step_says_how_many_texts_are_cached(tmp_path):
    encoder = FakeEncoder()
    encode_cached(encoder, ["a"], tmp_path)
    seen: list[tuple[int, int]] = []
    bar_out = io.StringIO()

    def embedding_step(texts, cached):
        seen.append((texts, cached))
        return _Bar(bar_out)

    vectors = encode_cached(encoder, ["a", "b", "c"], tmp_path, progress=embedding_step)
    assert vectors.shape == (3, 4) and seen == [(3, 1)]
    assert encoder.calls[-1] == (2, False)      # the encoder's own bar is off
    assert bar_out.getvalue() == "+2 closed"


class _Bar:
    def __init__(self, out: io.StringIO) -> None:
        self.out = out

    def update(self, n: int) -> None:
        self.out.write(f"+{n}")

    def close(self) -> None:
        self.out.write(" closed")
