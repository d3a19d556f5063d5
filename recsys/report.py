"""The evaluation report: one HTML page with PNG plots, written from `recsys.evaluate`'s result.

Plots come first (metrics against the baselines, ranker feature importance, NDCG by the user's
history length, score distributions of clicked vs not-clicked candidates), the tables after.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, never need a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from features.build import FEATURE_GROUPS  # noqa: E402
from recsys.atomic_files import atomic_path, write_json, write_text  # noqa: E402
from recsys.errors import RecsysError  # noqa: E402
from recsys.semantic_signal import SemanticSignal  # noqa: E402

PLOTS = ("metrics.png", "importance.png", "ndcg_by_history.png", "score_distribution.png")
# History-length buckets [low, high) for the NDCG-by-history plot.
HISTORY_BUCKETS = ((0, 1), (1, 3), (3, 5), (5, 10), (10, 20), (20, 50), (50, 10**9))
METHOD_COLOURS = {"pipeline": "#1f77b4", "popularity": "#7f7f7f", "covisitation": "#ff7f0e",
                  "semantic": "#2ca02c"}
REQUIRED_KEYS = ("dataset", "split", "protocol", "model_version", "metrics", "per_case")


def write_report(report: dict, out_dir: str | Path) -> Path:
    """Write `index.html`, the PNG plots and `report.json` into `out_dir`; return index.html.

    Every file goes through a temporary name and a rename, and index.html is written last, so a
    crash never leaves a page pointing at missing or half-written plots.
    """
    missing = [key for key in REQUIRED_KEYS if key not in report]
    if missing:
        raise RecsysError(f"evaluation result lacks {missing}: cannot write a report "
                          "(run `recsys evaluate` of this version)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_case = report["per_case"]
    _save(_metrics_plot(report), out / "metrics.png")
    _save(_importance_plot(report.get("details", {}).get("gain_importance", {})),
          out / "importance.png")
    buckets = history_buckets(per_case["history_length"], per_case["ndcg@10"])
    _save(_history_plot(buckets), out / "ndcg_by_history.png")
    _save(_score_plot(per_case["scores"]), out / "score_distribution.png")
    summary = {key: report[key] for key in ("dataset", "split", "protocol", "model_version",
                                            "metrics")}
    if "semantic_signal" in report:
        summary["semantic_signal"] = report["semantic_signal"]
    if "slices" in report:
        summary["slices"] = report["slices"]
    summary["details"] = report.get("details", {})
    summary["ndcg@10_by_history_length"] = buckets
    write_json(summary, out / "report.json")
    index = out / "index.html"
    write_text(_page(report, buckets), index)
    for name in (*PLOTS, "report.json", "index.html"):
        os.chmod(out / name, 0o644)   # a report is for reading: temp files are created 0600
    return index


def history_buckets(lengths: list[int], per_case_ndcg: dict[str, list[float]]) -> list[dict]:
    """Mean per-case NDCG@10 of each method, per history-length bucket (empty buckets dropped)."""
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    rows = []
    for low, high in HISTORY_BUCKETS:
        inside = (lengths_arr >= low) & (lengths_arr < high)
        if not inside.any():
            continue
        label = (f"{low}" if high == low + 1
                 else f"{low}+" if high >= 10**9 else f"{low}-{high - 1}")
        rows.append({"history": label, "cases": int(inside.sum()),
                     **{m: float(np.asarray(v, dtype=np.float64)[inside].mean())
                        for m, v in per_case_ndcg.items()}})
    return rows


# -- plots ---------------------------------------------------------------------------------------
def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def _headline_metrics(report: dict) -> list[str]:
    names = list(next(iter(report["metrics"].values())).keys())
    if report["protocol"] == "impressions":
        return names
    return [n for n in ("ndcg@10", "recall@10", "ndcg@50", "recall@50", "mrr") if n in names]


def _metrics_plot(report: dict):
    metrics = report["metrics"]
    names = _headline_metrics(report)
    methods = list(metrics)
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(names))
    for i, method in enumerate(methods):
        values = [metrics[method][n] for n in names]
        bars = axis.bar(x + i * width - 0.4 + width / 2, values, width, label=method,
                        color=METHOD_COLOURS.get(method))
        axis.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    axis.set_xticks(x, names)
    axis.set_ylabel("value")
    masked = "" if report["protocol"] == "impressions" else " (unmasked)"
    axis.set_title(f"{report['dataset']} {report['split']}: pipeline vs baselines{masked}")
    axis.legend(fontsize=8)
    axis.margins(y=0.2)
    return figure


def _importance_plot(gain: dict[str, float]):
    figure, axis = plt.subplots(figsize=(7, max(2.5, 0.28 * max(len(gain), 1))))
    if not gain:
        axis.text(0.5, 0.5, "the bundle records no feature importance", ha="center")
        axis.set_axis_off()
        return figure
    group_of = {f: g for g, names in FEATURE_GROUPS.items() for f in names}
    groups = list(FEATURE_GROUPS)
    colours = plt.get_cmap("tab10")
    ordered = sorted(gain.items(), key=lambda kv: kv[1])
    total = sum(gain.values()) or 1.0
    axis.barh([f for f, _ in ordered], [100.0 * v / total for _, v in ordered],
              color=[colours(groups.index(group_of[f]) % 10) if f in group_of else "grey"
                     for f, _ in ordered])
    axis.set_xlabel("share of total gain (%)")
    axis.set_title("ranker feature importance (gain), coloured by feature group")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i, g in enumerate(groups)
               if any(group_of.get(f) == g for f in gain)]
    axis.legend(handles, [g for g in groups if any(group_of.get(f) == g for f in gain)],
                fontsize=7, loc="lower right")
    return figure


def _history_plot(buckets: list[dict]):
    figure, axis = plt.subplots(figsize=(8, 4))
    if not buckets:
        axis.text(0.5, 0.5, "no cases", ha="center")
        axis.set_axis_off()
        return figure
    methods = [k for k in buckets[0] if k not in ("history", "cases")]
    x = np.arange(len(buckets))
    for method in methods:
        axis.plot(x, [b[method] for b in buckets], marker="o", label=method,
                  color=METHOD_COLOURS.get(method))
    axis.set_xticks(x, [f"{b['history']}\n({b['cases']} cases)" for b in buckets], fontsize=8)
    axis.set_xlabel("user history length (clicks before the target)")
    axis.set_ylabel("mean NDCG@10")
    axis.set_title("NDCG@10 by user history length")
    axis.legend(fontsize=8)
    return figure


def _score_plot(scores: dict):
    figure, axis = plt.subplots(figsize=(8, 4))
    positive = np.asarray(scores.get("positive", []), dtype=np.float64)
    negative = np.asarray(scores.get("negative", []), dtype=np.float64)
    if positive.size == 0 and negative.size == 0:
        axis.text(0.5, 0.5, "no scored candidates", ha="center")
        axis.set_axis_off()
        return figure
    both = np.concatenate([positive, negative])
    bins = np.linspace(both.min(), both.max() + 1e-9, 50)
    if negative.size:
        axis.hist(negative, bins=bins, density=True, alpha=0.55, color="#7f7f7f",
                  label=f"not clicked ({negative.size} sampled of "
                        f"{scores.get('negative_total', negative.size)})")
    if positive.size:
        axis.hist(positive, bins=bins, density=True, alpha=0.55, color="#1f77b4",
                  label=f"clicked ({positive.size})")
    axis.set_xlabel("ranker score")
    axis.set_ylabel("density")
    axis.set_title("ranker scores of clicked vs not-clicked candidates")
    axis.legend(fontsize=8)
    return figure


# -- page ----------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _signal_paragraph(report: dict) -> str:
    """The semantic-signal check, at the top where a failed one cannot be missed (absent from
    reports written before it)."""
    if "semantic_signal" not in report:
        return ""
    signal = SemanticSignal(**report["semantic_signal"])
    style = (' style="color:#b00020;font-weight:bold"'
             if signal.verdict == "no_better_than_random" else "")
    return (f'<p id="semantic-signal"{style}>{html.escape(signal.describe(report["split"]))}</p>')


def _slices_section(report: dict) -> str:
    """Cold and warm target items, each method's two headline metrics (absent from reports
    written before slices existed)."""
    slices = report.get("slices")
    if not slices:
        return ""
    first, second = ("auc", "ndcg@10") if report["protocol"] == "impressions" else \
        ("ndcg@10", "recall@50")
    methods = list(report["metrics"])
    rows = [[name, str(part["cases"])]
            + [f"{part['metrics'][m][first]:.4f} / {part['metrics'][m][second]:.4f}"
               if m in part["metrics"] else "-" for m in methods]
            for name, part in slices.items()]
    return (f"<h2>Cold and warm items</h2><p>{first} / {second}, unmasked, over each slice's "
            "targets; a cold item had no event in the training part, a warm_N-M_events one had N "
            "to M.</p>"
            + _table(["slice", "cases"] + methods, rows))


def _page(report: dict, buckets: list[dict]) -> str:
    metrics = report["metrics"]
    names = list(next(iter(metrics.values())).keys())
    metric_rows = [[m] + [f"{metrics[m][n]:.4f}" for n in names] for m in metrics]
    methods = list(metrics)
    bucket_rows = [[b["history"], str(b["cases"])] + [f"{b[m]:.4f}" for m in methods]
                   for b in buckets]
    details = report.get("details", {})
    title = (f"{report['dataset']} / {report['split']} / {report['protocol']} / "
             f"model {report['model_version']}")
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>'
        f"{html.escape(caption)}</figcaption></figure>"
        for name, caption in zip(PLOTS, (
            "Metrics of the pipeline and the baselines on the same cases",
            "Ranker feature importance (total gain of each feature's splits)",
            "Mean NDCG@10 by the length of the user's history",
            "Ranker scores of clicked and not-clicked candidates"), strict=True))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
figure{{margin:1em 0}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:0.85em;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head>
<body><h1>Evaluation report</h1>
<p>{html.escape(title)}: {details.get('cases', '?')} cases over {details.get('items', '?')} items;
behavioural state: {html.escape(str(details.get('state', '?')))}.</p>
{_signal_paragraph(report)}
{figures}
<h2>Metrics</h2>{_table(['method'] + names, metric_rows)}
{_slices_section(report)}
<h2>NDCG@10 by history length</h2>{_table(['history', 'cases'] + methods, bucket_rows)}
<h2>Details</h2><pre>{html.escape(json.dumps(details, indent=2, default=str))}</pre>
</body></html>
"""
