"""Where one recommendation's CPU goes inside the engine: thread CPU time of each phase, per
request, alone and with 8 or 32 requests per call, on the 100k-item bundle of
benchmarks/serving.py (built there on first use).

    python benchmarks/serving_phases.py [--workdir /tmp/serving-bench]
                                        [--json benchmarks/results/serving_phases.json]

The phases are the calls `Recommender.rank` and `_recommend` make (no ranker time budget),
timed one by one; the FAISS line repeats the batch's own search alone so that the retrieval
line can show the work around it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import numpy as np  # noqa: E402

from features.build import feature_matrix  # noqa: E402
from recsys.index import set_search_threads  # noqa: E402
from recsys.recommender import Filters, RankedBatch, Recommender  # noqa: E402
from recsys.retrieval import retrieve  # noqa: E402
from serving import service  # noqa: E402

PHASES = ("filters, exclusion sets", "user profiles", "co-visitation scores",
          "FAISS search (as the batch asks it)",
          "retrieval around FAISS (sources, merge, exclusion filter)",
          "feature rows (numpy block)", "LightGBM predict", "top-k per user",
          "response bodies")


def phases(recommender: Recommender, users: list[str], batch: int) -> dict[str, float]:
    """ms of thread CPU time per request for each phase, `batch` requests per call."""
    context, clock = recommender.context, time.thread_time
    spent = dict.fromkeys(PHASES, 0.0)
    for start in range(0, len(users), batch):
        group = users[start:start + batch]
        t = [clock()]
        histories = [recommender.users[u] for u in group]
        filters = Filters()
        allowed = recommender._allowed_mask(filters)
        exclude = [set(h.items) for h in histories]
        t.append(clock())
        requests = recommender.request_batch(histories)
        t.append(clock())
        covis = requests.covisitation_scores(context.state.covisitation)
        t.append(clock())
        fetch = context.retrieval.n_semantic + max(len(e) for e in exclude)
        recommender.index.index_.search(np.ascontiguousarray(requests.profiles), fetch)
        t.append(clock())
        candidates = retrieve(requests.histories, requests.profiles, context.index, context.state,
                              context.retrieval, exclude=exclude, allowed=allowed,
                              covis_scores=covis)
        t.append(clock())
        rows = feature_matrix(requests, candidates, context.state, context.item_vectors,
                              context.item_categories)  # the block, as serving hands it on
        t.append(clock())
        scores = recommender.ranker.predict(rows)
        t.append(clock())
        ranked = RankedBatch(candidates, scores)
        slices = candidates.slices(len(group))
        answers = [recommender._top_k(ranked, s.start, s.stop, 10, filters, u, h, False)
                   for s, u, h in zip(slices, group, requests.histories, strict=True)]
        t.append(clock())
        for answer in answers:
            service.body(recommender, answer)
        t.append(clock())
        steps = np.diff(t)
        steps[4] -= steps[3]  # retrieve() ran the FAISS search again inside
        for name, step in zip(PHASES, steps, strict=True):
            spent[name] += step
    return {name: 1000 * s / len(users) for name, s in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/serving-bench")
    parser.add_argument("--users", type=int, default=480)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "serving_phases.json"))
    args = parser.parse_args(argv)
    from benchmarks import serving as bench  # the benchmark, not the package
    models = Path(args.workdir) / "models"
    bench.build_catalogue(models)
    set_search_threads(1)
    recommender = Recommender.load(models, verify=False, threads=1)
    everyone = sorted(recommender.users)
    rng = np.random.default_rng(1)
    users = [everyone[i] for i in rng.choice(len(everyone), args.users, replace=False)]
    batches = (1, 8, 32)
    for batch in batches:  # warm-up
        phases(recommender, users[:64], batch)
    table = {batch: phases(recommender, users, batch) for batch in batches}
    print("| phase | alone | 8 per call | 32 per call |\n|---|---|---|---|")
    for name in PHASES:
        print(f"| {name} | " + " | ".join(f"{table[b][name]:.3f}" for b in batches) + " |")
    print("| **engine total** | " + " | ".join(f"**{sum(table[b].values()):.3f}**"
                                              for b in batches) + " |")
    from recsys.atomic_files import write_json

    write_json({"ms_per_request": {str(b): table[b] for b in batches},
                "total_ms_per_request": {str(b): sum(table[b].values()) for b in batches},
                "users": len(users)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
