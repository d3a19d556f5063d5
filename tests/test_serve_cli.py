"""`recsys serve` refuses what it cannot serve before it loads anything, in one line, exit 2, and
creates nothing on the way; --wait-for-model starts on a folder with no model yet.

These run the CLI in process with the server itself replaced by a tripwire: reaching it means
the command went on to serve where it should have refused.
"""

from __future__ import annotations

import os
import socket

import pytest
import uvicorn

from recsys.cli import main as cli
from serving import json_logs
from serving.settings import get_settings
from tests.processes import free_port


class Started(Exception):
    """The command got as far as serving."""


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    """No real server, no process-wide logging set-up; settings read afresh from the env."""

    def serve(*args, **kwargs):
        raise Started()

    monkeypatch.setattr(uvicorn, "run", serve)
    monkeypatch.setattr(uvicorn.Server, "run", serve)
    monkeypatch.setattr(json_logs, "configure", lambda *args, **kwargs: None)
    for name in [n for n in os.environ if n.startswith("RECSYS_") and n != "RECSYS_CACHE"]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def models(tmp_path):
    """A folder shaped like a models folder (CURRENT names a version folder): enough for every
    check made before the model loads."""
    folder = tmp_path / "models"
    (folder / "v1").mkdir(parents=True)
    (folder / "CURRENT").write_text("v1")
    return folder


def refused(capsys, argv) -> str:
    """The one line `recsys serve` prints when it refuses (exit 2, no traceback)."""
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_missing_models_folder_is_refused_and_not_created(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    line = refused(capsys, ["serve", str(missing)])
    assert str(missing) in line and "no such folder" in line and "--wait-for-model" in line
    assert not missing.exists()


def test_a_dataset_directory_is_refused_and_left_untouched(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name in ("dataset.json", "items.parquet", "events.parquet"):
        (dataset / name).write_text("")
    line = refused(capsys, ["serve", str(dataset)])
    assert "is a dataset directory" in line and "recsys train" in line
    assert entries(dataset) == ["dataset.json", "events.parquet", "items.parquet"]
    # waiting for a model does not make a dataset directory a models folder either
    refused(capsys, ["serve", str(dataset), "--wait-for-model"])
    assert entries(dataset) == ["dataset.json", "events.parquet", "items.parquet"]


def test_a_folder_without_a_model_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(capsys, ["serve", str(empty)])
    assert "holds no model" in line and "CURRENT" in line
    assert entries(empty) == []


def test_current_naming_a_missing_version_is_refused(models, capsys):
    (models / "CURRENT").write_text("v9")
    assert "'v9'" in refused(capsys, ["serve", str(models)])


def test_a_port_in_use_is_refused_before_the_model_loads(models, capsys):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = refused(capsys, ["serve", str(models), "--port", str(port)])
    assert line == f"error: port {port} on 127.0.0.1 is in use"
    assert entries(models) == ["CURRENT", "v1"]  # not even the event store was opened


def test_a_port_out_of_range_is_an_argument_error(models, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["serve", str(models), "--port", "99999"])
    assert exit_.value.code == 2
    assert "argument --port: 99999 is not a port number (1-65535)" in capsys.readouterr().err


@pytest.mark.parametrize("name, value", [("RECSYS_WORKERS", "abc"),
                                         ("RECSYS_LOG_LEVEL", "loud"),
                                         ("RECSYS_LOG_FORMAT", "yaml")])
def test_a_bad_setting_is_named_with_its_value(models, capsys, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    line = refused(capsys, ["serve", str(models)])
    assert line.startswith(f"error: bad setting {name}={value!r}: ")


def test_the_event_store_it_creates_follows_the_umask(models):
    old = os.umask(0o002)
    try:
        with pytest.raises(Started):
            cli(["serve", str(models), "--port", str(free_port())])
    finally:
        os.umask(old)
    assert entries(models) == ["CURRENT", "events.sqlite", "v1"]
    assert (models / "events.sqlite").stat().st_mode & 0o777 == 0o664


def test_wait_for_model_starts_on_a_missing_folder_without_creating_it(tmp_path, monkeypatch):
    import serving.main

    made = []
    monkeypatch.setattr(serving.main, "create_app", lambda settings: made.append(settings))
    missing = tmp_path / "models-later"
    with pytest.raises(Started):
        cli(["serve", str(missing), "--wait-for-model", "--port", str(free_port())])
    assert made[0].wait_for_model and made[0].event_store_path() is None
    assert not missing.exists()


def test_wait_for_model_needs_polling(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECSYS_POLL_CURRENT_S", "0")
    assert "RECSYS_POLL_CURRENT_S" in refused(
        capsys, ["serve", str(tmp_path / "later"), "--wait-for-model"])


def test_waiting_server_is_not_ready_until_a_model_appears(models_dir, tmp_path):
    import shutil
    import time

    from fastapi.testclient import TestClient

    from serving.main import create_app
    from serving.settings import Settings

    later = tmp_path / "models-later"
    settings = Settings(models_dir=later, wait_for_model=True, poll_current_s=0.1)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/ready")
        assert answer.status_code == 503 and "waiting for a model" in answer.json()["reason"]
        assert client.get("/recommendations/anyone").json()["source"] == "popularity"
        assert not later.exists()  # nothing made where the model will go
        shutil.copytree(models_dir, later)
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model was never picked up"
            time.sleep(0.1)
        assert client.get("/ready").json()["model_version"] == "v1"


def test_unreachable_or_unknown_store_is_refused_without_its_password(capsys, models,
                                                                      monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("RECSYS_STORE", f"postgresql://recsys:s3cret-pass@127.0.0.1:{port}/db")
    line = refused(capsys, ["serve", str(models), "--port", str(free_port())])
    assert f"cannot open the store postgresql://recsys:***@127.0.0.1:{port}/db" in line
    assert "s3cret" not in line
    get_settings.cache_clear()
    monkeypatch.setenv("RECSYS_STORE", "mysql://db/x")
    assert "unknown store URL scheme 'mysql'" in refused(capsys, ["serve", str(models), "--port",
                                                                  str(free_port())])
    get_settings.cache_clear()
    monkeypatch.setenv("RECSYS_EVENT_STORE", str(models / "events.sqlite"))
    assert "not both" in refused(capsys, ["serve", str(models), "--port", str(free_port())])
