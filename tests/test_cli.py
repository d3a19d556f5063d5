"""The command line: lifecycle commands, exit codes, and the evaluate --json contract."""

import json

import polars as pl
import pytest

from recsys.cli import EXIT_BAD_INPUT, main
from tests.conftest import FIXTURES


def test_import_validate_train_evaluate(tmp_path, capsys):
    data, models = tmp_path / "data", tmp_path / "models"
    assert main(["import", "recbole", str(FIXTURES / "recbole"), "--out", str(data)]) == 0
    assert main(["validate", str(data)]) == 0
    assert main(["train", str(data), "--out", str(models), "--version", "first"]) == 0
    report_path = tmp_path / "eval.json"
    assert main(["evaluate", str(models), str(data), "--split", "test", "--json",
                 str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["dataset"] and report["split"] == "test"
    assert report["protocol"] == "leave_one_out" and report["model_version"] == "first"
    assert set(report["metrics"]) == {"pipeline", "popularity", "covisitation", "semantic"}
    names = {"recall@10", "ndcg@10", "recall@50", "ndcg@50", "mrr"}
    for values in report["metrics"].values():
        assert set(values) == names | {f"{n}_masked" for n in names}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    out = capsys.readouterr().out
    assert "pipeline" in out and "semantic" in out

    assert main(["models", "list", str(models)]) == 0
    assert "* first" in capsys.readouterr().out


def test_validate_reports_file_row_and_column(tmp_path, recbole_dataset, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("items.parquet", "dataset.json"):
        (broken / name).write_bytes((recbole_dataset / name).read_bytes())
    events = pl.read_parquet(recbole_dataset / "events.parquet")
    events = events.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("user_id"))
        .alias("user_id"))
    events.write_parquet(broken / "events.parquet")
    assert main(["validate", str(broken)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "events.parquet" in err and "row 7" in err and "user_id" in err


def test_bad_source_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    missing = str(tmp_path / "missing")
    assert main(["import", "movielens", missing, "--out", str(out)]) == EXIT_BAD_INPUT
    assert "missing" in capsys.readouterr().err
    assert not (out / "events.parquet").exists()


def test_evaluate_without_models_is_a_clear_error(tmp_path, recbole_dataset, capsys):
    assert main(["evaluate", str(tmp_path), str(recbole_dataset)]) == EXIT_BAD_INPUT
    assert "recsys train" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_BAD_INPUT
    assert "quickstart" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["promote"])
def test_promote_needs_an_existing_version(action, models_dir, capsys):
    assert main(["models", action, str(models_dir), "../etc"]) == EXIT_BAD_INPUT
    assert "invalid model version" in capsys.readouterr().err


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"recsys {version('recsys')}"


def _table(out: str) -> tuple[str, list[str], list[list[str]]]:
    headline, header, *rows = out.rstrip("\n").splitlines()
    return headline, header.split(), [row.split() for row in rows]


def test_recommend_prints_the_recommenders_answer_as_a_table(models_dir, recommender, capsys):
    user = sorted(recommender.users)[0]
    assert main(["recommend", str(models_dir), user, "--k", "5"]) == 0
    headline, header, rows = _table(capsys.readouterr().out)
    assert header == ["rank", "item_id", "title", "category", "score", "source"]
    expected = recommender.recommend([user], k=5)[0]
    assert [r[1] for r in rows] == expected.item_ids
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(r[-1] == "model" for r in rows)
    assert headline == f"user {user}: 5 items from v1, ranked by the model"
    title = recommender.titles[recommender.item_rows[expected.item_ids[0]]]
    assert title.split()[0] in rows[0]


def test_recommend_explain_adds_the_reasons(models_dir, recommender, capsys):
    user = sorted(recommender.users)[1]
    assert main(["recommend", str(models_dir), user, "--k", "3", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == "why"
    reasons = recommender.recommend([user], k=3, explain=True)[0].reasons
    for line, reason in zip(lines[2:], reasons, strict=True):
        assert line.endswith(reason["text"])


def test_recommend_for_an_unknown_user_says_it_is_the_popularity_fallback(models_dir, capsys):
    assert main(["recommend", str(models_dir), "no-such-user", "--k", "4"]) == 0
    headline, _, rows = _table(capsys.readouterr().out)
    assert "popularity fallback" in headline and "not in bundle v1" in headline
    assert len(rows) == 4 and all(r[-1] == "popularity" for r in rows)


def test_recommend_for_a_history(models_dir, recommender, capsys):
    history = recommender.item_ids[:3]
    assert main(["recommend", str(models_dir), "--history", ",".join(history), "--k", "4"]) == 0
    headline, _, rows = _table(capsys.readouterr().out)
    assert headline.startswith("a history of 3 item(s): 4 items")
    assert [r[1] for r in rows] == recommender.recommend_for_history([history], k=4)[0].item_ids


@pytest.mark.parametrize("args,message", [
    (["--history", "{first},nope-1,nope-2"], "item id(s) not in bundle v1: nope-1, nope-2"),
    ([], "give one of USER_ID and --history"),
    (["someone", "--history", "{first}"], "give one of USER_ID and --history"),
    (["someone", "--k", "0"], "--k must be between 1 and 1000"),
])
def test_recommend_refuses_bad_requests_in_one_line(models_dir, recommender, args, message,
                                                    capsys):
    args = [a.replace("{first}", recommender.item_ids[0]) for a in args]
    assert main(["recommend", str(models_dir), *args]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {captured.err.strip()[7:]}"
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err
    assert captured.out == ""


FOLDER_COMMANDS = {
    "train": lambda f, o: ["train", f, "--out", str(o / "m")],
    "evaluate models": lambda f, o: ["evaluate", f, "{dataset}"],
    "evaluate dataset": lambda f, o: ["evaluate", "{models}", f],
    "batch-score": lambda f, o: ["batch-score", f, "{users}", "--out", str(o / "r.parquet")],
    "recommend": lambda f, o: ["recommend", f, "someone"],
    "retrain": lambda f, o: ["retrain", f, "--events", "{users}"],
    "models list": lambda f, o: ["models", "list", f],
    "models promote": lambda f, o: ["models", "promote", f, "v1"],
    "models rollback": lambda f, o: ["models", "rollback", f],
    "events export": lambda f, o: ["events", "export", f, "--out", str(o / "e")],
}


@pytest.mark.parametrize("folder", ["missing", "empty", "wrong kind"])
@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_folder_with_nothing_usable_is_one_line_and_exit_2(command, folder, tmp_path,
                                                             models_dir, recbole_dataset,
                                                             capsys):
    users = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": ["a"]}).write_parquet(users)
    reads_a_dataset = command in ("train", "evaluate dataset")
    target = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty",
              "wrong kind": models_dir if reads_a_dataset else recbole_dataset}
    target[folder].mkdir(exist_ok=True) if folder == "empty" else None
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("{dataset}", str(recbole_dataset)).replace("{models}", str(models_dir))
            .replace("{users}", str(users)) for a in FOLDER_COMMANDS[command](str(target[folder]),
                                                                            out)]
    assert main(args) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and \
        str(target[folder]) in err, err
    # at most the step line of the step that found the folder unusable
    assert all(line.startswith("[1/") for line in captured.out.splitlines())
    assert list(out.iterdir()) == []
