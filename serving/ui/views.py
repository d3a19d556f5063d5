"""What the explorer's pages show, gathered from the engine's public parts: the serving
Recommender, the lookup helpers, the event store, the server's metrics and the models folder.

Functions here block (model and store reads): the routes run them on the model pool.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from features.state import ORDER_WINDOWS_EVENTS, TIME_WINDOWS_DAYS
from recsys.bundle_versions import MANIFEST, current_version, list_versions
from recsys.errors import RecsysError
from recsys.recommender import Recommender
from recsys.report import PLOTS
from serving.metrics import Metrics

REPORT_DIR = "report"     # MODELS/report: where `recsys evaluate --report` output is looked for
SEARCH_HITS = 10


# -- overview -----------------------------------------------------------------------------------
def server_rates(metrics: Metrics) -> dict:
    """Recommendation responses by source and the share of requests answered with a 5xx, from
    the server's own counters (since it started)."""
    by_source: dict[str, float] = {}
    requests = errors = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "recsys_recommendation_responses_total":
                source = sample.labels["source"]
                by_source[source] = by_source.get(source, 0.0) + sample.value
            elif sample.name == "recsys_request_seconds_count":
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
    answered = sum(by_source.values())
    not_model = answered - by_source.get("model", 0.0)
    return {"responses": int(answered), "by_source": {k: int(v) for k, v in by_source.items()},
            "fallback_rate": not_model / answered if answered else None,
            "requests": int(requests), "error_rate": errors / requests if requests else None}


def latest_report(models_dir: Path | None) -> dict | None:
    """The evaluation report in MODELS/report (report.json and the plots that exist), or None."""
    if models_dir is None:
        return None
    folder = models_dir / REPORT_DIR
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        return None
    methods = report["metrics"]
    names = sorted({name for values in methods.values() if isinstance(values, dict)
                    for name in values})
    rows = [(method, [_number(values.get(name)) for name in names])
            for method, values in methods.items() if isinstance(values, dict)]
    return {"model_version": report.get("model_version"), "dataset": report.get("dataset"),
            "split": report.get("split"), "metric_names": names, "rows": rows,
            "plots": [p for p in PLOTS if (folder / p).is_file()]}


def report_plot(models_dir: Path | None, name: str) -> Path | None:
    """The path of one of the report's plots (only the names the report writes)."""
    if models_dir is None or name not in PLOTS:
        return None
    path = models_dir / REPORT_DIR / name
    return path if path.is_file() else None


def model_summary(recommender: Recommender) -> dict:
    manifest = recommender.manifest
    dataset = manifest.get("dataset") or {}
    return {"version": recommender.version, "created_at": manifest.get("created_at"),
            "item_count": int(recommender.active.sum()), "users": len(recommender.users),
            "categories": len(recommender.category_names), "dataset": dataset.get("name"),
            "train_start": dataset.get("train_start"), "train_end": dataset.get("train_end"),
            "ranker_used": recommender.ranker_used}


# -- models -------------------------------------------------------------------------------------
def model_versions(models_dir: Path | None) -> list[dict]:
    """Every complete bundle, newest first, with its metrics and data range."""
    if models_dir is None:
        return []
    try:
        current = current_version(models_dir)
    except RecsysError:
        current = None
    out = []
    for entry in reversed(list_versions(models_dir)):
        try:
            manifest = json.loads((models_dir / entry["version"] / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        dataset = manifest.get("dataset") or {}
        out.append({"version": entry["version"], "created_at": entry["created_at"],
                    "current": entry["version"] == current,
                    "metrics": {k: _number(v) for k, v in (entry["metrics"] or {}).items()},
                    "dataset": dataset.get("name"), "train_start": dataset.get("train_start"),
                    "train_end": dataset.get("train_end"),
                    "item_count": (manifest.get("index") or {}).get("items")})
    return out


class OtherVersions:
    """Model versions other than the serving one, loaded on demand for comparisons; only the
    latest one asked for is kept (a bundle holds the whole catalogue's vectors)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: tuple[str, Recommender] | None = None

    def get(self, models_dir: Path, version: str) -> Recommender:
        with self._lock:
            if self._kept is not None and self._kept[0] == version:
                return self._kept[1]
            loaded = Recommender.load(models_dir / version, verify=True, threads=1)
            self._kept = (version, loaded)
            return loaded


def compare(left: dict, right: dict) -> dict:
    """Two recommendation bodies side by side: overlap and each item's rank in the other."""
    left_ids = [i["item_id"] for i in left["items"]]
    right_ids = [i["item_id"] for i in right["items"]]
    rank_right = {item: n for n, item in enumerate(right_ids, 1)}
    rank_left = {item: n for n, item in enumerate(left_ids, 1)}
    rows = []
    for n in range(max(len(left_ids), len(right_ids))):
        a = left["items"][n] if n < len(left_ids) else None
        b = right["items"][n] if n < len(right_ids) else None
        rows.append({"rank": n + 1, "left": a, "right": b,
                     "left_moves": _move(n + 1, rank_right.get(a["item_id"])) if a else None,
                     "right_moves": _move(rank_left.get(b["item_id"]), n + 1) if b else None})
    overlap = len(set(left_ids) & set(right_ids))
    return {"rows": rows, "overlap": overlap, "size": max(len(left_ids), len(right_ids))}


def _move(rank_left: int | None, rank_right: int | None) -> str:
    if rank_left is None:
        return "new"
    if rank_right is None:
        return "dropped"
    change = rank_left - rank_right
    return "=" if change == 0 else f"{change:+d}"


# -- items --------------------------------------------------------------------------------------
class TitleIndex:
    """Lower-cased titles of one model version's catalogue, made once per version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: tuple[int, list[str]] | None = None

    def titles(self, recommender: Recommender) -> list[str]:
        with self._lock:
            if self._made is None or self._made[0] != id(recommender.titles) \
                    or len(self._made[1]) != len(recommender.titles):
                self._made = (id(recommender.titles), [t.casefold() for t in recommender.titles])
            return self._made[1]


def title_prefix(recommender: Recommender, lowered: list[str], query: str,
                 limit: int = SEARCH_HITS) -> list[dict]:
    prefix = query.casefold().strip()
    hits = []
    for row, title in enumerate(lowered):
        if title.startswith(prefix) and recommender.active[row]:
            hits.append(item_card(recommender, row))
            if len(hits) >= limit:
                break
    return hits


def semantic(recommender: Recommender, encoder, query: str, limit: int = SEARCH_HITS) -> list[dict]:
    """Items whose text embeds closest to the typed query (the bundle's own encoder)."""
    vector = np.asarray(encoder.encode([query], show_progress=False), dtype=np.float32)
    inactive = set(np.flatnonzero(~recommender.active).tolist())
    rows, scores = recommender.index.search(vector, limit, exclude=[inactive])
    return [{**item_card(recommender, int(r)), "score": float(s)}
            for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]


def item_card(recommender: Recommender, row: int) -> dict:
    code = int(recommender.item_categories[row])
    return {"item_id": recommender.item_ids[row], "title": recommender.titles[row],
            "category": recommender.category_names[code] if code >= 0 else None}


def bundle_popularity(recommender: Recommender, row: int) -> dict:
    """The item's clicks in the data the bundle was trained on: all time and in its windows."""
    state = recommender.state
    windows = [f"last {d} day{'s' if d > 1 else ''}" for d in TIME_WINDOWS_DAYS] \
        if state.real_time else [f"last {n} event{'s' if n > 1 else ''} per user"
                                 for n in ORDER_WINDOWS_EVENTS]
    counts = state.window_clicks_[row].tolist() if row < len(state.window_clicks_) else []
    total = float(state.clicks_[row]) if row < len(state.clicks_) else 0.0
    return {"total": int(total),
            "windows": [(w, int(c)) for w, c in zip(windows, counts, strict=True)],
            "first_seen": _time(state.first_seen_s_, row) if state.real_time else None,
            "last_seen": _time(state.last_seen_s_, row) if state.real_time else None}


def _time(values: np.ndarray, row: int) -> str | None:
    if row >= len(values) or not math.isfinite(float(values[row])) or values[row] <= 0:
        return None
    return day_text(float(values[row]))


def day_text(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


__all__ = ["OtherVersions", "REPORT_DIR", "TitleIndex", "bundle_popularity", "compare",
           "day_text", "item_card", "latest_report", "model_summary", "model_versions",
           "report_plot", "semantic", "server_rates", "title_prefix"]
