"""The Ray engine resumes a crashed run from its finished chunks: the bookkeeping with Ray
replaced by an in-process stand-in (fast), and a driver SIGKILLed on a two-node Ray cluster
started on this machine (slow), both ending with the local engine's rows."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import polars as pl
import pytest

import recsys.ray_engine as ray_engine
from recsys.batch import batch_score, inspect_users

ROOT = Path(__file__).resolve().parent.parent


def synthetic_users(recommender, path: Path, n_users: int) -> Path:
    items = recommender.item_ids
    pl.DataFrame({
        "user_id": [f"synthetic-{u}" for u in range(n_users)],
        "history": [[items[(u * 7 + j * 13) % len(items)] for j in range(1 + u % 6)]
                    for u in range(n_users)],
    }).write_parquet(path, row_group_size=500)
    return path


# -- the bookkeeping, with an in-process stand-in for Ray -----------------------------------------
class DriverKilled(Exception):
    """Stands for the driver dying: raised instead of handing back a finished chunk."""


class ObjectRef:
    def __init__(self, handle, args) -> None:
        self.handle, self.args = handle, args


class FakeRay(types.ModuleType):
    """The few Ray calls the engine makes, run in this process: each actor is a real
    `BundleScorer`, a task runs when the driver collects it, and the driver "dies" after
    `die_after` collected chunks."""

    def __init__(self, die_after: int | None = None) -> None:
        super().__init__("ray")
        self.die_after = die_after
        self.scored: list[int] = []   # chunks scored, in the order the driver collected them
        self.actors: list = []
        self.node = ""

    def is_initialized(self) -> bool:
        return True   # "already connected": the engine neither starts nor stops anything

    def available_resources(self) -> dict:
        return {"CPU": 2}

    def remote(self, **options):
        fake = self

        def actor_class(cls):
            class Handle:
                def __init__(self, *args) -> None:
                    self.node = f"node-{len(fake.actors)}"
                    fake.actors.append(self)
                    self.actor = cls(*args)
                    self.score = types.SimpleNamespace(remote=self._call)

                def _call(self, *args):
                    return ObjectRef(self, args)

            return types.SimpleNamespace(remote=Handle)

        return actor_class

    def put(self, value):
        return value   # in one process an object is its own reference

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if self.die_after is not None and len(self.scored) >= self.die_after:
            raise DriverKilled
        self.node = ref.handle.node
        result = ref.handle.actor.score(*ref.args)
        self.scored.append(result[0])
        return result

    def get_runtime_context(self):
        return types.SimpleNamespace(get_node_id=lambda: self.node)


def run_fake(monkeypatch, fake: FakeRay, models_dir, users: Path, out: Path, **options):
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", types.ModuleType("ray.data"))
    settings = {"k": 4, "chunk_size": 50, "exclude_seen": True, "explain": False,
                "progress": False, **options}
    return ray_engine.score_with_ray(models_dir, inspect_users(users), out, **settings)


def test_rerun_after_a_crash_scores_only_the_unfinished_chunks(models_dir, recommender, tmp_path,
                                                               monkeypatch):
    users = synthetic_users(recommender, tmp_path / "users.parquet", 500)   # 10 chunks of 50
    local, out = tmp_path / "local.parquet", tmp_path / "recs.parquet"
    batch_score(models_dir, users, local, k=4, chunk_size=50, progress=False)
    parts = tmp_path / ".recs.parquet.parts"

    crashed = FakeRay(die_after=3)
    with pytest.raises(DriverKilled):
        run_fake(monkeypatch, crashed, models_dir, users, out)
    assert not out.exists(), "a crashed run must not leave an output file"
    finished = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert finished == [f"part-{c:07d}.parquet" for c in sorted(crashed.scored)]
    assert len(finished) == 3

    rerun = FakeRay()
    counts, version, _ = run_fake(monkeypatch, rerun, models_dir, users, out)
    assert counts["resumed"] == 3 and counts["chunks"] == 10
    assert sorted(rerun.scored) == sorted(set(range(10)) - set(crashed.scored)), \
        "a finished chunk was scored again"
    assert sum(counts["nodes"].values()) == 7 and set(counts["nodes"]) == {"node-0", "node-1"}
    assert counts["users"] == 500 and counts["rows"] == 500 * 4
    assert version == recommender.version
    assert pl.read_parquet(out).equals(pl.read_parquet(local))
    assert not parts.exists()


def test_other_options_never_reuse_a_crashed_runs_chunks(models_dir, recommender, tmp_path,
                                                        monkeypatch):
    users = synthetic_users(recommender, tmp_path / "users.parquet", 200)
    out = tmp_path / "recs.parquet"
    with pytest.raises(DriverKilled):
        run_fake(monkeypatch, FakeRay(die_after=2), models_dir, users, out)
    assert len(list((tmp_path / ".recs.parquet.parts").glob("part-*.parquet"))) == 2

    rerun = FakeRay()
    counts, _, _ = run_fake(monkeypatch, rerun, models_dir, users, out, k=3)
    assert counts["resumed"] == 0 and sorted(rerun.scored) == [0, 1, 2, 3]
    assert pl.read_parquet(out).height == 200 * 3


def test_a_bad_row_discards_the_checkpoints(models_dir, recommender, tmp_path, monkeypatch):
    users = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": [f"u{i}" for i in range(600)] + [None]}).write_parquet(
        users, row_group_size=100, statistics=False)
    from recsys.errors import DataError

    with pytest.raises(DataError, match="empty user id"):
        run_fake(monkeypatch, FakeRay(), models_dir, users, tmp_path / "recs.parquet")
    assert not list(tmp_path.glob(".recs.parquet*")) and not (tmp_path / "recs.parquet").exists()


# -- a real two-node cluster --------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray.data")
    spec = importlib.util.spec_from_file_location("bench_batch_cluster",
                                                  ROOT / "benchmarks" / "batch_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.TwoNodeCluster() as running:
        yield running


RERUN = """
import json, sys
from recsys.batch import inspect_users
from recsys.ray_engine import score_with_ray
models, users, out = sys.argv[1:4]
counts, _, _ = score_with_ray(models, inspect_users(users), __import__("pathlib").Path(out), k=4,
                           chunk_size=100, exclude_seen=True, explain=False, progress=False)
print(json.dumps(counts))
"""


@pytest.mark.slow
def test_driver_killed_on_two_nodes_resumes_from_finished_chunks(cluster, models_dir, recommender,
                                                                 tmp_path):
    """SIGKILL `recsys batch-score --engine ray` on a two-node cluster, rerun: the finished
    chunks are not scored again, both nodes score the rest, the rows are the local engine's."""
    n_users, chunk = 6000, 100
    users = synthetic_users(recommender, tmp_path / "users.parquet", n_users)
    local, out = tmp_path / "local.parquet", tmp_path / "recs.parquet"
    batch_score(models_dir, users, local, k=4, chunk_size=chunk, progress=False)
    parts = tmp_path / ".recs.parquet.parts"
    env = {**os.environ, **cluster.env, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "recsys.cli", "batch-score", str(models_dir), str(users),
               "--out", str(out), "--k", "4", "--chunk-size", str(chunk), "--engine", "ray"]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
            assert job.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed job must not leave an output file"
    finished = len(list(parts.glob("part-*.parquet")))
    assert 2 <= finished <= n_users // chunk - 4, "kill the job earlier: too little left to score"

    rerun = subprocess.run([sys.executable, "-c", RERUN, str(models_dir), str(users), str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    counts = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert counts["chunks"] == n_users // chunk and counts["resumed"] == finished
    assert sum(counts["nodes"].values()) == counts["chunks"] - finished, \
        "a finished chunk was scored again"
    assert set(counts["nodes"]) == set(cluster.node_ids), "both nodes must score chunks"
    assert counts["users"] == n_users and counts["rows"] == n_users * 4
    assert pl.read_parquet(out).equals(pl.read_parquet(local))
    assert not parts.exists()
