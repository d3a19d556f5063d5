"""The evaluation reports generated from the shared data (docs/report/, see its README) are
complete: every page's plots exist, are real PNG images, and the numbers are the contract's."""

import json
import re
import struct
from pathlib import Path

import pytest

REPORTS = sorted((Path(__file__).resolve().parent.parent / "docs" / "report").glob("*/index.html"))
PLOTS = {"metrics.png", "importance.png", "ndcg_by_history.png", "score_distribution.png"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_reports_from_the_shared_data_are_committed():
    assert {p.parent.name for p in REPORTS} >= {"amazon-test", "ml-time-test"}


@pytest.mark.parametrize("index", REPORTS, ids=lambda p: p.parent.name)
def test_report_pages_show_every_plot(index):
    images = set(re.findall(r'src="([^"]+)"', index.read_text()))
    assert images == PLOTS
    for name in images:
        width, height = png_size(index.parent / name)
        assert width >= 300 and height >= 200
        assert (index.parent / name).stat().st_size > 5_000   # a drawn plot, not an empty canvas
    report = json.loads((index.parent / "report.json").read_text())
    assert report["dataset"] in {"amazon-scientific", "ml-latest-small"}
    assert report["split"] == "test"
    assert set(report["metrics"]) == {"pipeline", "popularity", "covisitation", "semantic"}
    pipeline = report["metrics"]["pipeline"]["ndcg@10"]
    assert f"{pipeline:.4f}" in index.read_text()
