"""Shared, session-scoped fixtures: small real-row datasets and one trained bundle.

Training on the RecBole fixture (40 users, 341 items) takes a few seconds with the real MiniLM
encoder, so every test that needs a model shares one bundle.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def fp32_vectors():
    """Encode in fp32 on every machine: with bf16 (the default where the CPU has it natively,
    AMX included) the fixture bundle's ranker tipped from 105 trees to 1 (not used). The bf16
    path has its own tests (tests/test_encoder.py)."""
    from recsys.encoder import PRECISION_ENV

    old = os.environ.get(PRECISION_ENV)
    os.environ[PRECISION_ENV] = "fp32"
    yield
    if old is None:
        os.environ.pop(PRECISION_ENV, None)
    else:
        os.environ[PRECISION_ENV] = old


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the embedding cache out of the user's home directory."""
    cache = tmp_path_factory.mktemp("recsys-cache")
    old = os.environ.get("RECSYS_CACHE")
    os.environ["RECSYS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("RECSYS_CACHE", None)
    else:
        os.environ["RECSYS_CACHE"] = old


@pytest.fixture(scope="session")
def recbole_dataset(tmp_path_factory) -> Path:
    from recsys.data.importers import import_dataset

    out = tmp_path_factory.mktemp("data") / "recbole"
    import_dataset("recbole", FIXTURES / "recbole", out)
    return out


@pytest.fixture(scope="session")
def movielens_dataset(tmp_path_factory) -> Path:
    from recsys.data.importers import import_dataset

    out = tmp_path_factory.mktemp("data") / "movielens"
    import_dataset("movielens", FIXTURES / "movielens", out)
    return out


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, recbole_dataset) -> Path:
    """A models directory with one trained bundle (CURRENT) on the RecBole fixture."""
    from training.pipeline import train

    models = tmp_path_factory.mktemp("models")
    train(recbole_dataset, models, version="v1", log=lambda _: None)
    return models


@pytest.fixture(scope="session")
def recommender(models_dir):
    from recsys.recommender import Recommender

    return Recommender.load(models_dir)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/postgres_server.py), stopped at the end;
    skipped only where the system has no PostgreSQL binaries (`make test` installs them)."""
    from tests.postgres_server import TempPostgres, binaries

    if binaries() is None:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (Debian's postgresql "
                    "package; `make test` installs it)")
    server = TempPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh, empty database on the session's server: its URL."""
    import re
    import uuid

    name = re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return postgres_server.create_database(name)
