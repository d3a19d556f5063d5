"""What the interest model's sequence block costs a request: CPU per request with and without it.

    python benchmarks/interest_sequence_cost.py --bundle MODELS/VERSION [--rounds 4] [--json FILE]

The bundle must be trained with `--finetune` and `FinetuneConfig.interest_sequence_rank > 0`.
In one process, `Recommender.recommend_histories` answers 320 of the bundle's users in calls of
1 and 8 users, once with the block and once with it removed from the same interest model (the
other weights unchanged), alternating which goes first each round; thread CPU per request, the
median over the calls, then over the rounds, and the ratio with / without.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.atomic_files import write_json  # noqa: E402
from recsys.index import set_search_threads  # noqa: E402
from recsys.recommender import Recommender  # noqa: E402

SIZES = (1, 8)


def per_request_ms(recommender: Recommender, users: list[str], size: int) -> float:
    per = []
    for start in range(0, len(users) - size + 1, size):
        group = users[start:start + size]
        began = time.thread_time()
        recommender.recommend_histories([recommender.users[u] for u in group], 10,
                                        user_ids=group)
        per.append((time.thread_time() - began) / size)
    return 1000 * statistics.median(per)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "interest_sequence_cost.json"))
    args = parser.parse_args(argv)
    set_search_threads(1)
    recommender = Recommender.load(args.bundle, threads=1).with_compiled_ranker(print)
    interest = recommender.context.interest
    if interest is None or interest.sequence is None:
        print(f"{args.bundle}: no interest sequence block (train with --finetune and "
              "FinetuneConfig.interest_sequence_rank > 0)", file=sys.stderr)
        return 2
    block = interest.sequence
    users = sorted(recommender.users)
    users = [users[i] for i in np.random.default_rng(1).choice(len(users), 320, replace=False)]
    runs: dict[str, dict[int, list[float]]] = {"with": {}, "without": {}}
    for round_ in range(args.rounds):
        for name in (("with", "without") if round_ % 2 == 0 else ("without", "with")):
            interest.sequence = block if name == "with" else None
            for size in SIZES:
                runs[name].setdefault(size, []).append(per_request_ms(recommender, users, size))
    interest.sequence = block
    medians = {name: {size: round(statistics.median(v), 3) for size, v in by_size.items()}
               for name, by_size in runs.items()}
    print("| users per call | with the block (ms CPU / request) | without | ratio |")
    print("|---|---|---|---|")
    ratios = {}
    for size in SIZES:
        ratios[size] = round(medians["with"][size] / medians["without"][size], 3)
        print(f"| {size} | {medians['with'][size]:.3f} | {medians['without'][size]:.3f} | "
              f"{ratios[size]:.3f} |")
    write_json({"bundle": str(args.bundle), "rounds": args.rounds, "users": len(users),
                "ms_thread_cpu_per_request": medians, "ratio_with_to_without": ratios,
                "command": "python benchmarks/interest_sequence_cost.py --bundle "
                           + str(args.bundle)}, Path(args.json))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
