"""Soak (reliability row 1): 16 clients for 60 s against a real server, a new version promoted
at 20 s. Must show: no failed request, no response from the old version once the swap is done,
every response after it from the new one.

    python benchmarks/soak_promote.py [--workdir /tmp/serving-bench] [--seconds 60]
                                      [--json benchmarks/results/soak_promote.json]

Uses the 100k-item bundle of benchmarks/serving.py (built there on first use) as v1 and a copy
of it whose ranker scores are all shifted by +1000 as v2-offset (the same order of items, but a
model of its own, so the server compiles its trees during the swap, under load). v1's scores lie
far below 500 and v2-offset's far above, so every item in every response shows which version
scored it: a response mixing versions, or naming one version while scored by the other, is
counted. Promotes with the CLI (`recsys models promote`) plus POST /admin/reload, then rolls back
so the next run starts from v1 again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks import serving as bench  # noqa: E402  (the benchmark, not the package)
from recsys.bundle_versions import current_version, set_current  # noqa: E402
from serving.testing import copy_bundle  # noqa: E402

CLIENTS = 16
NEW = "v2-offset"
SCORE_OFFSET = 1000.0


def shift_scores(bundle: Path) -> None:
    """Add SCORE_OFFSET to every leaf of the ranker's first tree: every prediction passes
    exactly one of them, so every score moves by the offset and the ranking stays the same
    (rewritten through LightGBM, so the file stays well formed)."""
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(bundle / "ranker.txt"))
    first = booster.dump_model()["tree_info"][0]
    stack = [first["tree_structure"]]
    while stack:
        node = stack.pop()
        if "left_child" in node:
            stack.extend((node["left_child"], node["right_child"]))
        else:  # a one-leaf tree has no leaf_index: its leaf is 0
            booster.set_leaf_output(0, node.get("leaf_index", 0),
                                    node["leaf_value"] + SCORE_OFFSET)
    booster.save_model(str(bundle / "ranker.txt"))


def scored_by(body: dict) -> str:
    """Which version the item scores come from: v1, NEW, "mixed", "none" (no items), or the
    source when the ranker did not score them (popularity, degraded)."""
    if body.get("source") != "model":
        return body.get("source", "?")
    versions = {NEW if item["score"] > SCORE_OFFSET / 2 else "v1" for item in body["items"]}
    return versions.pop() if len(versions) == 1 else ("none" if not versions else "mixed")


async def soak(port: int, users: list[str], seconds: float, promote_at: float, promote) -> dict:
    records: list[tuple[float, float, int, str, str]] = []  # start, end, status, version, scores
    failures: list[str] = []
    started = time.perf_counter()
    stop_at = started + seconds
    swap: dict[str, float] = {}

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = c
        try:
            while time.perf_counter() < stop_at:
                path = f"/recommendations/{users[n % len(users)]}?k=10"
                n += CLIENTS
                t0 = time.perf_counter()
                try:
                    writer.write(bench._request("GET", path))
                    await writer.drain()
                    status, body = await bench._response(reader)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                version, scores = "?", "?"
                if status == 200:
                    answer = json.loads(body)
                    version, scores = answer.get("model_version", "?"), scored_by(answer)
                records.append((t0 - started, time.perf_counter() - started, status, version,
                                scores))
        finally:
            writer.close()

    async def promoter() -> None:
        await asyncio.sleep(promote_at)
        swap["asked"] = time.perf_counter() - started
        await asyncio.to_thread(promote)
        swap["done"] = time.perf_counter() - started

    await asyncio.gather(promoter(), *(client(c) for c in range(CLIENTS)))
    done = swap["done"]
    failed = [r for r in records if r[2] != 200]
    stale = [r for r in records if r[0] >= done and r[3] != NEW]
    new_before = [r for r in records if r[1] < swap["asked"] and r[3] == NEW]
    ok = [r for r in records if r[2] == 200]
    mixed = [r for r in ok if r[4] == "mixed"]
    mislabelled = [r for r in ok if r[4] in ("v1", NEW) and r[4] != r[3]]
    return {"clients": CLIENTS, "seconds": seconds, "requests": len(records),
            "failed_requests": len(failed) + len(failures), "failure_samples": failures[:5],
            "responses_by_version": {v: sum(1 for r in records if r[3] == v)
                                     for v in sorted({r[3] for r in records})},
            "responses_by_scores": {v: sum(1 for r in ok if r[4] == v)
                                    for v in sorted({r[4] for r in ok})},
            "mixed_versions": len(mixed), "version_name_not_matching_scores": len(mislabelled),
            "score_offset": SCORE_OFFSET,
            "old_version_after_swap": len(stale), "new_version_before_promote": len(new_before),
            "promote_asked_at_s": round(swap["asked"], 2),
            "swap_done_at_s": round(done, 2), "swap_seconds": round(done - swap["asked"], 2),
            "throughput_rps": len(records) / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/serving-bench")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--promote-at", type=float, default=20.0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "soak_promote.json"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    models = workdir / "models"
    bench.build_catalogue(models)
    if not (models / NEW / "manifest.json").exists():
        copy_bundle(models, "v1", NEW, change=shift_scores)
    set_current(models, "v1")
    from recsys.recommender import Recommender

    users = sorted(Recommender.load(models, verify=False).users)[:5000]
    port = bench.free_port()
    server = bench.start_server(models, port, workdir / f"soak-events-{int(time.time())}.sqlite")

    def promote() -> None:
        subprocess.run([sys.executable, "-m", "recsys.cli", "models", "promote", str(models),
                        NEW], check=True, cwd=ROOT, capture_output=True)
        reader = asyncio.run(bench.admin_reload(port))
        if reader != 200:
            raise RuntimeError(f"admin reload answered {reader}")

    try:
        report = asyncio.run(soak(port, users, args.seconds, args.promote_at, promote))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        set_current(models, "v1")
    report["current_after_run"] = current_version(models)
    print(json.dumps(report, indent=2))
    from recsys.atomic_files import write_json

    write_json(report, args.json)
    ok = (report["failed_requests"] == 0 and report["old_version_after_swap"] == 0
          and report["mixed_versions"] == 0 and report["version_name_not_matching_scores"] == 0
          and report["responses_by_scores"].get(NEW, 0) > 0)
    print(f"{'PASS' if ok else 'FAIL'}: {report['requests']} requests, "
          f"{report['failed_requests']} failed, {report['old_version_after_swap']} from v1 after "
          f"the swap (done {report['swap_seconds']} s after the promote), "
          f"{report['mixed_versions']} mixing versions, "
          f"{report['version_name_not_matching_scores']} naming the other version")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
