"""Prometheus endpoints in tests: GET /metrics, parse it with the official parser, look up."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """GET /metrics and parse it: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over every label set that includes ``labels``."""
    return sum(
        v for (n, lbls), v in samples.items() if n == name and set(labels.items()) <= set(lbls)
    )


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def scrape_until(
    port: int, ready: Callable[[Samples], object], timeout: float = 60.0, what: str = "condition"
) -> Samples:
    """Scrape ``port`` until ``ready(samples)`` holds; return those samples."""

    def attempt() -> Samples | None:
        samples = scrape(port)
        return samples if ready(samples) else None

    return wait_for(attempt, timeout, what)
