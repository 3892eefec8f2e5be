"""Fixtures shared by all tests: a real Mosquitto broker and unique topic prefixes."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.broker import MosquittoBroker
from support.postgres import PostgresCluster


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """One mosquitto for the session; tests isolate themselves with `prefix`."""
    b = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"), persistence=False).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path):
    """A mosquitto of the test's own, which the test may kill and restart."""
    b = MosquittoBroker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session; tests take a database each."""
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(postgres) -> str:
    """The URL of an empty database of the session's PostgreSQL cluster."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return f"eftest-{uuid.uuid4().hex[:10]}"
