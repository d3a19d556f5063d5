"""`recsys evaluate`: the JSON contract, per-case data consistent with the metrics, and the HTML
report with real PNG plots (`--report DIR`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.evaluate import METHODS, evaluate
from recsys.report import PLOTS, history_buckets, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(models_dir, recbole_dataset):
    return evaluate(models_dir, recbole_dataset, "test", log=lambda _: None)


def test_json_contract_and_per_case_data(report):
    assert {"dataset", "split", "protocol", "model_version", "metrics"} <= set(report)
    assert set(report["metrics"]) == set(METHODS)
    per_case = report["per_case"]
    cases = report["details"]["cases"]
    assert len(per_case["history_length"]) == cases
    for method in METHODS:
        values = per_case["ndcg@10"][method]
        assert len(values) == cases
        # the plotted per-case values average to the reported metric
        assert np.mean(values) == pytest.approx(report["metrics"][method]["ndcg@10"], abs=1e-5)
    scores = per_case["scores"]
    assert scores["positive"] and scores["negative"]
    assert scores["negative_total"] >= len(scores["negative"])
    assert report["details"]["gain_importance"], "the bundle's gain importance travels along"
    json.dumps(report, allow_nan=False)


def test_report_writes_html_and_real_pngs(report, tmp_path):
    import matplotlib.image

    index = write_report(report, tmp_path / "report")
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text()
    for name in PLOTS:
        path = tmp_path / "report" / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image[..., :3].std() > 0.01, f"{name} is a blank image"
        assert f'src="{name}"' in page
    assert "pipeline" in page and report["model_version"] in page
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["metrics"] == report["metrics"]
    assert not list((tmp_path / "report").glob(".*tmp")), "no temporary files left behind"


def test_report_refuses_an_incomplete_result(tmp_path):
    with pytest.raises(RecsysError, match="per_case"):
        write_report({"dataset": "d", "split": "test", "protocol": "time",
                      "model_version": "v", "metrics": {}}, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_history_buckets_average_by_length():
    rows = history_buckets([0, 1, 2, 3, 60], {"pipeline": [0.0, 1.0, 0.5, 0.2, 0.4]})
    assert [r["history"] for r in rows] == ["0", "1-2", "3-4", "50+"]
    assert [r["cases"] for r in rows] == [1, 2, 1, 1]
    assert rows[1]["pipeline"] == pytest.approx(0.75)


def test_cli_evaluate_report(models_dir, recbole_dataset, tmp_path, capsys):
    from recsys.cli import main

    out = tmp_path / "cli-report"
    assert main(["evaluate", str(models_dir), str(recbole_dataset), "--split", "valid",
                 "--report", str(out)]) == 0
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    assert all((out / name).stat().st_size > 1000 for name in PLOTS)


def test_valid_metrics_of_a_ranker_fit_on_valid_are_marked_not_held_out(models_dir,
                                                                         recbole_dataset,
                                                                         report):
    """The default ranker is fit again on the valid clicks (RankerConfig.refit_on_valid): its
    valid numbers say so, in the JSON and in the log; test numbers are held out."""
    from recsys.recommender import Recommender

    assert "refit_on_valid" in Recommender.load(models_dir).manifest["ranker"]
    lines = []
    valid = evaluate(models_dir, recbole_dataset, "valid", log=lines.append)
    assert valid["details"]["ranker_saw_this_split"] is True
    assert any("not held out" in line for line in lines)
    assert report["details"]["ranker_saw_this_split"] is False


def test_valid_notes_name_each_part_trained_on_the_valid_clicks():
    from recsys.evaluate import valid_not_held_out

    refit_encoder = {"finetune": {"data": {"valid_clicks_included": True}}}
    held_encoder = {"finetune": {"data": {"valid_clicks_included": False}}}
    assert valid_not_held_out({"ranker": {"used": True}, "encoder": held_encoder}) == {}
    notes = valid_not_held_out({"ranker": {"refit_on_valid": {}}, "encoder": refit_encoder})
    assert set(notes) == {"ranker", "encoder"}
    assert "FinetuneConfig.refit_on_valid" in notes["encoder"]
    assert set(valid_not_held_out({"encoder": refit_encoder})) == {"encoder"}
    assert valid_not_held_out({"encoder": {"finetuned": False}}) == {}
