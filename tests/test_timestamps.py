"""Timestamps cannot go silently wrong: units by magnitude, ISO with or without a zone, a sane
range, the same rules in the importers, `recsys validate` and `POST /events` (issue 25)."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from recsys.cli import EXIT_BAD_INPUT, main
from recsys.data import validate_dataset
from recsys.data.timestamps import TimestampError, epoch_seconds, guess_unit, read_times
from recsys.data.validate import normalize_events
from serving.main import create_app
from serving.settings import Settings

CANONICAL = Path(__file__).parent / "fixtures" / "canonical"
# 2026-11-28T17:15:23Z, the value of the report, in each unit.
WHEN = datetime(2026, 11, 28, 17, 15, 23, tzinfo=UTC)
SECONDS = 1795886123


def events_with(timestamps) -> pl.DataFrame:
    n = len(timestamps)
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "user_id": ["u"] * n,
                         "item_id": ["i"] * n, "timestamp": timestamps, "type": ["click"] * n})


def test_the_fixed_moment_is_what_the_tests_say():
    assert datetime.fromtimestamp(SECONDS, UTC) == WHEN


@pytest.mark.parametrize("value", [SECONDS, SECONDS * 1000, SECONDS * 1_000_000,
                                   SECONDS * 1_000_000_000, float(SECONDS) * 1000,
                                   str(SECONDS * 1000)])
def test_epoch_numbers_get_their_unit_from_their_magnitude(value):
    # On 18b1391 milliseconds were read as seconds: the year 58877.
    events = normalize_events(events_with([value]))
    assert events["timestamp"][0] == WHEN


def test_guess_unit_boundaries():
    assert [guess_unit(v) for v in (6.3e8, 4.1e9, 6.3e11, 4.1e12, 6.3e14, 6.3e17)] == [
        "s", "s", "ms", "ms", "us", "ns"]


def test_an_explicit_unit_wins_over_the_guess():
    read = read_times(pl.Series([SECONDS * 1000]), "ms")
    assert read.times[0] == WHEN and read.unit == "ms" and not read.guessed
    assert "epoch milliseconds (by magnitude)" in read_times(pl.Series([SECONDS * 1000])).describe()


def test_a_column_mixing_seconds_and_milliseconds_is_refused_with_the_row():
    with pytest.raises(TimestampError, match="mixed units") as error:
        read_times(pl.Series([SECONDS, SECONDS + 5, SECONDS * 1000]))
    assert error.value.row == 2


def test_iso_text_with_and_without_a_zone_and_the_utc_assumption_is_counted():
    read = read_times(pl.Series(["2026-11-28T18:15:23+01:00", "2026-11-28T17:15:23Z",
                                 "2026-11-28 17:15:23", "2026-11-28T17:15:23.000"]))
    assert read.times.to_list() == [WHEN] * 4
    assert read.assumed_utc == 2 and "2 times without a zone read as UTC" in read.describe()


@pytest.mark.parametrize("bad", [4_102_444_800 * 10**9, -5, 0, 86_400 * 365 * 10 * 10**9])
def test_validate_refuses_times_outside_1990_to_tomorrow(tmp_path, bad):
    root = tmp_path / "ds"
    shutil.copytree(CANONICAL, root)
    events = pl.read_parquet(root / "events.parquet")
    stamp = pl.from_epoch(pl.lit(bad, dtype=pl.Int64), time_unit="ns").dt.replace_time_zone("UTC")
    events = events.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(stamp.dt.cast_time_unit("us"))
        .otherwise(pl.col("timestamp")).alias("timestamp"))
    events.write_parquet(root / "events.parquet")
    [problem] = validate_dataset(root)
    assert (problem.file, problem.row, problem.column) == (str(root / "events.parquet"), 3,
                                                           "timestamp")
    assert "--allow-any-time" in str(problem)
    assert validate_dataset(root, allow_any_time=True) == []
    assert main(["validate", str(root)]) == EXIT_BAD_INPUT
    assert main(["validate", str(root), "--allow-any-time"]) == 0


def test_millisecond_values_stored_as_seconds_are_caught_by_validate(tmp_path):
    """The issue's case: a dataset whose times were read with the wrong unit (year 58877)."""
    root = tmp_path / "ds"
    shutil.copytree(CANONICAL, root)
    events = pl.read_parquet(root / "events.parquet").with_columns(
        (pl.col("timestamp").dt.epoch("ms") * 1_000_000).cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC").alias("timestamp"))  # ms taken as s
    events.write_parquet(root / "events.parquet")
    [problem] = validate_dataset(root)
    assert problem.row == 0 and "more than 1 day in the future" in str(problem)


def test_order_only_datasets_keep_their_1970_sequence_times(recbole_dataset):
    meta = json.loads((recbole_dataset / "dataset.json").read_text())
    assert meta["time"] == "order_only"
    assert pl.read_parquet(recbole_dataset / "events.parquet")["timestamp"].min().year == 1970
    assert validate_dataset(recbole_dataset) == []


# --- the API ---------------------------------------------------------------------------------


def test_api_reads_the_same_forms_as_the_importer():
    assert epoch_seconds(SECONDS) == SECONDS
    for value in (SECONDS * 1000, SECONDS * 1_000_000, SECONDS * 1_000_000_000,
                  str(SECONDS * 1000), "2026-11-28T17:15:23Z", "2026-11-28T18:15:23+01:00",
                  "2026-11-28T17:15:23", float(SECONDS) * 1000):
        assert epoch_seconds(value) == SECONDS, value
    for bad in (True, "yesterday", float("nan"), 12, "1989-12-31T23:59:59Z", [SECONDS]):
        with pytest.raises(ValueError):
            epoch_seconds(bad)


@pytest.fixture
def api(tmp_path):
    settings = Settings(models_dir=tmp_path / "models", event_store=tmp_path / "ev.sqlite",
                        poll_current_s=0, rate_limit_per_s=1000, rate_limit_burst=1000)
    (tmp_path / "models").mkdir()
    with TestClient(create_app(settings)) as client:
        yield client


def test_post_events_accepts_milliseconds_and_iso_text(api):
    now = time.time()
    forms = {"ms": int(now * 1000), "us": int(now * 1_000_000), "s": now,
             "iso": datetime.fromtimestamp(now, UTC).isoformat(),
             "naive": datetime.fromtimestamp(now, UTC).replace(tzinfo=None).isoformat()}
    events = [{"event_id": f"t-{name}", "user_id": "u1", "item_id": "i1", "type": "click",
               "timestamp": value} for name, value in forms.items()]
    answer = api.post("/events", json={"events": events})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(forms)
    store = api.app.state.context.store
    stored = {e.event_id: e.timestamp for _, e in store.events()}
    for name in forms:
        assert stored[f"t-{name}"] == pytest.approx(now, abs=1e-3), name


@pytest.mark.parametrize("bad", [12, "1985-01-01T00:00:00Z", "next tuesday", True])
def test_post_events_refuses_implausible_times_naming_the_field(api, bad):
    event = {"event_id": "bad-1", "user_id": "u1", "item_id": "i1", "type": "click",
             "timestamp": bad}
    answer = api.post("/events", json={"events": [event]})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][-1] == "timestamp"
