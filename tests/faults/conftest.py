"""Fixtures of the fault-injection suite: the tiny MNIST model and a device rig."""

from __future__ import annotations

import uuid

import pytest

from support.agent import ModelBundle, shared_mnist_model
from support.faults import Rig


@pytest.fixture(scope="session")
def mnist_bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


@pytest.fixture
def rig(tmp_path, broker, prefix):
    r = Rig(tmp_path, broker.url, prefix)
    yield r
    r.close()


@pytest.fixture(scope="module")
def module_rig(tmp_path_factory, broker, mnist_bundle):
    """One long-lived agent per module, serving v1 of the tiny model."""
    r = Rig(tmp_path_factory.mktemp("rig"), broker.url, f"effault-{uuid.uuid4().hex[:8]}")
    r.start()
    r.push(mnist_bundle, 1)
    r.wait_report(state="active", version=1)
    yield r
    r.close()
