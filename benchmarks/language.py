"""The default (English) encoder against the multilingual one, on Danish and on English news.

    python benchmarks/language.py [--ebnerd DIR] [--mind DIR] [--encoders default,multilingual]
                                  [--json benchmarks/results/language.json]
    python benchmarks/language.py --speed [--sample 256] [--repeats 3]
                                  [--json benchmarks/results/language_speed.json]

For each MIND-layout source (EB-NeRD sample: Danish; MIND sample: English) and each encoder:
import it (`recsys import mind`), train a bundle with an empty embedding cache (so the encoding
time is the catalogue's), then `recsys evaluate` on the split the dataset gives (test, the
impressions protocol): the semantic baseline's per-impression AUC / nDCG@10, and the
semantic-signal check (`recsys.semantic_signal`). The samples are small (a few dozen test
impressions), so the same two figures are also given over every logged impression with a
history, from the same vectors: more cases, a narrower interval.

`--speed`: texts/s of each encoder on the same sample of item texts (half Danish, half English),
the encoders taking turns in each repeat so that load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.atomic_files import write_json  # noqa: E402
from recsys.data.dataset import load_dataset  # noqa: E402
from recsys.data.importers import import_dataset  # noqa: E402
from recsys.evaluate import evaluate  # noqa: E402
from recsys.interest import semantic_scores  # noqa: E402
from recsys.metrics import impression_metrics  # noqa: E402
from recsys.recommender import Recommender  # noqa: E402
from recsys.semantic_signal import semantic_signal  # noqa: E402
from recsys.splits import Split  # noqa: E402
from training.pipeline import TrainConfig, train  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ENCODERS = {"default": None, "multilingual": "multilingual"}


def every_impression(recommender: Recommender, dataset_dir: Path) -> dict:
    """Semantic AUC / nDCG@10 over every logged impression whose user has a history."""
    split = Split.of(load_dataset(dataset_dir), recommender.item_ids)
    # the whole log as one window: the split's own case builder, from the first event on
    cases = [c for c in split._window_cases(split.events, split.events["timestamp"].min(), None)
             if c.history]
    context = recommender.context
    requests = context.requests([c.history for c in cases], np.array([c.time for c in cases]),
                                np.array([c.last_time for c in cases]))
    scores = semantic_scores(requests.profiles, context.item_vectors,
                             [c.history for c in cases], context.interest)
    shown = [np.array(list(dict.fromkeys(c.shown)), dtype=np.int64) for c in cases]
    labels = [np.isin(s, c.targets).astype(np.float64) for s, c in zip(shown, cases, strict=True)]
    metrics = impression_metrics([scores[j, s] for j, s in enumerate(shown)], labels)
    return {"impressions": len(cases),
            "semantic": {k: round(v, 4) for k, v in metrics.items()},
            "semantic_signal": semantic_signal(context, cases).to_dict()}


def run(source: Path, encoder_name: str, work: Path) -> dict:
    dataset_dir = work / f"{source.name}-data"
    if not dataset_dir.exists():
        import_dataset("mind", source, dataset_dir)
    models = work / f"{source.name}-{encoder_name}"
    cache = work / f"cache-{source.name}-{encoder_name}"       # empty: encoding is timed
    started = time.perf_counter()
    bundle = train(dataset_dir, models, TrainConfig(encoder=ENCODERS[encoder_name],
                                                   cache_dir=cache),
                   version="v1", log=lambda line: print(f"  {line}", flush=True))
    train_s = time.perf_counter() - started
    manifest = Recommender.load(models).manifest
    test = evaluate(models, dataset_dir, "test", log=lambda _: None)
    valid = evaluate(models, dataset_dir, "valid", log=lambda _: None)
    return {
        "source": source.name, "encoder": encoder_name,
        "encoder_fingerprint": manifest["encoder"]["fingerprint"],
        "items": manifest["index"]["items"], "bundle": str(bundle),
        "encode_s": manifest["timings_s"]["embed"], "train_s": round(train_s, 1),
        "test": {"cases": test["details"]["cases"],
                 "semantic": {k: round(v, 4) for k, v in test["metrics"]["semantic"].items()},
                 "pipeline": {k: round(v, 4) for k, v in test["metrics"]["pipeline"].items()},
                 "semantic_signal": test["semantic_signal"]},
        "valid": {"cases": valid["details"]["cases"],
                  "semantic": {k: round(v, 4) for k, v in valid["metrics"]["semantic"].items()},
                  "semantic_signal": valid["semantic_signal"]},
        "all_impressions": every_impression(Recommender.load(models), dataset_dir),
    }


def speed(sources: list[Path], encoders: list[str], sample: int, repeats: int) -> dict:
    from recsys.encoder import Encoder
    from training.pipeline import item_texts

    texts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="recsys-language-") as tmp:
        for source in sources:
            import_dataset("mind", source, Path(tmp) / source.name)
            texts += item_texts(load_dataset(Path(tmp) / source.name).items)[:sample // 2]
    models = {name: Encoder(ENCODERS[name], device="cpu") for name in encoders}
    for encoder in models.values():
        encoder.encode(texts[:16], show_progress=False)        # load and warm up
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, encoder in models.items():
            started = time.perf_counter()
            encoder.encode(texts, show_progress=False)
            rates[name].append(len(texts) / (time.perf_counter() - started))
    medians = {name: float(np.median(r)) for name, r in rates.items()}
    base = medians[encoders[0]]
    return {"texts": len(texts), "repeats": repeats, "max_length": 128,
            "texts_per_s": {n: [round(v, 1) for v in r] for n, r in rates.items()},
            "median_texts_per_s": {n: round(v, 1) for n, v in medians.items()},
            f"speed_vs_{encoders[0]}": {n: round(v / base, 2) for n, v in medians.items()},
            "load_average": [round(v, 2) for v in __import__("os").getloadavg()]}


def table(runs: list[dict]) -> str:
    def signal(s: dict) -> str:
        return f"{s['auc']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"

    header = (f"{'data':<15}{'encoder':<14}{'items':>6}{'encode s':>9}{'train s':>8}"
              f"{'test n':>7}{'sem AUC':>8}{'sem nDCG@10':>12}{'  signal test (95% CI)':<25}"
              f"{'all n':>6}{'sem AUC':>8}{'  signal all (95% CI)':<24}")
    lines = [header]
    for r in runs:
        t, a = r["test"], r["all_impressions"]
        lines.append(f"{r['source']:<15}{r['encoder']:<14}{r['items']:>6}{r['encode_s']:>9.1f}"
                     f"{r['train_s']:>8.1f}{t['cases']:>7}{t['semantic']['auc']:>8.4f}"
                     f"{t['semantic']['ndcg@10']:>12.4f}  {signal(t['semantic_signal']):<23}"
                     f"{a['impressions']:>6}{a['semantic']['auc']:>8.4f}  "
                     f"{signal(a['semantic_signal']):<22}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ebnerd", type=Path, default=DATA / "ebnerd-sample")
    parser.add_argument("--mind", type=Path, default=DATA / "mind-sample")
    parser.add_argument("--encoders", default="default,multilingual")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: benchmarks/results/language.json (language_speed.json "
                             "with --speed)")
    parser.add_argument("--speed", action="store_true", help="encoding speed only")
    parser.add_argument("--sample", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    encoders = args.encoders.split(",")
    unknown = sorted(set(encoders) - set(ENCODERS))
    if unknown:
        parser.error(f"unknown encoders {unknown}; known: {sorted(ENCODERS)}")
    results = Path(__file__).resolve().parent / "results"
    if args.speed:
        measured = speed([args.ebnerd, args.mind], encoders, args.sample, args.repeats)
        print(json.dumps(measured, indent=2))
        out = args.json or results / "language_speed.json"
        write_json({"command": "python benchmarks/language.py " + " ".join(argv or sys.argv[1:]),
                    **measured}, out)
        print(f"wrote {out}")
        return 0
    args.json = args.json or results / "language.json"
    runs = []
    with tempfile.TemporaryDirectory(prefix="recsys-language-") as tmp:
        for source in (args.ebnerd, args.mind):
            for name in encoders:
                print(f"{source.name} / {name}", flush=True)
                runs.append(run(source, name, Path(tmp)))
    print(table(runs))
    write_json({"command": "python benchmarks/language.py " + " ".join(argv or sys.argv[1:]),
                "machine": {"cpus": __import__("os").cpu_count(),
                            "processor": platform.processor() or platform.machine(),
                            "python": platform.python_version()},
                "runs": runs, "table": table(runs).splitlines()}, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
