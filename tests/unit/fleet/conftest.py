"""Fixtures of the fleet unit tests that run on the in-memory fake broker."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.host.fleet import Fleet, open_registry
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker


@pytest.fixture
def broker() -> FakeBroker:
    """A fresh in-memory broker (``tests/support/fakebroker.py``)."""
    return FakeBroker()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    """The fleet's signing key."""
    return Ed25519PrivateKey.generate()


@pytest.fixture
def host(broker, key, tmp_path):
    """A fleet on the fake broker, as ``open_fleet`` builds it over mosquitto."""
    registry = open_registry(tmp_path / "state")
    fleet = Fleet(
        conn=broker.connect("host"), topics=Topics("edgefleet"), registry=registry, signing_key=key
    )
    yield fleet
    registry.close()
