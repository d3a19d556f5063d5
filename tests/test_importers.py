"""Importers on real rows cut from the shared data (tests/fixtures/, see make_fixtures.py)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import recsys.data
from recsys.data import IMPORTERS, Dataset, import_dataset, load_dataset
from recsys.data.importers.recbole import split_item_texts
from recsys.data.schema import EVENT_COLUMNS, ITEM_COLUMNS
from recsys.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def imported(tmp_path_factory: pytest.TempPathFactory):
    """Import a fixture folder once per session; later calls reuse the result."""
    cache: dict[tuple[str, str], Dataset] = {}

    def run(fmt: str, folder: str) -> Dataset:
        if (fmt, folder) not in cache:
            out = tmp_path_factory.mktemp(f"{fmt}-{folder}")
            cache[fmt, folder] = import_dataset(fmt, FIXTURES / folder, out)
        return cache[fmt, folder]

    return run


def tsv_rows(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()]


# --- the public surface --------------------------------------------------------------------


def test_public_surface_is_exact() -> None:
    assert sorted(recsys.data.__all__) == sorted(
        ["Dataset", "load_dataset", "check_dataset", "validate_dataset", "import_dataset",
         "IMPORTERS"])
    assert set(IMPORTERS) == {"files", "parquet", "mind", "recbole", "movielens"}


@pytest.mark.parametrize(("fmt", "folder"), [("mind", "mind"), ("mind", "ebnerd"),
                                             ("recbole", "recbole"), ("movielens", "movielens"),
                                             ("parquet", "canonical")])
def test_every_importer_writes_a_valid_canonical_dataset(imported, fmt: str, folder: str
                                                         ) -> None:
    dataset = imported(fmt, folder)
    assert dataset.path is not None
    assert {p.name for p in dataset.path.iterdir()} == {"items.parquet", "events.parquet",
                                                        "dataset.json"}
    for name, dtype in ITEM_COLUMNS.items():
        assert dataset.items.schema[name] == dtype
    for name, dtype in EVENT_COLUMNS.items():
        assert dataset.events.schema[name] == dtype
    assert dataset.events["event_id"].is_unique().all()
    meta = json.loads((dataset.path / "dataset.json").read_text())
    assert meta["source"] == fmt and meta["notes"]


def test_unknown_format_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown format 'csv'"):
        import_dataset("csv", FIXTURES / "movielens", tmp_path / "out")


def test_failed_import_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "ml"
    shutil.copytree(FIXTURES / "movielens", src)
    with (src / "ratings.csv").open("a") as handle:
        handle.write("26,999999999,4.0,836950403\n")  # a movie that is not in movies.csv
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        import_dataset("movielens", src, out)
    assert error.value.file == str(src / "ratings.csv") and error.value.column == "movieId"
    assert not out.exists() or not any(out.iterdir())


def test_reimport_over_an_existing_dataset_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_dataset("mind", FIXTURES / "ebnerd", out)
    dataset = import_dataset("movielens", FIXTURES / "movielens", out)
    assert load_dataset(out).meta["source"] == "movielens" == dataset.meta["source"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --- MIND and EB-NeRD ----------------------------------------------------------------------


def mind_expectations(folder: Path) -> tuple[int, dict[str, list[str]], list[list[str]]]:
    """(impression tokens, each user's history, behaviors rows) straight from the TSV."""
    rows = tsv_rows(folder / "behaviors.tsv")
    histories = {row[1]: row[3].split() for row in rows}
    return sum(len(row[4].split()) for row in rows), histories, rows


@pytest.mark.parametrize("folder", ["mind", "ebnerd"])
def test_mind_counts_and_types(imported, folder: str) -> None:
    dataset = imported("mind", folder)
    shown, histories, _ = mind_expectations(FIXTURES / folder)
    news_file = "news.tsv" if folder == "mind" else "news_subset.tsv"
    news_rows = len(tsv_rows(FIXTURES / folder / news_file)) - (folder == "ebnerd")
    assert dataset.items.height == news_rows  # items nobody saw are kept too
    # One history per user, however many impressions repeat it.
    assert dataset.events.height == shown + sum(len(h) for h in histories.values())
    with_request = dataset.events.filter(pl.col("request_id").is_not_null())
    assert with_request.height == shown
    assert set(dataset.events["type"]) == {"click", "impression"}
    assert dataset.meta["protocol"] == "impressions" and dataset.meta["time"] == "real"


@pytest.mark.parametrize("folder", ["mind", "ebnerd"])
def test_mind_keeps_clicked_and_unclicked_impressions_in_screen_order(imported, folder: str
                                                                      ) -> None:
    events = imported("mind", folder).events
    _, _, rows = mind_expectations(FIXTURES / folder)
    for impression_id, _, _, _, tokens in rows:
        shown = events.filter(pl.col("request_id") == impression_id)
        expected = [(t.rsplit("-", 1)[0], "click" if t.endswith("-1") else "impression")
                    for t in tokens.split()]
        order = shown["event_id"].str.extract(r"-(\d+)$").cast(pl.Int64).arg_sort()
        assert list(shown[order].select("item_id", "type").iter_rows()) == expected
        assert {"click", "impression"} <= {t for _, t in expected}


def test_mind_impression_time_is_read(imported) -> None:
    events = imported("mind", "mind").events
    first = events.filter(pl.col("request_id") == "100643")  # "11/9/2019 6:42:51 PM"
    assert set(first["timestamp"]) == {datetime(2019, 11, 9, 18, 42, 51, tzinfo=UTC)}


@pytest.mark.parametrize("folder", ["mind", "ebnerd"])
def test_mind_history_precedes_first_impression_in_order(imported, folder: str) -> None:
    events = imported("mind", folder).events
    _, histories, _ = mind_expectations(FIXTURES / folder)
    for user, history in histories.items():
        mine = events.filter(pl.col("user_id") == user)
        past = mine.filter(pl.col("request_id").is_null()).sort("timestamp")
        assert past["item_id"].to_list() == history  # repeats inside a history are kept
        if history:
            first_impression = mine.filter(pl.col("request_id").is_not_null())["timestamp"].min()
            steps = past["timestamp"].diff().drop_nulls().unique().to_list()
            assert steps in ([], [timedelta(seconds=1)])
            assert past["timestamp"].max() == first_impression - timedelta(seconds=1)


def test_mind_items_text_and_categories(imported) -> None:
    items = imported("mind", "mind").items
    news = {row[0]: row for row in tsv_rows(FIXTURES / "mind" / "news.tsv")}
    item = items.row(0, named=True)
    _, category, subcategory, title, abstract, *_ = news[item["item_id"]]
    assert item["title"] == title and item["category"] == category
    assert item["subcategory"] == subcategory
    assert item["text"] in (f"{title}. {abstract}", f"{title} {abstract}")
    assert set(items.columns) == {"item_id", "title", "text", "category", "subcategory"}


def test_ebnerd_is_detected_by_its_header(imported) -> None:
    dataset = imported("mind", "ebnerd")
    assert dataset.meta["notes"].startswith("EB-NeRD layout")
    header, first, *_ = tsv_rows(FIXTURES / "ebnerd" / "news_subset.tsv")
    assert header == ["article_id", "category_id", "title", "abstract"]
    row = dataset.items.filter(pl.col("item_id") == first[0]).row(0, named=True)
    assert row["category"] == first[1] and row["title"] == first[2]
    assert row["text"].startswith(first[2]) and row["text"].endswith(first[3])


def copy_mind_with_unknown_history_item(tmp_path: Path) -> Path:
    src = tmp_path / "mind"
    shutil.copytree(FIXTURES / "mind", src)
    rows = tsv_rows(src / "behaviors.tsv")
    rows[2][3] += " N_NOT_IN_NEWS"
    (src / "behaviors.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    return src


def test_mind_unknown_history_item_names_file_and_row(tmp_path: Path) -> None:
    src = copy_mind_with_unknown_history_item(tmp_path)
    with pytest.raises(DataError, match="N_NOT_IN_NEWS") as error:
        import_dataset("mind", src, tmp_path / "out")
    assert (error.value.file, error.value.row, error.value.column) == (
        str(src / "behaviors.tsv"), 2, "history")


def test_mind_drop_unknown_skips_and_counts(tmp_path: Path, imported) -> None:
    src = copy_mind_with_unknown_history_item(tmp_path)
    dataset = import_dataset("mind", src, tmp_path / "out", drop_unknown=True)
    assert dataset.events.height == imported("mind", "mind").events.height
    assert "skipped 1 history and 0 impression items" in dataset.meta["notes"]


def test_mind_bad_time_names_row_and_column(tmp_path: Path) -> None:
    src = tmp_path / "mind"
    shutil.copytree(FIXTURES / "mind", src)
    rows = tsv_rows(src / "behaviors.tsv")
    rows[4][2] = "yesterday"
    (src / "behaviors.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    with pytest.raises(DataError) as error:
        import_dataset("mind", src, tmp_path / "out")
    assert (error.value.row, error.value.column) == (4, "time")


def test_mind_repeated_impression_id_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "mind"
    shutil.copytree(FIXTURES / "mind", src)
    rows = tsv_rows(src / "behaviors.tsv")
    rows[6][0] = rows[1][0]
    (src / "behaviors.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="used twice") as error:
        import_dataset("mind", src, tmp_path / "out")
    assert (error.value.row, error.value.column) == (6, "impression_id")


# --- RecBole -------------------------------------------------------------------------------


def recbole_index(name: str) -> dict[str, str]:
    """original id -> index token, from the fixture's `Scientific.<name>2index`."""
    return dict(tsv_rows(FIXTURES / "recbole" / f"Scientific.{name}2index"))


def rebuild_inter(events: pl.DataFrame, kind: str, item_token: dict[str, str],
                  user_token: dict[str, str], cap: int = 50) -> list[str]:
    """The `.inter` rows of `kind` that a leave-one-out split of `events` implies (no header)."""
    rows = []
    ordered = events.sort("user_id", "timestamp")
    for (user,), group in ordered.group_by("user_id", maintain_order=True):
        tokens = [item_token[i] for i in group["item_id"]]
        ends = {"test": [len(tokens) - 1], "valid": [len(tokens) - 2],
                "train": range(1, len(tokens) - 2)}[kind]
        for end in ends:
            rows.append(f"{user_token[user]}\t{' '.join(tokens[:end][-cap:])}\t{tokens[end]}")
    return sorted(rows)


def inter_lines(folder: Path, kind: str, stem: str = "Scientific") -> list[str]:
    return sorted((folder / f"{stem}.{kind}.inter").read_text().splitlines()[1:])


@pytest.mark.parametrize("kind", ["test", "valid", "train"])
def test_recbole_reconstruction_reproduces_the_inter_files(imported, kind: str) -> None:
    events = imported("recbole", "recbole").events
    got = rebuild_inter(events, kind, recbole_index("item"), recbole_index("user"))
    assert got == inter_lines(FIXTURES / "recbole", kind)


def test_recbole_splits_order_and_time(imported) -> None:
    dataset = imported("recbole", "recbole")
    events = dataset.events.sort("user_id", "timestamp")
    assert dataset.meta["time"] == "order_only" and dataset.meta["protocol"] == "leave_one_out"
    assert set(events["type"]) == {"click"}
    for (user,), group in events.group_by("user_id", maintain_order=True):
        n = group.height
        assert group["split"].to_list() == ["train"] * (n - 2) + ["valid", "test"]
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        assert group["timestamp"].to_list() == [epoch + timedelta(seconds=i) for i in range(n)]
        assert group["event_id"].to_list() == [f"{user}-{i}" for i in range(n)]


def test_recbole_recovers_history_cut_by_test_file(imported) -> None:
    dataset = imported("recbole", "recbole")
    counts = dataset.events.group_by("user_id").len()
    test_rows = tsv_rows(FIXTURES / "recbole" / "Scientific.test.inter")[1:]
    assert max(len(r[1].split()) for r in test_rows) == 50
    assert counts["len"].max() == 56  # user 1570 of the full data: 55 history items + target
    assert counts.height == len(test_rows) == 40
    assert "1 users' longer sequences were recovered" in dataset.meta["notes"]


def test_recbole_items_keep_all_rows_and_split_their_text(imported) -> None:
    items = imported("recbole", "recbole").items
    assert items.height == len(tsv_rows(FIXTURES / "recbole" / "Scientific.text")) - 1
    assert items["item_id"].is_in(imported("recbole", "recbole").events["item_id"].implode()
                                  ).sum() == items.height - 2  # two items nobody touched
    heater = items.filter(pl.col("item_id") == "B000AMC5WY").row(0, named=True)
    assert heater["title"].startswith("Mr. Heater Propane")
    assert heater["category"].startswith("Industrial & Scientific Hydraulics")
    assert heater["brand"] == "Mr. Heater"
    fan = items.filter(pl.col("item_id") == "B00024JE5Q").row(0, named=True)
    assert fan["category"] is None and fan["brand"] == "TPI"
    assert fan["text"].startswith(fan["title"])


def test_split_item_texts_falls_back_to_the_first_sentence() -> None:
    texts = ["A lamp. Home Lighting Lamps. Acme. ", "A chair. Home Furniture. Acme. ",
             "Dr. Who mug. Home Kitchen Mugs. BBC. ", "Just a title. "]
    assert split_item_texts(texts) == [
        ("A lamp", "Home Lighting Lamps", "Acme"), ("A chair", "Home Furniture", "Acme"),
        ("Dr. Who mug", "Home Kitchen Mugs", "BBC"), ("Just a title", None, None)]


def test_split_item_texts_never_cuts_a_title() -> None:
    """On 18b1391 "L. A. Noire" became "L" and the rest an invented category."""
    with_root = ["L. A. Noire. Video Games PC Games. Rockstar. ", "Tetris. Video Games Retro. "
                 "Nintendo. ", "Halo. Video Games Xbox. Microsoft. "]
    assert split_item_texts(with_root)[0] == ("L. A. Noire", "Video Games PC Games", "Rockstar")
    no_root = ["L. A. Noire. Rockstar classic. ", "Tetris. Falling blocks. ", "Halo. Rings. "]
    assert split_item_texts(no_root) == [("L. A. Noire. Rockstar classic", None, None),
                                         ("Tetris. Falling blocks", None, None),
                                         ("Halo. Rings", None, None)]


def test_unisrec_text_is_kept_whole_and_titles_are_not_cut(tmp_path: Path) -> None:
    src = tmp_path / "rb"
    shutil.copytree(FIXTURES / "recbole", src)
    rows = tsv_rows(src / "Scientific.text")
    rows[1][1] = "L. A. Noire. A detective game. "  # no category path to recognise
    (src / "Scientific.text").write_text("".join("\t".join(r) + "\n" for r in rows))
    items = import_dataset("recbole", src, tmp_path / "out").items
    noire = items.filter(pl.col("item_id") == rows[1][0]).row(0, named=True)
    assert noire["title"] == "L. A. Noire. A detective game" and noire["category"] is None
    assert noire["text"] == "L. A. Noire. A detective game."


def write_atomic(folder: Path, stem: str, *, splits: bool = True, timestamps: bool = True
                 ) -> None:
    """Standard RecBole atomic files: `.item` with token_seq text, `.inter` (or its splits)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.item").write_text(
        "item_id:token\ttitle:token_seq\tcategories:token_seq\tsales_rank:float\n"
        "g1\tL. A. Noire\tVideo Games\t12\n"
        "g2\tHalo: Combat Evolved\tVideo Games\t3\n"
        "g3\tMr. Heater Portable Buddy\tOutdoors\t40\n"
        "g4\tTetris\tVideo Games\t1\n")
    header = "user_id:token\titem_id:token\trating:float" + (
        "\ttimestamp:float" if timestamps else "") + "\n"
    start = 1_700_000_000
    rows = {"train": [("u1", "g1", 0), ("u1", "g2", 1), ("u2", "g3", 2), ("u2", "g1", 3)],
            "valid": [("u1", "g3", 4), ("u2", "g2", 5)],
            "test": [("u1", "g4", 6), ("u2", "g4", 7)]}
    def lines(part):
        return "".join(f"{u}\t{i}\t5.0" + (f"\t{start + 3600 * t}.0" if timestamps else "")
                       + "\n" for u, i, t in part)
    if splits:
        for kind, part in rows.items():
            (folder / f"{stem}.{kind}.inter").write_text(header + lines(part))
    else:
        (folder / f"{stem}.inter").write_text(header + lines([r for p in rows.values()
                                                                for r in p]))


def test_recbole_standard_atomic_files_with_splits(tmp_path: Path) -> None:
    """On 18b1391 refused: 'Games.text: file is missing'."""
    write_atomic(tmp_path / "src", "Games")
    dataset = import_dataset("recbole", tmp_path / "src", tmp_path / "out")
    items = dataset.items.sort("item_id")
    assert items["title"].to_list() == ["L. A. Noire", "Halo: Combat Evolved",
                                        "Mr. Heater Portable Buddy", "Tetris"]
    assert items["text"][0] == "L. A. Noire. Video Games"
    assert items["category"].to_list() == ["Video Games", "Video Games", "Outdoors",
                                           "Video Games"]
    events = dataset.events.sort("user_id", "timestamp")
    assert events.filter(pl.col("user_id") == "u1")["split"].to_list() == [
        "train", "train", "valid", "test"]
    assert events["timestamp"][0] == datetime.fromtimestamp(1_700_000_000, UTC)
    assert dataset.meta["time"] == "real" and dataset.meta["protocol"] == "leave_one_out"
    assert dataset.meta["name"] == "Games" and set(dataset.events["value"]) == {5.0}


def test_recbole_single_inter_file_without_timestamps_is_order_only(tmp_path: Path) -> None:
    write_atomic(tmp_path / "src", "Games", splits=False, timestamps=False)
    dataset = import_dataset("recbole", tmp_path / "src", tmp_path / "out")
    u1 = dataset.events.filter(pl.col("user_id") == "u1").sort("timestamp")
    assert u1["item_id"].to_list() == ["g1", "g2", "g3", "g4"]  # file order
    assert dataset.meta["time"] == "order_only" and "split" not in dataset.events.columns


def test_recbole_folder_with_two_data_sets_names_them_and_the_option(tmp_path: Path,
                                                                    capsys) -> None:
    from recsys.cli import main

    write_atomic(tmp_path / "src", "Games")
    write_atomic(tmp_path / "src", "Tools", splits=False)
    out = tmp_path / "out"
    assert main(["import", "recbole", str(tmp_path / "src"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "several data sets (Games, Tools); choose one with --dataset NAME" in err
    assert main(["import", "recbole", str(tmp_path / "src"), "--out", str(out), "--dataset",
                 "Tools", "--name", "my-tools"]) == 0
    assert load_dataset(out).meta["name"] == "my-tools"
    assert main(["import", "recbole", str(tmp_path / "src"), "--out", str(out), "--dataset",
                 "Nope"]) == 2
    assert "no data set 'Nope' (found: Games, Tools)" in capsys.readouterr().err


def test_recbole_drop_unknown_for_both_layouts(tmp_path: Path) -> None:
    write_atomic(tmp_path / "atomic", "Games")
    with (tmp_path / "atomic" / "Games.train.inter").open("a") as handle:
        handle.write("u1\tg9\t5.0\t1700000000.0\n")
    with pytest.raises(DataError, match="item 'g9' is not in Games.item") as error:
        import_dataset("recbole", tmp_path / "atomic", tmp_path / "o1")
    assert error.value.row == 4
    dataset = import_dataset("recbole", tmp_path / "atomic", tmp_path / "o1", drop_unknown=True)
    assert dataset.report == ["timestamps: epoch seconds (by magnitude).",
                              "--drop-unknown: dropped 1 events whose item is not in Games.item."]
    src = tmp_path / "unisrec"
    shutil.copytree(FIXTURES / "recbole", src)
    rows = tsv_rows(src / "Scientific.text")
    (src / "Scientific.text").write_text("".join("\t".join(r) + "\n" for r in rows[:-1]))
    dataset = import_dataset("recbole", src, tmp_path / "o2", drop_unknown=True)
    assert "dropped" in dataset.report[0]


def test_recbole_with_only_the_test_file(tmp_path: Path) -> None:
    src = tmp_path / "rb"
    shutil.copytree(FIXTURES / "recbole", src)
    (src / "Scientific.train.inter").unlink()
    (src / "Scientific.valid.inter").unlink()
    dataset = import_dataset("recbole", src, tmp_path / "out")
    assert set(dataset.events["split"]) == {"train", "test"}
    assert dataset.events.filter(pl.col("split") == "test").height == 40
    assert dataset.events.group_by("user_id").len()["len"].max() == 51  # cut history, as given
    assert "1 users have a history of exactly 50 items" in dataset.meta["notes"]
    test = rebuild_inter(dataset.events, "test", recbole_index("item"), recbole_index("user"))
    assert test == inter_lines(FIXTURES / "recbole", "test")


def test_recbole_valid_file_that_disagrees_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "rb"
    shutil.copytree(FIXTURES / "recbole", src)
    lines = (src / "Scientific.valid.inter").read_text().splitlines()
    user, history, target = lines[3].split("\t")
    lines[3] = "\t".join([user, " ".join(reversed(history.split())), target])
    (src / "Scientific.valid.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="disagrees") as error:
        import_dataset("recbole", src, tmp_path / "out")
    # Row 2 is the third data row (line 4: the header is not a data row).
    assert (Path(error.value.file).name, error.value.row) == ("Scientific.valid.inter", 2)


# --- MovieLens -----------------------------------------------------------------------------


def test_movielens_counts_and_click_threshold(imported) -> None:
    dataset = imported("movielens", "movielens")
    ratings = pl.read_csv(FIXTURES / "movielens" / "ratings.csv")
    movies = pl.read_csv(FIXTURES / "movielens" / "movies.csv")
    assert dataset.events.height == ratings.height and dataset.items.height == movies.height
    clicks = dataset.events.filter(pl.col("type") == "click")
    assert clicks.height == (ratings["rating"] >= 4.0).sum()
    assert set(dataset.events["type"]) == {"click", "rating"}
    assert dataset.events["value"].to_list() == ratings["rating"].to_list()
    assert "rating >= 4 " in dataset.meta["notes"]
    first = ratings.row(0, named=True)
    event = dataset.events.row(0, named=True)
    assert event["event_id"] == f"{first['userId']}-{first['movieId']}"
    assert event["timestamp"] == datetime.fromtimestamp(first["timestamp"], UTC)


def test_movielens_threshold_option(tmp_path: Path) -> None:
    dataset = import_dataset("movielens", FIXTURES / "movielens", tmp_path, click_threshold=3.0)
    ratings = pl.read_csv(FIXTURES / "movielens" / "ratings.csv")
    assert dataset.events.filter(pl.col("type") == "click").height == (ratings["rating"] >= 3).sum()
    assert "rating >= 3 " in dataset.meta["notes"]


def test_movielens_item_text_tags_and_year(imported) -> None:
    items = imported("movielens", "movielens").items
    hobbit = items.filter(pl.col("item_id") == "98809").row(0, named=True)
    assert hobbit["category"] == "Adventure" and hobbit["year"] == 2012
    assert hobbit["tags"] == ["adventure", "fantasy", "imax", "action", "myth"]
    assert hobbit["text"].startswith(f"{hobbit['title']}. Genres: Adventure, Fantasy, IMAX. "
                                     "Tags: action, myth.")
    interstellar = items.filter(pl.col("item_id") == "109487").row(0, named=True)
    assert "sci-fi" not in interstellar["text"].split("Tags: ")[1]  # a genre, not a new tag
    toy_story = items.filter(pl.col("item_id") == "1")
    if toy_story.height:  # summaries are appended where the Agent4Rec file has one
        assert toy_story["text"][0].endswith(toy_story["summary"][0])
    with_summary = items.filter(pl.col("summary").is_not_null()).row(0, named=True)
    assert with_summary["text"].endswith(with_summary["summary"])
    no_genres = items.filter(pl.col("item_id") == "114335").row(0, named=True)
    assert no_genres["category"] is None and no_genres["tags"] == []
    assert items.filter(pl.col("item_id") == "40697")["year"][0] is None  # "Babylon 5"
    assert "created_at" not in items.columns


# --- parquet / CSV / JSON lines ------------------------------------------------------------


def test_parquet_round_trip_keeps_frames_and_meta(imported) -> None:
    dataset = imported("parquet", "canonical")
    source = load_dataset(FIXTURES / "canonical")
    assert dataset.items.equals(source.items) and dataset.events.equals(source.events)
    assert dataset.meta["time"] == source.meta["time"]
    assert dataset.meta["protocol"] == source.meta["protocol"]


def test_csv_and_jsonl_sources_fill_missing_ids_and_text(tmp_path: Path) -> None:
    source = load_dataset(FIXTURES / "canonical")
    src = tmp_path / "src"
    src.mkdir()
    source.items.select("item_id", "title", "category",
                        pl.col("tags").list.join("|")).write_csv(src / "items.csv")
    events = source.events.drop("event_id").with_columns(
        pl.col("timestamp").dt.epoch("s"))  # unix seconds, as many logs carry them
    events.write_ndjson(src / "events.jsonl")
    dataset = import_dataset("parquet", src, tmp_path / "out", protocol="time")
    assert dataset.events["event_id"].to_list() == [f"e{i}" for i in range(events.height)]
    assert dataset.items["text"].to_list() == source.items["title"].to_list()
    assert dataset.items["tags"].to_list() == source.items["tags"].to_list()
    assert dataset.events["timestamp"].to_list() == source.events["timestamp"].to_list()
    assert dataset.meta["time"] == "real" and dataset.meta["source"] == "parquet"


def test_csv_source_error_names_the_csv_row(tmp_path: Path) -> None:
    source = load_dataset(FIXTURES / "canonical")
    src = tmp_path / "src"
    src.mkdir()
    source.items.drop("tags").write_csv(src / "items.csv")
    bad = source.events.with_columns(pl.col("value").cast(pl.String))
    bad = bad.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("high"))
                           .otherwise(pl.col("value")).alias("value"))
    bad.write_parquet(src / "events.parquet")
    with pytest.raises(DataError) as error:
        import_dataset("parquet", src, tmp_path / "out")
    assert (error.value.file, error.value.row, error.value.column) == (
        str(src / "events.parquet"), 7, "value")


def test_parquet_source_with_two_items_files_is_ambiguous(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "canonical", src)
    load_dataset(src).items.drop("tags").write_csv(src / "items.csv")
    with pytest.raises(DataError, match="several items files"):
        import_dataset("parquet", src, tmp_path / "out")


# --- the full shared data (CI has it; a fresh clone does not) ------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "amazon-scientific").is_dir(), reason="needs ../shared/data")
def test_full_amazon_scientific_reproduces_the_inter_files(tmp_path: Path) -> None:
    src = SHARED / "amazon-scientific"
    dataset = import_dataset("recbole", src, tmp_path)
    item_token = dict(tsv_rows(src / "Scientific.item2index"))
    user_token = dict(tsv_rows(src / "Scientific.user2index"))
    for kind in ("test", "valid", "train"):
        assert rebuild_inter(dataset.events, kind, item_token, user_token) == \
            inter_lines(src, kind)
