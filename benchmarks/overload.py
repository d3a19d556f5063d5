"""Overload ramp (RELIABILITY.md row 16): how the server refuses load past its caps.

    python benchmarks/overload.py [--workdir /tmp/overload-bench] [--seconds 5]
                                  [--json benchmarks/results/overload.json] [--baseline ROOT]

Trains a small bundle on the RecBole test fixture (seconds), starts `recsys serve` on 127.0.0.1
with its default caps (RECSYS_MAX_PENDING, RECSYS_MAX_PENDING_EVENTS: 64 each), and loads
`GET /recommendations/{user}` and `POST /events` (one event per request) with 8, 64, 256 and
1,024 keep-alive clients that send their next request the moment an answer arrives, a 503
included (clients retrying at once). Per level: goodput (200s per second), the share of 503s,
and the p50/p99 latency of the 503s. Targets (issue 22): a refusal in under 50 ms p99, and
goodput at 1,024 clients at least 80% of the best level's. `--baseline ROOT` runs the same ramp
against another checkout first (a before/after on the same machine, minutes apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import numpy as np  # noqa: E402

from benchmarks.serving import (_LoadConnection, _LoadRun, _request, event_requests,  # noqa: E402
                                free_port, run_client, start_server, stop_server)

LEVELS = (8, 64, 256, 1024)
REFUSAL_P99_MS = 50.0
GOODPUT_SHARE = 0.8


class _ByStatus(_LoadRun):
    """The load client's run, keeping latencies per status (the 503s are what is measured)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.by_status: dict[int, list[float]] = {}

    def record(self, sent: float, status: int, body: bytes) -> None:
        super().record(sent, status, body)
        if sent >= self.measure_from:
            self.by_status.setdefault(status, []).append(time.perf_counter() - sent)


async def ramp_level(port: int, make_request, concurrency: int, seconds: float,
                     warmup_s: float) -> dict:
    loop = asyncio.get_running_loop()
    run = _ByStatus(make_request, concurrency, seconds, warmup_s)
    transports = []
    for start in range(0, concurrency, 128):  # connect in groups: the listen backlog is finite
        batch = [loop.create_connection(lambda: _LoadConnection(run), "127.0.0.1", port)
                 for _ in range(min(128, concurrency - start))]
        transports += [t for t, _ in await asyncio.gather(*batch)]
    try:
        await run.finished
    finally:
        for transport in transports:
            transport.close()
    window = min(time.perf_counter(), run.stop_at) - run.measure_from
    total = sum(len(v) for v in run.by_status.values())
    refused = np.array(run.by_status.get(503, [])) * 1000
    ok = np.array(run.by_status.get(200, [])) * 1000
    return {"clients": concurrency, "requests": total,
            "goodput_rps": round(len(ok) / window, 1),
            "share_503": round(len(refused) / total, 3) if total else 0.0,
            "p50_503_ms": round(float(np.percentile(refused, 50)), 2) if refused.size else None,
            "p99_503_ms": round(float(np.percentile(refused, 99)), 2) if refused.size else None,
            "p50_200_ms": round(float(np.percentile(ok, 50)), 2) if ok.size else None,
            "p99_200_ms": round(float(np.percentile(ok, 99)), 2) if ok.size else None,
            "other_statuses": {str(k): len(v) for k, v in run.by_status.items()
                               if k not in (200, 503)}}


def ramp(port: int, users: list[str], seconds: float, warmup_s: float, label: str) -> dict:
    routes = {
        "/recommendations": lambda: (lambda encoded: lambda n: encoded[n % len(encoded)])(
            [_request("GET", f"/recommendations/{u}?k=10") for u in users]),
        "/events": lambda: event_requests(1, f"{label}-{time.monotonic_ns()}"),
    }
    out = {}
    for route, make in routes.items():
        levels = []
        for clients in LEVELS:
            level = run_client(ramp_level(port, make(), clients, seconds, warmup_s))
            print(f"{label} {route} {clients:5d} clients: goodput {level['goodput_rps']:7.1f}/s, "
                  f"503 {level['share_503']:.0%}, 503 p99 {level['p99_503_ms']} ms, "
                  f"200 p99 {level['p99_200_ms']} ms", flush=True)
            levels.append(level)
        best = max(level["goodput_rps"] for level in levels)
        top = levels[-1]
        refusals = [level["p99_503_ms"] for level in levels if level["p99_503_ms"] is not None]
        out[route] = {"levels": levels, "goodput_1024_share_of_best":
                      round(top["goodput_rps"] / best, 3) if best else None,
                      "worst_503_p99_ms": max(refusals) if refusals else None,
                      "targets_met": {
                          "refusal_p99_under_50ms": all(r < REFUSAL_P99_MS for r in refusals),
                          "goodput_1024_at_least_80pct":
                              bool(best) and top["goodput_rps"] >= GOODPUT_SHARE * best}}
    return out


def build_models(workdir: Path) -> tuple[Path, list[str]]:
    from recsys.data.importers import import_dataset
    from recsys.recommender import Recommender
    from training.pipeline import train

    models = workdir / "models"
    if not (models / "CURRENT").exists():
        dataset = workdir / "recbole"
        if not dataset.exists():
            import_dataset("recbole", ROOT / "tests" / "fixtures" / "recbole", dataset)
        train(dataset, models, version="v1", log=lambda _: None)
    users = sorted(Recommender.load(models).users)
    return models, users


def serve_and_ramp(models: Path, users: list[str], root: Path, seconds: float,
                   warmup_s: float, label: str) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="overload-store-") as scratch:
        server = start_server(models, port, Path(scratch) / "events.sqlite", root=root,
                              extra_env={"RECSYS_MAX_PENDING": "64",
                                         "RECSYS_LOG_LEVEL": "WARNING"})
        try:
            return ramp(port, users, seconds, warmup_s, label)
        finally:
            stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/overload-bench")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--baseline", help="another checkout to ramp first (before/after)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    models, users = build_models(workdir)
    result = {"benchmark": "overload ramp (RELIABILITY.md row 16)",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/overload.py " + " ".join(argv or sys.argv[1:]),
              "seconds_per_level": args.seconds, "caps": {"max_pending": 64,
                                                          "max_pending_events": 64},
              "targets": {"refusal_p99_ms_under": REFUSAL_P99_MS,
                          "goodput_1024_share_of_best_at_least": GOODPUT_SHARE}}
    if args.baseline:
        result["baseline"] = serve_and_ramp(models, users, Path(args.baseline), args.seconds,
                                            args.warmup, "before")
    result["routes"] = serve_and_ramp(models, users, ROOT, args.seconds, args.warmup, "after")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
