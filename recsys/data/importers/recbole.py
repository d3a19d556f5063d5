"""Importer for RecBole atomic files: the standard layout and UniSRec's.

A folder may hold several data sets; each is the files `<Name>.*`. When `<Name>.text` exists the
data set is in UniSRec's layout (leave-one-out, order only): `<Name>.text`, `<Name>.item2index`,
`<Name>.user2index` and `<Name>.test.inter`, with `<Name>.valid.inter` and `<Name>.train.inter`
used when present. Otherwise it is standard RecBole atomic files, read by `recbole_atomic`.
Row numbers in errors are 0-based data rows (the `field:type` header line of `.text` / `.inter`
files is not counted; index files have no header).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.importers.recbole_atomic import import_atomic, read_atomic
from recsys.data.schema import CLICK
from recsys.errors import DataError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ROOT_SHARE = 0.9


@dataclass(frozen=True)
class InterRow:
    """One `.inter` row: a user's history (item tokens, oldest first) and the next item."""

    row: int
    user: str
    history: list[str]
    target: str


@dataclass
class Sequence:
    """One user's reconstructed sequence and where its splits are."""

    items: list[str]
    has_valid: bool
    recovered_from_train: bool  # longer than test.inter's (capped) history shows


def import_recbole(src: str | Path, *, name: str | None = None,
                   dataset_name: str | None = None, drop_unknown: bool = False,
                   timestamp_unit: str = "auto", allow_any_time: bool = False) -> Dataset:
    """Read one RecBole data set in SRC into canonical frames (nothing is written).

    `dataset_name` picks `<Name>` when SRC holds several data sets. `drop_unknown` skips events
    whose item has no row in the item file (and counts them). The time options apply to
    standard atomic files with a timestamp field (UniSRec's files have none).
    """
    root = Path(src)
    stem = _choose_stem(root, dataset_name)
    if (root / f"{stem}.text").exists():
        return import_unisrec(root, stem, name=name, drop_unknown=drop_unknown)
    return import_atomic(root, stem, name=name, drop_unknown=drop_unknown,
                         timestamp_unit=timestamp_unit, allow_any_time=allow_any_time)


def import_unisrec(root: Path, stem: str, *, name: str | None = None,
                   drop_unknown: bool = False) -> Dataset:
    """Read UniSRec's files `<stem>.*` in `root` into canonical frames.

    Each user's sequence is the test history plus the test target, extended from the training
    prefixes when test.inter's history was cut at its length cap. Events are "click"s one second
    apart from 1970-01-01 (order only); split is "test" for the last item, "valid" for the one
    before it when valid.inter exists, "train" for the rest. Item text is the `.text` field
    whole; title, category and brand are taken from it only where that is safe
    (`split_item_texts`).
    """
    path = {kind: root / f"{stem}.{kind}" for kind in
            ("text", "item2index", "user2index", "train.inter", "valid.inter", "test.inter")}
    for kind in ("text", "item2index", "user2index", "test.inter"):
        if not path[kind].exists():
            raise DataError("file is missing", file=str(path[kind]))

    items = _read_items(path["text"])
    item_of = _read_index(path["item2index"])
    user_of = _read_index(path["user2index"])
    test = _read_inter(path["test.inter"])
    valid = _read_inter(path["valid.inter"]) if path["valid.inter"].exists() else None
    train = _read_inter(path["train.inter"]) if path["train.inter"].exists() else None

    sequences = reconstruct_sequences(test, valid, train, path)
    events = _events(sequences, item_of, user_of, path)
    unknown = events.join(items, on="item_id", how="anti")
    report = []
    if drop_unknown:
        events = events.join(items.select("item_id"), on="item_id", how="semi")
        report.append(f"--drop-unknown: dropped {unknown.height} events whose item has no row "
                      f"in {path['text'].name}.")
    elif unknown.height:
        raise DataError(f"item {unknown['item_id'][0]!r} is used in the .inter files but has "
                        f"no text ({unknown['item_id'].n_unique()} such items)",
                        file=str(path["text"]), column="item_id")

    recovered = sum(s.recovered_from_train for s in sequences.values())
    cap = max((len(r.history) for r in test), default=0)
    at_cap = sum(len(s.items) - 1 == cap and not s.recovered_from_train
                 for s in sequences.values())
    notes = [
        f"RecBole files {stem}.* (UniSRec leave-one-out split). The source has no timestamps: "
        "each user's events are 1 second apart from 1970-01-01T00:00:00Z in sequence order, so "
        "timestamps give order within a user only and are not comparable across users.",
        "split: 'test' = the user's last item (test.inter target)"
        + (", 'valid' = the one before it (valid.inter target)" if valid is not None else "")
        + ", 'train' = everything earlier.",
        f"test.inter histories hold at most {cap} items; {recovered} users' longer sequences "
        "were recovered from train.inter.",
        "Item text = the .text field whole. Title, category and brand are cut from it only "
        "where the category path is recognised (the words nearly all category paths start "
        "with, or an empty category '. . '); elsewhere the title is the whole text and "
        "category and brand are empty, so a title containing '. ' is never cut.",
        *report,
    ]
    if at_cap and train is None:
        notes.append(f"{at_cap} users have a history of exactly {cap} items and no train.inter "
                     "to extend it: their earliest items may be missing.")
    meta = {"name": name or root.resolve().name, "source": "recbole", "time": "order_only",
            "protocol": "leave_one_out", "notes": " ".join(notes)}
    return Dataset(items=items, events=events, meta=meta, report=report)


# --- sequences -----------------------------------------------------------------------------


def reconstruct_sequences(test: list[InterRow], valid: list[InterRow] | None,
                          train: list[InterRow] | None, path: dict[str, Path]
                          ) -> dict[str, Sequence]:
    """Each user's full item-token sequence, checked against every file that mentions it."""
    valid_by_user = _by_user(valid, path["valid.inter"], unique=True) if valid else {}
    train_by_user = _by_user(train, path["train.inter"], unique=False) if train else {}
    test_by_user = _by_user(test, path["test.inter"], unique=True)
    for rows, kind in ((valid_by_user, "valid.inter"), (train_by_user, "train.inter")):
        stray = next((u for u in rows if u not in test_by_user), None)
        if stray is not None:
            first = rows[stray] if isinstance(rows[stray], InterRow) else rows[stray][0]
            raise DataError(f"user {stray!r} has no row in test.inter", file=str(path[kind]),
                            row=first.row, column="user_id")

    sequences: dict[str, Sequence] = {}
    for user, test_row in test_by_user.items():
        valid_row = valid_by_user.get(user)
        prefix = (_train_sequence(train_by_user[user], str(path["train.inter"]))
                  if user in train_by_user else None)
        if valid_row is not None:
            if prefix is not None:
                _expect_tail(prefix, valid_row, str(path["valid.inter"]), "train.inter")
            else:
                prefix = list(valid_row.history)
            prefix = [*prefix, valid_row.target]
        elif prefix is not None and test_row.history:
            # No valid.inter: the test history's last item is the one after the training part.
            prefix = [*prefix, test_row.history[-1]]
        if prefix is not None:
            _expect_tail(prefix, test_row, str(path["test.inter"]),
                         "valid.inter" if valid_row is not None else "train.inter")
        else:
            prefix = list(test_row.history)
        items = [*prefix, test_row.target]
        sequences[user] = Sequence(items=items, has_valid=valid_row is not None,
                                   recovered_from_train=len(items) > len(test_row.history) + 1)
    return sequences


def _train_sequence(rows: list[InterRow], file: str) -> list[str]:
    """The training part of one user's sequence, rebuilt from their train.inter prefixes.

    Prefixes longer than the history cap all have a capped history of the same length, so
    length alone cannot order them; UniSRec writes each user's prefixes longest first, so file
    order breaks the tie (the other order is tried too before giving up).
    """
    mismatch: InterRow | None = None
    for tie_order in (rows[::-1], rows):
        ordered = sorted(tie_order, key=lambda r: len(r.history))  # stable: keeps tie order
        sequence = list(ordered[0].history)
        mismatch = None
        for row in ordered:
            if not _ends_with(sequence, row.history):
                mismatch = row
                break
            sequence.append(row.target)
        if mismatch is None:
            return sequence
    assert mismatch is not None
    raise DataError(f"user {mismatch.user!r}: training rows are not prefixes of one sequence",
                    file=file, row=mismatch.row, column="item_id_list")


def _expect_tail(sequence: list[str], row: InterRow, file: str, other: str) -> None:
    if not _ends_with(sequence, row.history):
        raise DataError(f"user {row.user!r}: history disagrees with {other}", file=file,
                        row=row.row, column="item_id_list")


def _ends_with(sequence: list[str], tail: list[str]) -> bool:
    return len(tail) <= len(sequence) and sequence[len(sequence) - len(tail):] == tail


def _by_user(rows: list[InterRow], file: Path, *, unique: bool
             ) -> dict[str, InterRow] | dict[str, list[InterRow]]:
    if not unique:
        grouped: dict[str, list[InterRow]] = {}
        for row in rows:
            grouped.setdefault(row.user, []).append(row)
        return grouped
    single: dict[str, InterRow] = {}
    for row in rows:
        if row.user in single:
            raise DataError(f"user {row.user!r} has a second row (first at row "
                            f"{single[row.user].row})", file=str(file), row=row.row,
                            column="user_id")
        single[row.user] = row
    return single


def _events(sequences: dict[str, Sequence], item_of: dict[str, str], user_of: dict[str, str],
            path: dict[str, Path]) -> pl.DataFrame:
    columns: dict[str, list] = {k: [] for k in
                                ("event_id", "user_id", "item_id", "timestamp", "split")}
    for token, sequence in sequences.items():
        user = user_of.get(token)
        if user is None:
            raise DataError(f"user index {token!r} is not in {path['user2index'].name}",
                            file=str(path["test.inter"]), column="user_id")
        last = len(sequence.items) - 1
        for position, item_token in enumerate(sequence.items):
            item = item_of.get(item_token)
            if item is None:
                raise DataError(f"item index {item_token!r} (user index {token!r}) is not in "
                                f"{path['item2index'].name}", file=str(path["test.inter"]),
                                column="item_id")
            columns["event_id"].append(f"{user}-{position}")
            columns["user_id"].append(user)
            columns["item_id"].append(item)
            columns["timestamp"].append(EPOCH + timedelta(seconds=position))
            columns["split"].append("test" if position == last else
                                    "valid" if position == last - 1 and sequence.has_valid
                                    else "train")
    return pl.DataFrame(columns, schema={
        "event_id": pl.String, "user_id": pl.String, "item_id": pl.String,
        "timestamp": pl.Datetime("us", "UTC"), "split": pl.String,
    }).with_columns(pl.lit(CLICK).alias("type")).select(
        "event_id", "user_id", "item_id", "timestamp", "type", "split")


# --- files ---------------------------------------------------------------------------------


def _choose_stem(root: Path, dataset_name: str | None) -> str:
    """The data set to read: `dataset_name`, or the only one in `root`."""
    stems = data_set_names(root)
    if dataset_name is not None:
        if dataset_name not in stems:
            found = f"found: {', '.join(stems)}" if stems else "it holds no RecBole files"
            raise DataError(f"no data set {dataset_name!r} ({found})", file=str(root))
        return dataset_name
    if not stems:
        raise DataError("no RecBole files: expected NAME.inter (or NAME.train/valid/test.inter) "
                        "with NAME.item, or UniSRec's NAME.text with NAME.test.inter",
                        file=str(root))
    if len(stems) > 1:
        raise DataError(f"several data sets ({', '.join(stems)}); choose one with --dataset "
                        "NAME", file=str(root))
    return stems[0]


def data_set_names(root: Path) -> list[str]:
    """The `<Name>`s of the RecBole data sets in `root` (those with an interaction file)."""
    names = set()
    for path in root.glob("*.inter"):
        stem = path.name.removesuffix(".inter")
        for kind in (".train", ".valid", ".test"):
            stem = stem.removesuffix(kind)
        names.add(stem)
    return sorted(names)


def _read_tsv(path: Path, *, has_header: bool) -> pl.DataFrame:
    return read_atomic(path, has_header=has_header)[0]


def _column(frame: pl.DataFrame, name: str, path: Path) -> list[str | None]:
    if name not in frame.columns:
        raise DataError("required column is missing", file=str(path), column=name)
    return frame[name].to_list()


def _read_inter(path: Path) -> list[InterRow]:
    frame = _read_tsv(path, has_header=True)
    users = _column(frame, "user_id", path)
    histories = _column(frame, "item_id_list", path)
    targets = _column(frame, "item_id", path)
    rows = []
    for row, (user, history, target) in enumerate(zip(users, histories, targets, strict=True)):
        for value, column in ((user, "user_id"), (target, "item_id")):
            if value is None:
                raise DataError("missing value", file=str(path), row=row, column=column)
        rows.append(InterRow(row, user.strip(), (history or "").split(), target.strip()))
    return rows


def _read_index(path: Path) -> dict[str, str]:
    """token (the integer index as written) -> original id, from a `<Name>.*2index` file."""
    frame = _read_tsv(path, has_header=False)
    if frame.width != 2:
        raise DataError(f"expected 2 tab-separated columns (id, index), found {frame.width}",
                        file=str(path), row=0)
    ids, tokens = frame.to_series(0).to_list(), frame.to_series(1).to_list()
    index: dict[str, str] = {}
    for row, (original, token) in enumerate(zip(ids, tokens, strict=True)):
        if original is None or token is None:
            raise DataError("missing value", file=str(path), row=row)
        if token.strip() in index:
            raise DataError(f"index {token!r} is used twice", file=str(path), row=row)
        index[token.strip()] = original.strip()
    return index


def _read_items(path: Path) -> pl.DataFrame:
    frame = _read_tsv(path, has_header=True)
    ids = _column(frame, "item_id", path)
    texts = [t.strip() if t else "" for t in _column(frame, "text", path)]
    for row, item in enumerate(ids):
        if item is None:
            raise DataError("missing value", file=str(path), row=row, column="item_id")
    parts = split_item_texts(texts)
    return pl.DataFrame({
        "item_id": [i.strip() for i in ids],  # type: ignore[union-attr]
        "title": [p[0] for p in parts],
        "text": texts,
        "category": [p[1] for p in parts],
        "brand": [p[2] for p in parts],
    }, schema={c: pl.String for c in ("item_id", "title", "text", "category", "brand")})


# --- item text -----------------------------------------------------------------------------


def split_item_texts(texts: Iterable[str]) -> list[tuple[str, str | None, str | None]]:
    """(title, category path, brand) for each UniSRec text "title. category path. brand. ".

    Titles and brands may contain ". " themselves ("Mr. Heater", "L. A. Noire"), so the
    category is found by its root: the words nearly every unambiguous category path starts with
    (e.g. "Industrial & Scientific"). Without a root match, an empty category (". . ") splits
    title from brand; otherwise the title is the whole text and category and brand are None.
    """
    bodies = [_body(t) for t in texts]
    root = _category_root(bodies)
    return [_split_one(body, root) for body in bodies]


def _body(text: str) -> str:
    text = text.strip()
    return text[:-1] if text.endswith(".") else text


def _category_root(bodies: list[str]) -> str | None:
    """The leading words nearly all unambiguous category paths share, or None."""
    paths = [b.split(". ")[1].split() for b in bodies
             if b.count(". ") == 2 and b.split(". ")[1]]
    if len(paths) < len(bodies) / 2:
        return None
    root: list[str] = []
    matching = paths
    while True:
        position = len(root)
        words = Counter(p[position] for p in matching if len(p) > position)
        if not words:
            break
        word, count = words.most_common(1)[0]
        # 90%, not all: a few odd rows must not hide the root of the rest.
        if count < ROOT_SHARE * len(paths):
            break
        root.append(word)
        matching = [p for p in matching if len(p) > position and p[position] == word]
    return " ".join(root) if root else None


def _split_one(body: str, root: str | None) -> tuple[str, str | None, str | None]:
    if root is not None:
        at = body.find(f". {root}")
        if at >= 0:
            category, _, brand = body[at + 2:].partition(". ")
            return body[:at], category or None, brand or None
    if ". . " in body:
        title, _, brand = body.partition(". . ")
        return title, None, brand or None
    # No recognisable category: any ". " may be part of the title ("L. A. Noire"), so keep it.
    return body, None, None
