"""Importer for MIND-layout news logs: MIND (news.tsv) and EB-NeRD (news_subset.tsv with a header).

Row numbers in errors are 0-based lines of behaviors.tsv (it has no header) and 0-based data
rows of the news file.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.importers.tables import unreadable
from recsys.data.schema import CLICK, IMPRESSION
from recsys.errors import DataError

MIND_NEWS = "news.tsv"
EBNERD_NEWS = "news_subset.tsv"
BEHAVIORS = "behaviors.tsv"
MIND_NEWS_COLUMNS = ["item_id", "category", "subcategory", "title", "abstract", "url",
                     "title_entities", "abstract_entities"]
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # "11/9/2019 6:42:51 PM"; chrono accepts unpadded fields
# Header names a news file with a header may use, mapped to ours.
NEWS_HEADER_NAMES = {
    "article_id": "item_id", "news_id": "item_id", "id": "item_id", "item_id": "item_id",
    "category_id": "category", "category": "category", "subcategory": "subcategory",
    "subcategory_id": "subcategory", "title": "title", "abstract": "abstract",
}


def import_mind(src: str | Path, *, name: str | None = None, drop_unknown: bool = False
                ) -> Dataset:
    """Read SRC's news file and behaviors.tsv into canonical frames (nothing is written).

    Every impression item becomes an event (type "click" for ITEM-1, "impression" for ITEM-0,
    request_id = impression id). Each user's history becomes "click" events without request_id,
    timed one second apart and ending one second before the user's earliest impression,
    because MIND does not say when they happened. Items missing from the news file raise
    `DataError` unless `drop_unknown`, which skips them and counts them in the notes.
    """
    root = Path(src)
    news_path, layout = _find_news(root)
    behaviors_path = root / BEHAVIORS
    if not behaviors_path.exists():
        raise DataError("file is missing", file=str(behaviors_path))

    items = _read_news(news_path, layout)
    behaviors = _read_behaviors(behaviors_path)
    known = items["item_id"].implode()

    shown, dropped_shown = _impression_events(behaviors, known, str(behaviors_path),
                                              drop_unknown)
    history, dropped_history, history_users = _history_events(behaviors, known,
                                                               str(behaviors_path), drop_unknown)
    # A log in time order; `order` keeps history order and on-screen order among equal times.
    events = pl.concat([history, shown], how="diagonal").sort(
        "timestamp", "user_id", "request_id", "order", maintain_order=True).drop("order")

    notes = [
        f"{layout} layout ({news_path.name}, {BEHAVIORS}).",
        "Each impression item is one event: 'click' for ITEM-1, 'impression' for ITEM-0, "
        "request_id = impression id, timestamp = impression time (read as UTC).",
        "History items are 'click' events without request_id. The log gives them no time, so "
        "they are placed one second apart in history order, the last one second before the "
        "user's earliest impression; those timestamps order events, they are not real times.",
        "A user's history repeats in each of their impressions; it is imported once per user "
        f"(from the longest one when they differ: {history_users} users differed). Repeated "
        "items inside one history are kept as repeated clicks.",
    ]
    report = []
    if drop_unknown:
        report.append(f"--drop-unknown: skipped {dropped_history} history and {dropped_shown} "
                      "impression items missing from the news file.")
        notes.extend(report)
    meta = {"name": name or root.resolve().name, "source": "mind", "time": "real",
            "protocol": "impressions", "notes": " ".join(notes)}
    return Dataset(items=items, events=events, meta=meta, report=report)


def _find_news(root: Path) -> tuple[Path, str]:
    for file, layout in ((MIND_NEWS, "MIND"), (EBNERD_NEWS, "EB-NeRD")):
        if (root / file).exists():
            return root / file, layout
    raise DataError(f"no news file: expected {MIND_NEWS} (MIND) or {EBNERD_NEWS} (EB-NeRD)",
                    file=str(root))


def _read_tsv(path: Path, *, has_header: bool) -> pl.DataFrame:
    try:
        # MIND text holds stray quotes, so quoting is off; every cell stays text.
        return pl.read_csv(path, separator="\t", has_header=has_header, quote_char=None,
                           infer_schema=False)
    except Exception as exc:  # polars raises several error kinds for malformed files
        raise unreadable(path, "\t") from exc


def _has_header(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().split("\t", 1)[0].strip().lower()
    return first in NEWS_HEADER_NAMES


def _read_news(path: Path, layout: str) -> pl.DataFrame:
    if _has_header(path):
        raw = _read_tsv(path, has_header=True)
        raw = raw.rename({c: NEWS_HEADER_NAMES[c.lower()] for c in raw.columns
                          if c.lower() in NEWS_HEADER_NAMES})
    else:
        raw = _read_tsv(path, has_header=False)
        if raw.width != len(MIND_NEWS_COLUMNS):
            raise DataError(f"expected {len(MIND_NEWS_COLUMNS)} tab-separated columns "
                            f"({', '.join(MIND_NEWS_COLUMNS)}), found {raw.width}",
                            file=str(path), row=0)
        raw = raw.rename(dict(zip(raw.columns, MIND_NEWS_COLUMNS, strict=True)))
    for column in ("item_id", "title"):
        if column not in raw.columns:
            raise DataError("required column is missing", file=str(path), column=column)
    for column in ("category", "abstract"):
        if column not in raw.columns:
            raw = raw.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    _require_values(raw, "item_id", path)

    title = pl.col("title").fill_null("").str.strip_chars()
    abstract = pl.col("abstract").fill_null("").str.strip_chars()
    # "Title. Abstract", without doubling a title's own closing punctuation.
    joiner = pl.when(title.str.contains(r"[.!?]$")).then(pl.lit(" ")).otherwise(pl.lit(". "))
    text = pl.when(abstract == "").then(title).otherwise(pl.concat_str([title, joiner, abstract]))
    extra = ["subcategory"] if "subcategory" in raw.columns else []
    return raw.select(pl.col("item_id").str.strip_chars(), title.alias("title"),
                      text.alias("text"), pl.col("category"), *extra)


def _read_behaviors(path: Path) -> pl.DataFrame:
    raw = _read_tsv(path, has_header=False)
    if raw.width != len(BEHAVIOR_COLUMNS):
        raise DataError(f"expected {len(BEHAVIOR_COLUMNS)} tab-separated columns "
                        f"({', '.join(BEHAVIOR_COLUMNS)}), found {raw.width}",
                        file=str(path), row=0)
    raw = raw.rename(dict(zip(raw.columns, BEHAVIOR_COLUMNS, strict=True)))
    if raw.height and raw["impression_id"][0].lower() == "impression_id":
        raise DataError("behaviors.tsv must not have a header line", file=str(path), row=0)
    for column in ("impression_id", "user_id", "time"):
        _require_values(raw, column, path)
    repeated = ~raw["impression_id"].is_first_distinct()
    if repeated.any():
        # Event ids are built from impression ids (MIND train and dev files reuse them).
        row = int(repeated.arg_true()[0])
        raise DataError(f"impression id {raw['impression_id'][row]!r} is used twice",
                        file=str(path), row=row, column="impression_id")
    parsed = raw["time"].str.strip_chars().str.strptime(pl.Datetime("us"), TIME_FORMAT,
                                                        strict=False)
    bad = parsed.is_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise DataError(f"time {raw['time'][row]!r} is not like '11/9/2019 6:42:51 PM'",
                        file=str(path), row=row, column="time")
    return raw.with_row_index("row").with_columns(
        parsed.dt.replace_time_zone("UTC").alias("timestamp"))


def _require_values(frame: pl.DataFrame, column: str, path: Path) -> None:
    missing = frame[column].is_null()
    if missing.any():
        raise DataError("missing value", file=str(path), row=int(missing.arg_true()[0]),
                        column=column)


def _unknown(events: pl.DataFrame, known: pl.Series, file: str, column: str,
             drop_unknown: bool) -> tuple[pl.DataFrame, int]:
    """`events` without items missing from the news file, or a `DataError` naming the first."""
    is_known = pl.col("item_id").is_in(known)
    unknown = events.filter(~is_known)
    if unknown.height and not drop_unknown:
        first = unknown.row(0, named=True)
        raise DataError(f"item {first['item_id']!r} is not in the news file "
                        f"({unknown.height} such {column} items; --drop-unknown skips them)",
                        file=file, row=first["row"], column=column)
    return events.filter(is_known), unknown.height


def _impression_events(behaviors: pl.DataFrame, known: pl.Series, file: str,
                       drop_unknown: bool) -> tuple[pl.DataFrame, int]:
    shown = (
        behaviors.select("row", "impression_id", "user_id", "timestamp",
                         pl.col("impressions").str.strip_chars().str.split(" "))
        .with_columns(pl.int_ranges(pl.col("impressions").list.len()).alias("position"))
        .explode("impressions", "position")
        .filter(pl.col("impressions").is_not_null() & (pl.col("impressions") != ""))
        .with_columns(
            pl.col("impressions").str.replace(r"-[^-]*$", "").alias("item_id"),
            pl.col("impressions").str.extract(r"-([^-]*)$").alias("label"),
        )
    )
    bad = shown.filter(~pl.col("label").is_in(["0", "1"]) | pl.col("label").is_null())
    if bad.height:
        first = bad.row(0, named=True)
        raise DataError(f"impression {first['impressions']!r} is not ITEM-1 or ITEM-0",
                        file=file, row=first["row"], column="impressions")
    shown, dropped = _unknown(shown, known, file, "impressions", drop_unknown)
    events = shown.select(
        pl.format("{}-{}", "impression_id", "position").alias("event_id"),
        "user_id", "item_id", "timestamp",
        pl.when(pl.col("label") == "1").then(pl.lit(CLICK)).otherwise(pl.lit(IMPRESSION))
        .alias("type"),
        pl.col("impression_id").alias("request_id"),
        pl.col("position").cast(pl.Int64).alias("order"),
    )
    return events, dropped


def _history_events(behaviors: pl.DataFrame, known: pl.Series, file: str,
                    drop_unknown: bool) -> tuple[pl.DataFrame, int, int]:
    histories = behaviors.select(
        "row", "user_id", "timestamp",
        pl.col("history").fill_null("").str.strip_chars().str.split(" ")
        .list.eval(pl.element().filter(pl.element() != "")),
    )
    per_user = histories.group_by("user_id", maintain_order=True).agg(
        pl.col("timestamp").min().alias("first_seen"),
        pl.col("history").n_unique().alias("distinct"),
        # The longest history (first in file order on ties) stands for the user.
        pl.col("history").sort_by(pl.col("history").list.len(), descending=True,
                                  maintain_order=True).first(),
        pl.col("row").sort_by(pl.col("history").list.len(), descending=True,
                              maintain_order=True).first(),
    )
    differing = int((per_user["distinct"] > 1).sum())
    clicks = (
        per_user.with_columns(pl.col("history").list.len().alias("length"),
                              pl.int_ranges(pl.col("history").list.len()).alias("position"))
        .explode("history", "position")
        .filter(pl.col("history").is_not_null())
        .rename({"history": "item_id"})
    )
    clicks, dropped = _unknown(clicks, known, file, "history", drop_unknown)
    events = clicks.select(
        pl.format("{}-h{}", "user_id", "position").alias("event_id"),
        "user_id", "item_id",
        (pl.col("first_seen") - pl.duration(seconds=pl.col("length") - pl.col("position")))
        .alias("timestamp"),
        pl.lit(CLICK).alias("type"),
        pl.lit(None, dtype=pl.String).alias("request_id"),
        pl.col("position").cast(pl.Int64).alias("order"),
    )
    return events, dropped, differing
