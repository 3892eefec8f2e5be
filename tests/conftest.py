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


# The longest tests (`make test` lists the 20 slowest), longest first. pytest-xdist hands out
# the first quarter of the run one test per worker in turn, and each worker runs its share in
# order: starting these first spreads them over the workers instead of leaving one of them to
# finish a 90-second test alone at the end of the run.
LONGEST_FIRST = (
    "tests/integration/test_demo.py::test_demo_json_summary_all_active_nothing_lost_accurate",
    "tests/test_packaging.py::test_shared_and_device_wheels_alone_run_the_agent_without_tensorflow",
    "tests/integration/test_shadow.py::test_a_swapped_candidate_is_measured_and_refused",
    "tests/integration/test_agent_trial.py::test_the_documented_trial_runs_as_written",
    "tests/security/test_trust.py::test_a_device_claiming_another_group_is_neither_canary",
    "tests/integration/test_bundle_install.py::test_the_bundle_installs_the_agent_offline",
    "tests/slow/",
)


def _start_rank(item: pytest.Item) -> int:
    for rank, start in enumerate(LONGEST_FIRST):
        if item.nodeid.startswith(start):
            return rank
    return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest tests first (a stable sort: everything else keeps its order)."""
    items.sort(key=_start_rank)
