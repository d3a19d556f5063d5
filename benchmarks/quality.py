"""Quality benchmarks of the behavioural features and the ranker, on the shared real data.

Runs the same functions as `recsys import / train / evaluate` and writes one JSON per study to
benchmarks/results/ (the tables in docs/benchmarks.md are read from them):

    quality_amazon_ablation.json   amazon-scientific test: pipeline vs the single sources, and the
                                   ranker retrained with each feature group removed
    quality_ml_time.json           ml-latest-small, time split: pipeline vs baselines
    quality_impressions.json       MIND and EB-NeRD samples, per-impression AUC / MRR / nDCG
    quality_diversity.json         amazon test: MMR and a per-category cap, NDCG@10 and
                                   intra-list diversity of the top 10

Nothing is selected on test: every model stops early on valid; the ablation only removes
columns. Bundles and imported datasets are kept in --workdir, so an interrupted run resumes.

    .venv/bin/python benchmarks/quality.py --workdir /tmp/quality-bench            # everything
    .venv/bin/python benchmarks/quality.py --only ml,impressions                   # some studies
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.build import FEATURE_GROUPS  # noqa: E402
from recsys.atomic_files import write_json  # noqa: E402
from recsys.data.dataset import load_dataset  # noqa: E402
from recsys.data.importers import import_dataset  # noqa: E402
from recsys.evaluate import evaluate  # noqa: E402
from recsys.metrics import rank_of, ranking_metrics  # noqa: E402
from recsys.recommender import Filters, History, Recommender  # noqa: E402
from recsys.splits import Split  # noqa: E402
from training.pipeline import TrainConfig, train  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
SOURCES = {  # name: (importer format, shared folder)
    "amazon": ("recbole", "amazon-scientific"),
    "ml": ("movielens", "ml-latest-small"),
    "mind": ("mind", "mind-sample"),
    "ebnerd": ("mind", "ebnerd-sample"),
}
STUDIES = ("ablation", "ml", "impressions", "diversity")
DIVERSITY_RULES = {
    "none": Filters(exclude_seen=False),
    "mmr_0.7": Filters(exclude_seen=False, diversity="mmr", mmr_lambda=0.7),
    "mmr_0.5": Filters(exclude_seen=False, diversity="mmr", mmr_lambda=0.5),
    "category_cap_3": Filters(exclude_seen=False, diversity="category_cap", max_per_category=3),
    "category_cap_1": Filters(exclude_seen=False, diversity="category_cap", max_per_category=1),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def dataset(workdir: Path, name: str) -> Path:
    out = workdir / "data" / name
    if not (out / "dataset.json").exists():
        fmt, folder = SOURCES[name]
        source = SHARED / folder
        if name == "ebnerd":
            source = ebnerd_mentioned_only(workdir)
        import_dataset(fmt, source, out)
    return out


def ebnerd_mentioned_only(workdir: Path) -> Path:
    """The EB-NeRD sample with its news file cut to the 757 articles its 252 impressions and
    histories mention: every behaviour row is kept; embedding all 15,514 articles would take
    about an hour on the 2-core machine while the other 14,757 never appear in an event."""
    src, out = SHARED / "ebnerd-sample", workdir / "sources" / "ebnerd-mentioned"
    out.mkdir(parents=True, exist_ok=True)
    behaviors = (src / "behaviors.tsv").read_text(encoding="utf-8")
    mentioned = set()
    for line in behaviors.splitlines():
        fields = line.split("\t")
        mentioned.update(fields[3].split())
        mentioned.update(item.rsplit("-", 1)[0] for item in fields[4].split())
    news = (src / "news_subset.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [news[0]] + [line for line in news[1:] if line.split("\t", 1)[0] in mentioned]
    (out / "news_subset.tsv").write_text("".join(kept), encoding="utf-8")
    (out / "behaviors.tsv").write_text(behaviors, encoding="utf-8")
    return out


def bundle(workdir: Path, name: str, version: str, config: TrainConfig | None = None) -> Path:
    models = workdir / f"models-{name}"
    path = models / version
    if not (path / "manifest.json").exists():
        log(f"train {name} {version}")
        train(dataset(workdir, name), models, config or TrainConfig(), version=version,
              make_current=False, log=lambda m: None)
    return path


def evaluated(workdir: Path, name: str, version: str, split: str) -> dict:
    """`recsys evaluate` of one bundle, cached in the workdir (without the per-case lists)."""
    cache = workdir / "evaluations" / f"{name}-{version}-{split}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    log(f"evaluate {name} {version} {split}")
    report = evaluate(workdir / f"models-{name}" / version, dataset(workdir, name), split,
                      log=lambda m: None)
    report.pop("per_case", None)
    write_json(report, cache)
    return report


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def command(name: str, version: str, split: str, workdir: Path) -> str:
    return (f"recsys evaluate {workdir}/models-{name}/{version} {workdir}/data/{name} "
            f"--split {split}")


# -- studies ------------------------------------------------------------------------------------
def study_ablation(workdir: Path) -> dict:
    """Full pipeline and single sources on valid and test; then each feature group removed."""
    full = bundle(workdir, "amazon", "full")
    out = {"dataset": "amazon-scientific", "protocol": "leave_one_out, full ranking over all items",
           "selection": "early stopping on valid only; nothing chosen on test",
           "full": {split: evaluated(workdir, "amazon", "full", split)["metrics"]
                    for split in ("valid", "test")},
           "full_ranker": {k: manifest(full)["ranker"][k] for k in
                           ("best_iteration", "train_groups", "valid_groups",
                            "valid_ndcg@10_candidates")},
           "ablation": {}, "commands": [command("amazon", "full", "test", workdir)]}
    test = out["full"]["test"]
    best_single = max(("popularity", "covisitation", "semantic"), key=lambda m: test[m]["ndcg@10"])
    out["best_single_source"] = best_single
    out["relative_gain_ndcg@10"] = test["pipeline"]["ndcg@10"] / test[best_single]["ndcg@10"] - 1
    for group in FEATURE_GROUPS:
        version = f"no-{group}"
        path = bundle(workdir, "amazon", version, TrainConfig(exclude_feature_groups=(group,)))
        metrics = evaluated(workdir, "amazon", version, "test")["metrics"]["pipeline"]
        out["ablation"][group] = {
            "features_removed": list(FEATURE_GROUPS[group]),
            "test": {k: metrics[k] for k in ("ndcg@10", "recall@10", "recall@50", "mrr")},
            "delta_ndcg@10": metrics["ndcg@10"] - test["pipeline"]["ndcg@10"],
            "best_iteration": manifest(path)["ranker"]["best_iteration"]}
        out["commands"].append(command("amazon", version, "test", workdir))
        write_json(out, RESULTS / "quality_amazon_ablation.json")   # partial results survive
    return out


def study_ml(workdir: Path) -> dict:
    bundle(workdir, "ml", "full")
    out = {"dataset": "ml-latest-small", "protocol": "time: train before the valid window, "
           "test = last 10% of time, ratings >= 4 are clicks, every test click replayed",
           "results": {split: evaluated(workdir, "ml", "full", split)
                       for split in ("valid", "test")},
           "commands": [command("ml", "full", s, workdir) for s in ("valid", "test")]}
    test = out["results"]["test"]["metrics"]
    out["pipeline_beats"] = {m: test["pipeline"]["ndcg@10"] > test[m]["ndcg@10"]
                             for m in ("popularity", "covisitation", "semantic")}
    return out


def study_impressions(workdir: Path) -> dict:
    out = {"note": "format and code-path proof on real rows; too small for conclusions. "
                   "EB-NeRD: all 252 impressions, news file cut to the 757 articles they "
                   "mention (see ebnerd_mentioned_only)",
           "results": {}, "commands": []}
    for name in ("mind", "ebnerd"):
        path = bundle(workdir, name, "full")
        out["results"][name] = {split: evaluated(workdir, name, "full", split)
                                for split in ("valid", "test")}
        out["results"][name]["ranker"] = {k: manifest(path)["ranker"][k] for k in
                                          ("best_iteration", "train_groups", "valid_groups")}
        out["commands"] += [command(name, "full", s, workdir) for s in ("valid", "test")]
    return out


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance of a list's (normalised) item vectors."""
    n = len(vectors)
    if n < 2:
        return 0.0
    sims = vectors @ vectors.T
    return float((1.0 - sims[np.triu_indices(n, 1)]).mean())


def study_diversity(workdir: Path, max_cases: int) -> dict:
    """Top 10 of the served path (`recommend_histories`) under each diversity rule."""
    path = bundle(workdir, "amazon", "full")
    recommender = Recommender.load(path)
    data = load_dataset(dataset(workdir, "amazon"))
    cases = [c for c in Split.of(data, recommender.item_ids).cases("test") if c.history]
    if len(cases) > max_cases:
        keep = np.random.default_rng(0).choice(len(cases), max_cases, replace=False)
        cases = [cases[i] for i in sorted(keep)]
    histories = [History(list(c.history), c.last_time) for c in cases]
    out = {"dataset": "amazon-scientific", "split": "test", "cases": len(cases), "k": 10,
           "note": "seen items allowed, as in the unmasked evaluation; NDCG@10 of the served "
                   "top 10; ILD = mean pairwise cosine distance of the top-10 item vectors",
           "rules": {}}
    for name, filters in DIVERSITY_RULES.items():
        started = time.perf_counter()
        recs = recommender.recommend_histories(histories, k=10, filters=filters)
        ranks, ild, categories = [], [], []
        for case, rec in zip(cases, recs, strict=True):
            rows = np.array([recommender.item_rows[i] for i in rec.item_ids], dtype=np.int64)
            score = np.full(len(recommender.item_ids), -np.inf)
            score[rows] = np.arange(len(rows), 0, -1)
            ranks.append([rank_of(score, t) for t in case.targets])
            ild.append(intra_list_diversity(recommender.item_vectors[rows]))
            categories.append(len(set(recommender.item_categories[rows].tolist())))
        metrics = ranking_metrics(ranks, (10,))
        out["rules"][name] = {"ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
                              "ild@10": float(np.mean(ild)),
                              "distinct_categories@10": float(np.mean(categories)),
                              "seconds": round(time.perf_counter() - started, 1)}
        log(f"diversity {name}: {out['rules'][name]}")
    return out


# -- tables for docs/benchmarks.md -----------------------------------------------------------
def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def tables() -> str:
    """Markdown tables from the JSON files in benchmarks/results (what the docs show)."""
    lines = []

    def read(name):
        return json.loads((RESULTS / name).read_text()) if (RESULTS / name).exists() else None

    ablation = read("quality_amazon_ablation.json")
    if ablation:
        lines += ["amazon-scientific, test, unmasked, full ranking over all 4,385 items:", "",
                  _row(["method", "NDCG@10", "Recall@10", "Recall@50", "MRR",
                        "NDCG@10 masked"]), _row(["---"] * 6)]
        for method, m in ablation["full"]["test"].items():
            lines.append(_row([method, f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}",
                               f"{m['recall@50']:.4f}", f"{m['mrr']:.4f}",
                               f"{m['ndcg@10_masked']:.4f}"]))
        lines += ["", f"Pipeline vs the best single source ({ablation['best_single_source']}): "
                      f"{100 * ablation['relative_gain_ndcg@10']:+.1f}% relative NDCG@10.", "",
                  "Ablation (ranker retrained without the group; test, unmasked):", "",
                  _row(["removed group", "features", "NDCG@10", "change", "Recall@50", "trees"]),
                  _row(["---"] * 6),
                  _row(["(none)", "all", f"{ablation['full']['test']['pipeline']['ndcg@10']:.4f}",
                        "", f"{ablation['full']['test']['pipeline']['recall@50']:.4f}",
                        ablation["full_ranker"]["best_iteration"]])]
        for group, a in ablation["ablation"].items():
            lines.append(_row([group, ", ".join(a["features_removed"]),
                               f"{a['test']['ndcg@10']:.4f}", f"{a['delta_ndcg@10']:+.4f}",
                               f"{a['test']['recall@50']:.4f}", a["best_iteration"]]))
        lines.append("")
    ml = read("quality_ml_time.json")
    if ml:
        lines += ["ml-latest-small, time split (cases = replayed test-window clicks):", "",
                  _row(["split", "cases", "method", "NDCG@10", "Recall@10", "Recall@50", "MRR"]),
                  _row(["---"] * 7)]
        for split, report in ml["results"].items():
            for method, m in report["metrics"].items():
                lines.append(_row([split, report["details"]["cases"], method,
                                   f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}",
                                   f"{m['recall@50']:.4f}", f"{m['mrr']:.4f}"]))
        lines.append("")
    imp = read("quality_impressions.json")
    if imp:
        lines += ["Impression samples (per impression; too small for conclusions):", "",
                  _row(["data", "split", "impressions", "method", "AUC", "MRR", "nDCG@5",
                        "nDCG@10"]), _row(["---"] * 8)]
        for name, result in imp["results"].items():
            for split in ("valid", "test"):
                report = result[split]
                for method, m in report["metrics"].items():
                    lines.append(_row([name, split, report["details"]["cases"], method,
                                       f"{m['auc']:.3f}", f"{m['mrr']:.3f}",
                                       f"{m['ndcg@5']:.3f}", f"{m['ndcg@10']:.3f}"]))
        lines.append("")
    div = read("quality_diversity.json")
    if div:
        lines += [f"Diversity rules, amazon test ({div['cases']} sampled cases with history, "
                  "top 10 served by `recommend_histories`):", "",
                  _row(["rule", "NDCG@10", "Recall@10", "ILD@10", "categories in top 10"]),
                  _row(["---"] * 5)]
        for rule, m in div["rules"].items():
            lines.append(_row([rule, f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}",
                               f"{m['ild@10']:.4f}", f"{m['distinct_categories@10']:.2f}"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/quality-bench", type=Path)
    parser.add_argument("--only", default=",".join(STUDIES),
                        help=f"comma-separated studies among {', '.join(STUDIES)}")
    parser.add_argument("--diversity-cases", type=int, default=2000)
    parser.add_argument("--tables", action="store_true",
                        help="print the markdown tables from benchmarks/results and stop")
    args = parser.parse_args(argv)
    if args.tables:
        print(tables())
        return 0
    studies = [s for s in args.only.split(",") if s]
    unknown = set(studies) - set(STUDIES)
    if unknown:
        parser.error(f"unknown studies {sorted(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for study in studies:
        started = time.perf_counter()
        if study == "ablation":
            result, name = study_ablation(args.workdir), "quality_amazon_ablation.json"
        elif study == "ml":
            result, name = study_ml(args.workdir), "quality_ml_time.json"
        elif study == "impressions":
            result, name = study_impressions(args.workdir), "quality_impressions.json"
        else:
            result, name = study_diversity(args.workdir, args.diversity_cases), \
                "quality_diversity.json"
        result["seconds"] = round(time.perf_counter() - started, 1)
        write_json(result, RESULTS / name)
        log(f"{study} done in {result['seconds']}s -> {RESULTS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
