"""Batch scoring: same answers as the API's Recommender, bad input refused before any output,
a killed job leaves no file and resumes to rows out = rows in (RELIABILITY rows 22 and 23)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recsys.batch as batch
from recsys.batch import batch_score
from recsys.cli import main
from recsys.errors import DataError, RecsysError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def users_file(tmp_path_factory, recommender) -> Path:
    """Known users (bundle history), two anonymous histories and one stranger (popularity)."""
    known = sorted(recommender.users)[:23]
    path = tmp_path_factory.mktemp("batch") / "users.parquet"
    pl.DataFrame({
        "user_id": known + ["anon-1", "anon-2", "stranger"],
        "history": pl.Series([None] * len(known) + [recommender.item_ids[:3],
                                                    recommender.item_ids[5:6] + ["no-such-item"],
                                                    None], dtype=pl.List(pl.String)),
    }).write_parquet(path)
    return path


def run(models_dir, users, out, **options):
    return batch_score(models_dir, users, out, progress=False, **options)


def test_scores_match_the_recommender_the_api_uses(models_dir, recommender, users_file, tmp_path):
    out = tmp_path / "recs.parquet"
    summary = run(models_dir, users_file, out, k=5, chunk_size=4)
    recs = pl.read_parquet(out)
    assert recs.columns == ["user_id", "rank", "item_id", "score"]
    assert summary["users_in"] == summary["users_out"] == 26
    assert summary["rows_out"] == recs.height == 26 * 5
    assert summary["chunks"] == 7 and summary["model_version"] == "v1"
    assert summary["sources"] == {"model": 25, "popularity": 1}
    assert summary["unknown_history_items"] == 1
    assert summary["peak_rss_mb"] > 0 and summary["users_per_s"] > 0

    known = sorted(recommender.users)[:23]
    expected = recommender.recommend(known, 5)
    expected += recommender.recommend_for_history(
        [recommender.item_ids[:3], recommender.item_ids[5:6]], 5)
    expected += recommender.recommend(["stranger"], 5)
    for user, rec in zip(known + ["anon-1", "anon-2", "stranger"], expected, strict=True):
        rows = recs.filter(pl.col("user_id") == user).sort("rank")
        assert rows["rank"].to_list() == [1, 2, 3, 4, 5]
        assert rows["item_id"].to_list() == rec.item_ids
        assert rows["score"].to_list() == pytest.approx(rec.scores, rel=1e-6)
    assert not list(tmp_path.glob(".recs.parquet*")), "temporary files left behind"


def test_local_engine_searches_with_one_faiss_thread_per_chunk(models_dir, users_file, tmp_path,
                                                               monkeypatch):
    """As each Ray actor does: a flat search's sums follow its thread count, so this is what
    keeps the two engines' rows equal (near-tied items otherwise swap places)."""
    import faiss

    seen = []
    score_chunk = batch.score_chunk

    def recording(*args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return score_chunk(*args, **kwargs)

    monkeypatch.setattr(batch, "score_chunk", recording)
    run(models_dir, users_file, tmp_path / "recs.parquet", k=5, chunk_size=4)
    assert seen and set(seen) == {1}


def test_seen_items_are_excluded_unless_asked(models_dir, recommender, tmp_path):
    user = max(recommender.users, key=lambda u: len(recommender.users[u].items))
    seen = {recommender.item_ids[r] for r in recommender.users[user].items}
    users = tmp_path / "one.parquet"
    pl.DataFrame({"user_id": [user]}).write_parquet(users)
    run(models_dir, users, tmp_path / "a.parquet", k=50)
    assert not seen & set(pl.read_parquet(tmp_path / "a.parquet")["item_id"])
    run(models_dir, users, tmp_path / "b.parquet", k=50, exclude_seen=False)
    assert seen & set(pl.read_parquet(tmp_path / "b.parquet")["item_id"])


def test_explain_writes_reasons_as_json(models_dir, users_file, tmp_path):
    out = tmp_path / "explained.parquet"
    run(models_dir, users_file, out, k=3, explain=True)
    recs = pl.read_parquet(out)
    assert recs.columns == ["user_id", "rank", "item_id", "score", "reasons"]
    model_rows = recs.filter(pl.col("user_id") != "stranger")
    reasons = [json.loads(r) for r in model_rows["reasons"]]
    assert all("features" in r for r in reasons)
    assert any(r.get("because_of") for r in reasons)


def test_csv_out_writes_csv_with_the_parquet_rows(models_dir, users_file, tmp_path, capsys):
    parquet, csv = tmp_path / "recs.parquet", tmp_path / "recs.csv"
    run(models_dir, users_file, parquet, k=3, explain=True)
    assert main(["batch-score", str(models_dir), str(users_file), "--out", str(csv), "--k", "3",
                 "--explain"]) == 0
    assert csv.read_text().splitlines()[0] == '"user_id","rank","item_id","score","reasons"'
    from_csv = pl.read_csv(csv, schema_overrides={"user_id": pl.String, "item_id": pl.String})
    expected = pl.read_parquet(parquet)
    assert from_csv.select("user_id", "rank", "item_id").equals(
        expected.select("user_id", "rank", "item_id").cast({"rank": pl.Int64}))
    assert all("text" in json.loads(r) for r in from_csv["reasons"] if r != "{}")
    assert not list(tmp_path.glob(".*"))   # no checkpoints or temp files left


@pytest.mark.parametrize("name", ["recs.txt", "recs", "recs.json"])
def test_unknown_output_extension_is_refused_before_scoring(models_dir, users_file, tmp_path,
                                                            name, capsys):
    out = tmp_path / name
    assert main(["batch-score", str(models_dir), str(users_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown output format" in err and ".csv" in err
    assert list(tmp_path.iterdir()) == []


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


BAD_INPUTS = {
    "missing file": (lambda d: d / "absent.parquet", "file not found", None),
    "not parquet": (lambda d: (d / "text.parquet").write_text("user_id\nu1\n")
                    and d / "text.parquet",
                    "cannot read Parquet", None),
    "missing column": (lambda d: _write(d / "x.parquet", pa.table({"uid": ["a"]})),
                       "missing required column", "user_id"),
    "wrong type": (lambda d: _write(d / "x.parquet", pa.table({"user_id": [1, 2]})),
                   "must hold strings", "user_id"),
    "wrong history type": (lambda d: _write(d / "x.parquet", pa.table(
        {"user_id": ["a"], "history": ["i1 i2"]})), "list of item id strings", "history"),
    "zero rows": (lambda d: _write(d / "x.parquet",
                                   pa.table({"user_id": pa.array([], pa.string())})),
                  "no rows", None),
    "null user": (lambda d: _write(d / "x.parquet", pa.table({"user_id": ["a", "b", None]})),
                  "empty user id", "user_id"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_is_written(models_dir, tmp_path, case, capsys):
    make, message, column = BAD_INPUTS[case]
    users = make(tmp_path)
    out = tmp_path / "out" / "recs.parquet"
    with pytest.raises(DataError, match=message) as caught:
        run(models_dir, users, out)
    assert caught.value.file == str(users)
    assert caught.value.column == column
    if case == "null user":
        assert caught.value.row == 2
    # the command line exits non-zero with the same message and writes nothing either
    assert main(["batch-score", str(models_dir), str(users), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_bad_options_are_refused(models_dir, users_file, tmp_path):
    for options in ({"k": 0}, {"k": 10**9}, {"chunk_size": 0}, {"engine": "spark"}):
        with pytest.raises(RecsysError):
            run(models_dir, users_file, tmp_path / "o.parquet", **options)
    with pytest.raises(RecsysError, match="overwrite the input"):
        run(models_dir, users_file, users_file)
    assert not (tmp_path / "o.parquet").exists()


def test_failure_midway_leaves_no_output_and_rerun_resumes(models_dir, users_file, tmp_path,
                                                           monkeypatch):
    out = tmp_path / "recs.parquet"
    clean = tmp_path / "clean.parquet"
    run(models_dir, users_file, clean, k=4, chunk_size=5)

    real = batch.score_chunk
    calls = {"n": 0}

    def fail_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker died")
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "score_chunk", fail_on_third)
    with pytest.raises(RuntimeError):
        run(models_dir, users_file, out, k=4, chunk_size=5)
    assert not out.exists()
    assert len(list((tmp_path / ".recs.parquet.parts").glob("part-*.parquet"))) == 2

    monkeypatch.setattr(batch, "score_chunk", real)
    summary = run(models_dir, users_file, out, k=4, chunk_size=5)
    assert summary["resumed_chunks"] == 2 and summary["chunks"] == 6
    assert summary["rows_out"] == summary["users_in"] * 4
    assert pl.read_parquet(out).equals(pl.read_parquet(clean))
    assert not (tmp_path / ".recs.parquet.parts").exists()

    # a different job (other k) never reuses another job's chunks
    (tmp_path / ".recs.parquet.parts").mkdir()
    (tmp_path / ".recs.parquet.parts" / "job.json").write_text('{"key": "other"}')
    assert run(models_dir, users_file, out, k=2, chunk_size=5)["resumed_chunks"] == 0


def test_killed_job_leaves_no_partial_file_and_rerun_gives_every_row(models_dir, recommender,
                                                                     tmp_path):
    """RELIABILITY row 23: SIGKILL a running `recsys batch-score`, then run it again."""
    n_users = 1500
    items = recommender.item_ids
    users = tmp_path / "many.parquet"
    pl.DataFrame({
        "user_id": [f"synthetic-{u}" for u in range(n_users)],
        "history": [[items[(u * 7 + j * 13) % len(items)] for j in range(1 + u % 6)]
                    for u in range(n_users)],
    }).write_parquet(users, row_group_size=300)
    out = tmp_path / "recs.parquet"
    parts = tmp_path / ".recs.parquet.parts"
    command = [sys.executable, "-m", "recsys.cli", "batch-score", str(models_dir), str(users),
               "--out", str(out), "--k", "10", "--chunk-size", "100"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
            assert job.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed job must not leave an output file"
    assert 2 <= len(list(parts.glob("part-*.parquet"))) < n_users // 100

    summary = run(models_dir, users, out, k=10, chunk_size=100)
    recs = pl.read_parquet(out)
    assert summary["resumed_chunks"] >= 2
    assert summary["users_in"] == summary["users_out"] == recs["user_id"].n_unique() == n_users
    assert summary["rows_out"] == recs.height == n_users * 10
    assert not parts.exists()


def test_ray_engine_without_ray_says_how_to_install_it(models_dir, users_file, tmp_path,
                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray -> ImportError
    out = tmp_path / "recs.parquet"
    with pytest.raises(RecsysError, match=r"pip install 'recsys\[ray\]'"):
        run(models_dir, users_file, out, engine="ray")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_ray_engine_gives_the_local_engine_rows(models_dir, users_file, tmp_path):
    """A local Ray instance (about 30 s to start and stop on two cores: marked slow)."""
    pytest.importorskip("ray.data")
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    run(models_dir, users_file, local, k=4, chunk_size=5)
    summary = run(models_dir, users_file, remote, k=4, chunk_size=5, engine="ray", workers=2)
    assert summary["engine"] == "ray" and summary["rows_out"] == 26 * 4
    assert summary["sources"] == {"model": 25, "popularity": 1}
    assert pl.read_parquet(remote).equals(pl.read_parquet(local))
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_bulk_embedding_on_ray_matches_the_encoder(recbole_dataset, tmp_path):
    """`embed_with_ray` gives the vectors `Encoder.encode` gives, in item order."""
    pytest.importorskip("ray.data")
    import numpy as np

    from recsys.encoder import Encoder
    from recsys.ray_engine import embed_with_ray

    items = pl.read_parquet(recbole_dataset / "items.parquet").head(64)
    source = tmp_path / "items.parquet"
    items.write_parquet(source)
    summary = embed_with_ray(source, tmp_path / "vectors.parquet", batch_size=16, workers=2,
                             progress=False)
    assert summary["items"] == 64
    vectors = pl.read_parquet(tmp_path / "vectors.parquet")
    assert vectors["item_id"].to_list() == items["item_id"].to_list()
    expected = Encoder(device="cpu").encode(items["text"].fill_null("").to_list())
    assert np.allclose(np.stack(vectors["vector"].to_numpy()), expected, atol=1e-4)
