"""Importer for MovieLens CSV files (ratings.csv, movies.csv; tags, links and summaries optional).

Row numbers in errors are 0-based data rows of the CSV/TSV file named (the header line is not
counted).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.importers.tables import unreadable
from recsys.data.schema import CLICK, RATING
from recsys.errors import DataError

RATINGS = "ratings.csv"
MOVIES = "movies.csv"
TAGS = "tags.csv"
LINKS = "links.csv"
SUMMARIES = "derived_item_summaries_from_agent4rec.tsv"
NO_GENRES = "(no genres listed)"
MAX_TAGS = 20  # genres first, then the most used user tags; enough to describe a movie


def import_movielens(src: str | Path, *, name: str | None = None,
                     click_threshold: float = 4.0, drop_unknown: bool = False) -> Dataset:
    """Read SRC's MovieLens files into canonical frames (nothing is written).

    One event per rating: type "click" when rating >= `click_threshold`, else "rating"; value is
    the rating; a rating of a movie missing from movies.csv is an error unless `drop_unknown`,
    which skips it and counts it. Items carry `tags` (genres, then distinct lowercased user
    tags, at most `MAX_TAGS`), `year` (the release year from the title, not a creation time) and
    `summary`.
    """
    root = Path(src)
    ratings = _read(root / RATINGS, {"userId": pl.Int64, "movieId": pl.Int64,
                                     "rating": pl.Float64, "timestamp": pl.Int64})
    movies = _read(root / MOVIES, {"movieId": pl.Int64, "title": pl.String,
                                   "genres": pl.String})
    tags = _read_optional(root / TAGS, {"userId": pl.Int64, "movieId": pl.Int64,
                                        "tag": pl.String})
    links = _read_optional(root / LINKS, {"movieId": pl.Int64, "imdbId": pl.String,
                                          "tmdbId": pl.String})
    summaries = _read_optional(root / SUMMARIES, {"movieId": pl.Int64, "summary": pl.String},
                               separator="\t")
    _check_unique(movies, ["movieId"], root / MOVIES)
    _check_unique(ratings, ["userId", "movieId"], root / RATINGS)
    unknown = ratings.join(movies, on="movieId", how="anti")
    if unknown.height and not drop_unknown:
        row = int(ratings["movieId"].is_in(unknown["movieId"].implode()).arg_true()[0])
        raise DataError(f"movie {ratings['movieId'][row]} is not in {MOVIES}",
                        file=str(root / RATINGS), row=row, column="movieId")
    report = []
    if drop_unknown:
        ratings = ratings.join(movies.select("movieId"), on="movieId", how="semi")
        report.append(f"--drop-unknown: dropped {unknown.height} ratings of movies not in "
                      f"{MOVIES}.")

    items = _items(movies, tags, links, summaries)
    events = ratings.select(
        pl.format("{}-{}", "userId", "movieId").alias("event_id"),
        pl.col("userId").cast(pl.String).alias("user_id"),
        pl.col("movieId").cast(pl.String).alias("item_id"),
        pl.from_epoch("timestamp", time_unit="s").dt.replace_time_zone("UTC").alias("timestamp"),
        pl.when(pl.col("rating") >= click_threshold).then(pl.lit(CLICK))
        .otherwise(pl.lit(RATING)).alias("type"),
        pl.col("rating").alias("value"),
    )

    notes = [
        f"One event per rating in {RATINGS}: 'click' when rating >= {click_threshold:g} "
        f"(click_threshold), else 'rating'; value = the rating; timestamp = unix seconds, UTC.",
        "Item text = title, genres, user tags and the plot summary when there is one; "
        f"category = first genre; tags = genres + distinct lowercased user tags (max {MAX_TAGS}); "
        "year = release year from the title (created_at is left empty: no real creation time).",
    ]
    if summaries is not None:
        notes.append(f"Summaries from {SUMMARIES} read as machine-written: item text, not fact.")
    notes.extend(report)
    meta = {"name": name or root.resolve().name, "source": "movielens", "time": "real",
            "protocol": "time", "notes": " ".join(notes)}
    return Dataset(items=items, events=events, meta=meta, report=report)


def _items(movies: pl.DataFrame, tags: pl.DataFrame | None, links: pl.DataFrame | None,
           summaries: pl.DataFrame | None) -> pl.DataFrame:
    genres = pl.col("genres").str.split("|").list.eval(
        pl.element().filter(pl.element() != NO_GENRES))
    items = movies.with_columns(
        pl.col("title").str.strip_chars(),
        genres.alias("genre_list"),
        # "Toy Story (1995)"; titles like "Babylon 5" or "(2006–2007)" give no year.
        pl.col("title").str.strip_chars().str.extract(r"\((\d{4})\)$").cast(pl.Int32)
        .alias("year"),
    )
    lower_genres = pl.col("genre_list").list.eval(pl.element().str.to_lowercase())
    genre_tags = items.select("movieId", lower_genres.alias("tag")).explode("tag")
    items = items.join(_user_tags(tags, genre_tags), on="movieId", how="left").with_columns(
        pl.col("new_tags").fill_null(pl.lit([], dtype=pl.List(pl.String))))
    if summaries is not None:
        items = items.join(summaries.select("movieId", "summary").unique("movieId", keep="first"),
                           on="movieId", how="left")
    else:
        items = items.with_columns(pl.lit(None, dtype=pl.String).alias("summary"))

    items = items.with_columns(
        pl.concat_list(lower_genres, "new_tags").list.head(MAX_TAGS).alias("tags"))
    text = pl.concat_str(
        [
            pl.col("title") + pl.lit("."),
            pl.when(pl.col("genre_list").list.len() > 0)
            .then(pl.lit("Genres: ") + pl.col("genre_list").list.join(", ") + pl.lit(".")),
            pl.when(pl.col("new_tags").list.len() > 0)
            .then(pl.lit("Tags: ") + pl.col("new_tags").list.head(MAX_TAGS).list.join(", ")
                  + pl.lit(".")),
            pl.col("summary").str.strip_chars(),
        ],
        separator=" ", ignore_nulls=True,
    )
    columns = [
        pl.col("movieId").cast(pl.String).alias("item_id"),
        "title",
        text.alias("text"),
        pl.col("genre_list").list.first().alias("category"),
        "tags", "year", "summary",
    ]
    if links is not None:
        items = items.join(links.select("movieId", "imdbId", "tmdbId"), on="movieId", how="left")
        columns += [pl.col("imdbId").alias("imdb_id"), pl.col("tmdbId").alias("tmdb_id")]
    return items.select(columns)


def _user_tags(tags: pl.DataFrame | None, genre_tags: pl.DataFrame) -> pl.DataFrame:
    """movieId -> distinct lowercased user tags that are not genres, most used first."""
    if tags is None:
        return pl.DataFrame(schema={"movieId": pl.Int64, "new_tags": pl.List(pl.String)})
    counted = (
        tags.select("movieId", pl.col("tag").str.strip_chars().str.to_lowercase())
        .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
        # A tag that only repeats a genre adds nothing.
        .join(genre_tags, on=["movieId", "tag"], how="anti")
        .group_by("movieId", "tag").len()
        .sort(["movieId", "len", "tag"], descending=[False, True, False])  # ties alphabetical
    )
    return counted.group_by("movieId", maintain_order=True).agg(
        pl.col("tag").head(MAX_TAGS).alias("new_tags"))


def _read(path: Path, schema: dict[str, pl.DataType], *, separator: str = ","
          ) -> pl.DataFrame:
    if not path.exists():
        raise DataError("file is missing", file=str(path))
    try:
        frame = pl.read_csv(path, separator=separator, infer_schema=False,
                            quote_char=None if separator == "\t" else '"')
    except Exception as exc:  # polars raises several error kinds for malformed files
        raise unreadable(path, separator) from exc
    for column, dtype in schema.items():
        if column not in frame.columns:
            raise DataError("required column is missing", file=str(path), column=column)
        converted = frame[column].str.strip_chars().cast(dtype, strict=False)
        bad = frame[column].is_null() | converted.is_null()
        if dtype != pl.String and bad.any():
            row = int(bad.arg_true()[0])
            raise DataError(f"value {frame[column][row]!r} is not a {dtype}", file=str(path),
                            row=row, column=column)
        frame = frame.with_columns(converted.alias(column))
    return frame


def _read_optional(path: Path, schema: dict[str, pl.DataType], *, separator: str = ","
                   ) -> pl.DataFrame | None:
    return _read(path, schema, separator=separator) if path.exists() else None


def _check_unique(frame: pl.DataFrame, key: list[str], path: Path) -> None:
    repeated = frame.select(pl.struct(key).is_first_distinct().not_()).to_series()
    if repeated.any():
        row = int(repeated.arg_true()[0])
        raise DataError(f"{' and '.join(key)} repeated", file=str(path), row=row,
                        column=key[-1])
