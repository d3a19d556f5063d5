"""The explorer's user page on the 100,000-item benchmark bundle: render time, server side and
in a real browser.

    python benchmarks/ui.py [--workdir /tmp/ui-bench] [--pages 40]
                            [--json benchmarks/results/ui.json]

Builds (once) the bundle benchmarks/serving.py serves: 100k synthetic items, 20k users, a real
HNSW index and LightGBM ranker. Then, in one process and on loopback:
  * server side: GET /ui/users?user_id=U (history, ten recommendations with their reasons, the
    filter controls) through the app in-process (ASGI, no network), timed around the call;
    median and p90 over `--pages` users, after one warm-up page;
  * in the browser: headless Chromium (Debian's, driven by Selenium) opens the same page from
    a uvicorn server on 127.0.0.1; Navigation Timing gives the server's answer (requestStart
    to responseEnd) and the page ready (startTime to loadEventEnd), median and p90.
The issue's target: a user page in under 100 ms median, measured both ways.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

TARGET_MS = 100.0


def serving_benchmark():
    """benchmarks/serving.py as a module (its name would shadow the `serving` package)."""
    spec = importlib.util.spec_from_file_location("serving_benchmark",
                                                  ROOT / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(values_ms: list[float]) -> dict:
    ordered = sorted(values_ms)
    return {"median_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2), "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/ui-bench")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from serving.main import create_app
    from serving.settings import Settings
    from tests.keys import DATA_KEY
    from tests.ui_browser import LiveServer, browser_missing, chromium, sign_in

    bench = serving_benchmark()
    workdir = Path(args.workdir)
    models = workdir / f"models-{args.items}"
    started = time.perf_counter()
    bench.build_catalogue(models, n_items=args.items, n_users=args.users)
    print(f"bundle ready ({time.perf_counter() - started:.0f}s)", flush=True)
    settings = Settings(models_dir=models, api_keys=[DATA_KEY], poll_current_s=0,
                        rate_limit_per_s=10_000, rate_limit_burst=10_000,
                        event_store=workdir / "ui-events.sqlite")
    app = create_app(settings)
    result: dict = {"bundle": {"items": args.items, "users": args.users},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                # the machine is shared: its load says how busy it was
                                "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
                    "target_ms": TARGET_MS}
    with TestClient(app, follow_redirects=False) as client:
        users = sorted(app.state.context.holder.current.users)[:args.pages + 1]
        login = client.get("/ui/login").text
        token = login.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/ui/login", data={"csrf": token, "key": DATA_KEY}).status_code == 303
        server_ms = []
        for n, user in enumerate(users):
            t0 = time.perf_counter()
            answer = client.get(f"/ui/users?user_id={user}")
            elapsed = (time.perf_counter() - t0) * 1000
            assert answer.status_code == 200 and 'id="recs"' in answer.text, answer.text[-300:]
            if n:  # the first page pays for lazy set-up
                server_ms.append(elapsed)
        result["server_side"] = summary(server_ms)
        print(f"server side: {result['server_side']}", flush=True)

        missing = browser_missing()
        if missing:
            result["browser"] = {"skipped": missing}
        else:
            server = LiveServer(app)
            driver = chromium()
            try:
                sign_in(driver, server.url, DATA_KEY)
                answer_ms, ready_ms = [], []
                for n, user in enumerate(users):
                    driver.get(f"{server.url}/ui/users?user_id={user}")
                    timing = driver.execute_script(
                        "const t = performance.getEntriesByType('navigation')[0];"
                        "return [t.responseEnd - t.requestStart, t.loadEventEnd - t.startTime];")
                    if n:
                        answer_ms.append(timing[0])
                        ready_ms.append(timing[1])
                result["browser"] = {"answer": summary(answer_ms), "page_ready": summary(ready_ms),
                                     "chromium": driver.capabilities.get("browserVersion")}
            finally:
                driver.quit()
                server.stop()
            print(f"browser: {result['browser']}", flush=True)
    result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["meets_target"] = bool(
        result["server_side"]["median_ms"] < TARGET_MS
        and ("answer" not in result["browser"]
             or result["browser"]["page_ready"]["median_ms"] < TARGET_MS))
    print(json.dumps(result, indent=2))
    if args.json:
        from recsys.atomic_files import write_json

        write_json(result, args.json)


if __name__ == "__main__":
    main()
