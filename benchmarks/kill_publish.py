"""Reliability row 5: SIGKILL while a bundle is being published, at random points, many times.

Two kinds of kill, each followed by the same checks:
- publish kills: a child publishes copies of a trained bundle one after another through the
  real BundleWriter.publish (files hashed, manifest written, fsync, rename, CURRENT moved) and
  is killed at a random moment inside that work;
- train kills: a real `recsys train ... --out MODELS` process is killed at a random moment in
  the 0.2 s after its bundle's temporary folder appears, while it writes and publishes the
  bundle (a run that finishes first is counted, not killed).

After every kill: CURRENT names a complete bundle whose files match its manifest and which
loads (bad loads = 0); every visible (not dot-hidden) folder in MODELS is a complete bundle;
`recsys models list MODELS` exits 0. Writes the totals as JSON.

    python benchmarks/kill_publish.py --kills 20 --train-kills 5 \
        --out benchmarks/results/kill_publish.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHES_PER_CHILD = 3
WRITE_WINDOW_S = 0.2  # train kills land this long at most after its bundle folder appears


def publish_copies(models: Path, source: str, prefix: str) -> None:
    """Child: publish copies of bundle `source` (hard links, so only the hashing, manifest,
    fsync and renames cost time) until killed or PUBLISHES_PER_CHILD are done."""
    from recsys.bundle_versions import MANIFEST, BundleWriter

    manifest = json.loads((models / source / MANIFEST).read_text())
    for key in ("format_version", "version", "created_at", "libraries", "files"):
        manifest.pop(key, None)
    print("ready", flush=True)
    for n in range(PUBLISHES_PER_CHILD):
        writer = BundleWriter(models, f"{prefix}-{n}")
        shutil.rmtree(writer.path)
        shutil.copytree(models / source, writer.path, copy_function=os.link,
                        ignore=shutil.ignore_patterns(MANIFEST))
        writer.publish(manifest)
        print(f"published {prefix}-{n}", flush=True)
    time.sleep(3600)


def check(models: Path) -> dict:
    """What a server starting now, or `recsys models list`, would find."""
    from recsys.bundle_versions import MANIFEST, current_version, read_manifest
    from recsys.cli import main as cli
    from recsys.recommender import Recommender

    problems = []
    try:
        current = current_version(models)
        Recommender.load(models / current)  # verifies every file against the manifest
    except Exception as exc:  # noqa: BLE001 - any failure here is what we count
        current = None
        problems.append(f"CURRENT: {type(exc).__name__}: {exc}")
    visible = [p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for bundle in visible:
        try:
            read_manifest(bundle)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"visible half-written bundle {bundle.name}: {exc}")
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            listed = cli(["models", "list", str(models)])
        finally:
            sys.stdout = stdout
    if listed != 0:
        problems.append(f"models list exited {listed}")
    hidden = [p.name for p in models.iterdir() if p.name.startswith(".tmp-")]
    return {"current": current, "problems": problems, "bundles": len(visible),
            "leftover_tmp": len(hidden), "has_manifest": all((b / MANIFEST).exists()
                                                             for b in visible)}


def kill_after(command: list[str], delay_s: float, env: dict, wait_for: str | None = None,
               wait_for_path: Path | None = None) -> tuple[int, str]:
    """SIGKILL `command` `delay_s` after it prints `wait_for`, or after `wait_for_path` appears
    (the bundle's temporary folder: the writing has begun)."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    if wait_for:
        line = child.stdout.readline()  # imports done: the kill lands inside the publishing
        assert line.strip() == wait_for, line
    while wait_for_path and not wait_for_path.exists() and child.poll() is None:
        time.sleep(0.002)
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=30)
    return child.returncode, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills during publishing")
    parser.add_argument("--train-kills", type=int, default=5, help="kills of `recsys train`")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the totals here")
    parser.add_argument("--child", nargs=3, metavar=("MODELS", "SOURCE", "PREFIX"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        publish_copies(Path(args.child[0]), args.child[1], args.child[2])
        return 0

    from recsys.data.importers import import_dataset

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-publish-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSYS_CACHE": str(work / "cache")}
    dataset = work / "recbole"
    import_dataset("recbole", ROOT / "tests" / "fixtures" / "recbole", dataset)
    models = work / "models"
    train = [sys.executable, "-m", "recsys.cli", "train", str(dataset), "--out", str(models)]
    subprocess.run(train + ["--version", "v1"], env=env, check=True, capture_output=True)
    # timed with the embedding cache warm, as every killed run below will have it
    started = time.monotonic()
    subprocess.run(train + ["--version", "v1-warm", "--no-promote"], env=env, check=True,
                   capture_output=True)
    train_s = time.monotonic() - started

    # how long one publish takes, to spread the kills over the child's publishing
    from recsys.bundle_versions import MANIFEST, BundleWriter

    manifest = json.loads((models / "v1" / MANIFEST).read_text())
    for key in ("format_version", "version", "created_at", "libraries", "files"):
        manifest.pop(key, None)
    writer = BundleWriter(models, "timing")
    shutil.rmtree(writer.path)
    shutil.copytree(models / "v1", writer.path, copy_function=os.link,
                    ignore=shutil.ignore_patterns(MANIFEST))
    started = time.monotonic()
    writer.publish(manifest, make_current=False)
    publish_s = time.monotonic() - started

    runs = []
    for n in range(args.kills):
        delay = rng.uniform(0, PUBLISHES_PER_CHILD * publish_s)
        code, out = kill_after([sys.executable, __file__, "--child", str(models), "v1",
                                f"p{n}"], delay, env, wait_for="ready")
        runs.append({"kind": "publish", "delay_s": round(delay, 3), "returncode": code,
                     "published_before_kill": out.count("published"), **check(models)})
    for n in range(args.train_kills):
        delay = rng.uniform(0, WRITE_WINDOW_S)
        code, _ = kill_after(train + ["--version", f"t{n}"], delay, env,
                             wait_for_path=models / f".tmp-t{n}")
        runs.append({"kind": "train", "delay_s": round(delay, 3), "returncode": code,
                     **check(models)})

    bad = [r for r in runs if r["problems"]]
    totals = {
        "kills": len(runs), "publish_kills": args.kills, "train_kills": args.train_kills,
        "killed_by_sigkill": sum(r["returncode"] == -signal.SIGKILL for r in runs),
        "bundles_published_between_kills": sum(r.get("published_before_kill", 0) for r in runs),
        "bad_current_or_bad_loads": len(bad),
        "leftover_tmp_folders_at_end": runs[-1]["leftover_tmp"] if runs else 0,
        "one_publish_s": round(publish_s, 3), "one_train_s": round(train_s, 1),
        "seed": args.seed, "runs": runs,
    }
    print(json.dumps({k: v for k, v in totals.items() if k != "runs"}, indent=2))
    for r in bad:
        print("BAD:", r, file=sys.stderr)
    if args.out:
        from recsys.atomic_files import write_json

        write_json(totals, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
