"""Soak (reliability row 25): 30 minutes at half of the server's maximum rate, 10% of requests
event posts, the model swapped every 5 minutes. Must show: no failed request, memory and latency
flat (RSS growth < 50 MB from the end of the first minute to the end).

    python benchmarks/soak_long.py [--workdir /tmp/serving-bench] [--duration 1800]
                                   [--swap-every 300] [--rate RPS] [--server 1:32]
                                   [--json benchmarks/results/soak_long.json]

Uses the 100k-item bundle of benchmarks/serving.py (built there on first use) as v1 and a copy
of it as v2. First a calibration: 16 closed-loop clients for 10 s measure the maximum rate of
this mix; the soak then sends at half of it (or at `--rate`), open loop: requests are due at a
fixed pace whatever the answers do, and a request's latency runs from when it was due, so a
stall shows up in the figures instead of slowing the load. Every tenth request posts one click
event for one of the users asked about (so their live histories grow as the run goes on); the
rest ask for recommendations. Every `--swap-every` seconds the other version is promoted
(`recsys models promote` + POST /admin/reload), alternating v2 and v1. Every 10 s the resident
memory of the server's processes is sampled; each minute gets a row: requests, failures, p50
and p99 latency of the recommendations, RSS at the end of the minute.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks import serving as bench  # noqa: E402  (the benchmark, not the package)
from recsys.bundle_versions import set_current  # noqa: E402
from serving.testing import copy_bundle  # noqa: E402

CONNECTIONS = 32        # keep-alive connections the open-loop load is spread over
EVENT_EVERY = 10        # every tenth request posts an event
RSS_EVERY_S = 10.0
RSS_LIMIT_MB = 50.0
P99_FLAT_RATIO = 1.5    # last third's median per-minute p99 against the first third's


def tree_memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process and its children (uvicorn's workers), MB: the total and
    its parts, anonymous (the heap: what a leak or the allocator keeps) and file-backed (mapped
    files and libraries, which the kernel can drop)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    total_kb = dict.fromkeys(fields.values(), 0)
    for entry, _ in bench.tree_processes(pid):
        try:
            for line in (entry / "status").read_text().splitlines():
                name = line.split(maxsplit=1)[0] if line else ""
                if name in fields:
                    total_kb[fields[name]] += int(line.split()[1])
        except (OSError, ValueError):
            continue  # the process ended meanwhile
    return {k: kb / 1024 for k, kb in total_kb.items()}


class Mix:
    """The request mix: recommendations for known users, every tenth request one click event."""

    def __init__(self, users: list[str], run: str) -> None:
        self.users, self.run = users, run
        self.recommend = [bench._request("GET", f"/recommendations/{u}?k=10") for u in users]

    def request(self, n: int) -> tuple[bytes, bool]:
        user = n % len(self.users)
        if n % EVENT_EVERY != EVENT_EVERY - 1:
            return self.recommend[user], False
        body = json.dumps({"events": [{
            "event_id": f"{self.run}-{n}", "user_id": self.users[user],
            "item_id": f"item{(n * 7919) % 100_000}", "type": "click"}]}).encode()
        return bench._request("POST", "/events", body), True


async def calibrate(port: int, mix: Mix, seconds: float, clients: int = 16) -> float:
    """Requests per second of the mix with `clients` closed-loop clients."""
    counter = itertools.count()
    done = [0]
    started = time.perf_counter()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() - started < seconds:
                writer.write(mix.request(next(counter))[0])
                await writer.drain()
                status, _ = await bench._response(reader)
                if status == 200:
                    done[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return done[0] / (time.perf_counter() - started)


async def soak(port: int, mix: Mix, server_pid: int, rate: float, duration: float,
               swap_every: float, swap) -> dict:
    started = time.perf_counter()
    stop_at = started + duration
    queue: asyncio.Queue = asyncio.Queue()
    # (due s, done s, status, is_event, model_version) for every request
    records: list[tuple[float, float, int, bool, str]] = []
    failures: list[str] = []
    memory: list[tuple[float, dict[str, float]]] = []   # (seconds in, tree_memory_mb)
    swaps: list[dict] = []
    sent = [0]

    async def pacer() -> None:
        for n in itertools.count():
            due = started + n / rate
            if due >= stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((n, due))
            sent[0] += 1
        for _ in range(CONNECTIONS):
            queue.put_nowait(None)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (job := await queue.get()) is not None:
                n, due = job
                payload, is_event = mix.request(n)
                try:
                    writer.write(payload)
                    await writer.drain()
                    status, body = await bench._response(reader)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                version = "-"
                if not is_event and status == 200:
                    version = body.split(b'"model_version":"', 1)[1].split(b'"', 1)[0].decode()
                records.append((due - started, time.perf_counter() - started, status, is_event,
                                version))
        finally:
            writer.close()

    def sample() -> None:
        memory.append((time.perf_counter() - started, tree_memory_mb(server_pid)))

    async def sampler() -> None:
        while time.perf_counter() < stop_at:
            sample()
            await asyncio.sleep(RSS_EVERY_S)
        sample()

    async def swapper() -> None:
        for k in itertools.count(1):
            at = started + k * swap_every
            if at >= stop_at - 5:
                return
            await asyncio.sleep(at - time.perf_counter())
            version = "v2" if k % 2 else "v1"
            asked = time.perf_counter() - started
            try:
                await asyncio.to_thread(swap, version)
                ok = True
            except Exception as exc:  # recorded; the run fails on it
                failures.append(f"swap to {version}: {exc}")
                ok = False
            swaps.append({"to": version, "asked_at_s": round(asked, 2), "ok": ok,
                          "seconds": round(time.perf_counter() - started - asked, 2)})

    await asyncio.gather(pacer(), sampler(), swapper(),
                         *(connection() for _ in range(CONNECTIONS)))
    return {"records": records, "failures": failures, "memory": memory, "swaps": swaps,
            "due": sent[0]}


def per_minute(records, rss, duration: float) -> list[dict]:
    rows = []
    for minute in range(int(np.ceil(duration / 60))):
        lo, hi = 60 * minute, 60 * (minute + 1)
        mine = [r for r in records if lo <= r[0] < hi]
        latencies = np.array([1000 * (r[1] - r[0]) for r in mine if not r[3] and r[2] == 200])
        samples = [mb for t, mb in rss if t <= hi + RSS_EVERY_S / 2]
        rows.append({
            "minute": minute + 1, "requests": len(mine),
            "events": sum(1 for r in mine if r[3]),
            "failed": sum(1 for r in mine if r[2] != 200),
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
            "rss_mb": samples[-1] if samples else None,
            "rss_max_mb": max((mb for t, mb in rss if lo <= t <= hi + RSS_EVERY_S / 2),
                              default=None),
            "versions": sorted({r[4] for r in mine if r[4] != "-"}),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/serving-bench")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of soak")
    parser.add_argument("--swap-every", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=None,
                        help="requests per second (default: half the calibrated maximum)")
    parser.add_argument("--calibrate-seconds", type=float, default=10.0)
    parser.add_argument("--server", default="1:32",
                        help="PROCESSES:BATCH_MAX[:MODEL_THREADS], as in benchmarks/serving.py")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "soak_long.json"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    models = workdir / "models"
    bench.build_catalogue(models)
    if not (models / "v2" / "manifest.json").exists():
        copy_bundle(models, "v1", "v2")
    set_current(models, "v1")
    from recsys.recommender import Recommender

    users = sorted(Recommender.load(models, verify=False).users)[:5000]
    workers, batch_max, *threads = (int(x) for x in args.server.split(":"))
    env = {"RECSYS_WORKERS": str(workers), "RECSYS_BATCH_MAX": str(batch_max),
           "RECSYS_MODEL_THREADS": str(threads[0] if threads else os.cpu_count() or 1)}
    if workers > 1:  # a reload reaches one worker; the others follow CURRENT within 2 s
        env["RECSYS_POLL_CURRENT_S"] = "2"
    port = bench.free_port()
    run = f"soak{int(time.time())}"
    server = bench.start_server(models, port, workdir / f"{run}-events.sqlite", env)
    if workers > 1:
        time.sleep(15)  # the other workers load their copy of the model

    def swap(version: str) -> None:
        subprocess.run([sys.executable, "-m", "recsys.cli", "models", "promote", str(models),
                        version], check=True, cwd=ROOT, capture_output=True)
        status = asyncio.run(bench.admin_reload(port))
        if status != 200:
            raise RuntimeError(f"admin reload answered {status}")

    load_at_start = os.getloadavg()
    try:
        mix = Mix(users, f"{run}-cal")
        max_rate = asyncio.run(calibrate(port, mix, args.calibrate_seconds))
        rate = args.rate or max_rate / 2
        print(f"calibration: {max_rate:.0f} req/s at most with this mix; soak at {rate:.0f} "
              f"req/s for {args.duration:.0f} s, a swap every {args.swap_every:.0f} s")
        result = asyncio.run(soak(port, Mix(users, run), server.pid, rate, args.duration,
                                  args.swap_every, swap))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        set_current(models, "v1")

    records, memory = result["records"], result["memory"]
    rss = [(t, parts["rss"]) for t, parts in memory]
    minutes = per_minute(records, rss, args.duration)
    baseline = next(m["rss_mb"] for m in minutes if m["rss_mb"] is not None)
    growth = rss[-1][1] - baseline
    # the same growth split: the sample the first minute's RSS came from, against the last
    first = [parts for t, parts in memory if t <= 60 + RSS_EVERY_S / 2][-1]
    parts_growth = {k: round(memory[-1][1][k] - first[k], 1) for k in first}
    # RSS step of each swap: the last sample before it was asked against the last one before the
    # next swap (or the end), so a step is what the swap left behind once the server settled
    for k, done in enumerate(result["swaps"]):
        until = (result["swaps"][k + 1]["asked_at_s"] if k + 1 < len(result["swaps"])
                 else float("inf"))
        before = [mb for t, mb in rss if t < done["asked_at_s"]]
        after = [mb for t, mb in rss if done["asked_at_s"] + done["seconds"] < t < until]
        if before and after:
            done["rss_step_mb"] = round(after[-1] - before[-1], 1)
    p99s = [m["p99_ms"] for m in minutes if m["p99_ms"] is not None]
    third = max(1, len(p99s) // 3)
    p99_ratio = statistics.median(p99s[-third:]) / statistics.median(p99s[:third])
    failed = sum(1 for r in records if r[2] != 200) + len(result["failures"])
    answered = len(records)
    expected = result["due"]
    latencies = np.array([1000 * (r[1] - r[0]) for r in records if not r[3] and r[2] == 200])
    report = {
        "server": args.server, "duration_s": args.duration, "swap_every_s": args.swap_every,
        "calibrated_max_rps": max_rate, "rate_rps": rate, "requests_due": expected,
        "requests_answered": answered, "events_acknowledged": sum(
            1 for r in records if r[3] and r[2] == 200),
        "failed_requests": failed, "failure_samples": result["failures"][:5],
        "statuses": {str(s): sum(1 for r in records if r[2] == s)
                     for s in sorted({r[2] for r in records})},
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "rss_after_first_minute_mb": baseline, "rss_end_mb": rss[-1][1],
        "rss_max_mb": max(mb for _, mb in rss), "rss_growth_mb": growth,
        "rss_growth_by_part_mb": parts_growth,
        "p99_last_third_over_first_third": p99_ratio, "swaps": result["swaps"],
        "machine": {"cores": os.cpu_count(), "load_average_at_start": load_at_start,
                    "load_average_at_end": os.getloadavg()},
        "minutes": minutes, "rss_samples": [[round(t, 1), round(mb, 1)] for t, mb in rss],
        "rss_part_samples": [[round(t, 1), {k: round(v, 1) for k, v in parts.items()}]
                             for t, parts in memory],
    }
    report["met"] = {"no_failed_requests": failed == 0,
                     "all_requests_answered": answered == expected,
                     "all_swaps_ok": all(s["ok"] for s in result["swaps"]),
                     "rss_growth_under_50_mb": growth < RSS_LIMIT_MB,
                     "p99_flat": p99_ratio <= P99_FLAT_RATIO}
    print("\n| minute | requests | events | failed | p50 ms | p99 ms | RSS MB | max RSS MB "
          "| versions |\n|---|---|---|---|---|---|---|---|---|")
    for m in minutes:
        print(f"| {m['minute']} | {m['requests']} | {m['events']} | {m['failed']} | "
              f"{m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['rss_mb']:.0f} | "
              f"{m['rss_max_mb']:.0f} | {','.join(m['versions'])} |")
    print(f"\n{answered} of {expected} requests answered, {failed} failed; p50 "
          f"{report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms; swaps "
          f"{[(s['to'], s['seconds']) for s in result['swaps']]}; RSS steps at swaps "
          f"{[s.get('rss_step_mb') for s in result['swaps']]} MB; RSS {baseline:.0f} MB after "
          f"the first minute, {rss[-1][1]:.0f} MB at the end (growth {growth:+.1f} MB, max "
          f"{report['rss_max_mb']:.0f} MB; by part {parts_growth}); p99 last third / first "
          f"third {p99_ratio:.2f}")
    from recsys.atomic_files import write_json

    write_json(report, args.json)
    ok = all(report["met"].values())
    print(f"{'PASS' if ok else 'FAIL'}: {report['met']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
