"""When the agent sends its status before the next heartbeat (device/status.py)."""

from __future__ import annotations

from edgefleet.device.status import Freshness, status_key
from edgefleet.shared.messages import Status


def _status(*, version: int | None = 1, outbox: int = 0, safe_mode: bool = False) -> Status:
    return Status(
        device_id="pi-1",
        online=True,
        model_name="gpr" if version is not None else None,
        model_version=version,
        outbox_depth=outbox,
        safe_mode=safe_mode,
        ts=0.0,
    )


def _key(*, version: int | None = 1, outbox: int = 0, safe_mode: bool = False):
    name = "gpr" if version is not None else None
    return status_key(name, version, safe_mode=safe_mode, outbox_depth=outbox)


def test_nothing_changed_means_no_early_status():
    fresh = Freshness(min_interval_s=2.0)
    fresh.sent(_status(), now=100.0)
    assert not fresh.due(_key(), now=500.0)


def test_a_new_model_version_is_sent_at_once_after_the_interval():
    fresh = Freshness(min_interval_s=2.0)
    fresh.sent(_status(version=1), now=100.0)
    assert not fresh.due(_key(version=2), now=101.0)  # rate limit
    assert fresh.due(_key(version=2), now=102.0)
    fresh.sent(_status(version=2), now=102.0)
    assert not fresh.due(_key(version=2), now=110.0)


def test_outbox_depth_counts_by_power_of_two_buckets():
    fresh = Freshness(min_interval_s=0.0)
    fresh.sent(_status(outbox=5), now=0.0)
    assert not fresh.due(_key(outbox=6), now=1.0)  # 4-7: same bucket
    assert fresh.due(_key(outbox=8), now=1.0)
    assert fresh.due(_key(outbox=0), now=1.0)  # drained: the operator wants to see 0


def test_safe_mode_and_model_loss_are_changes():
    fresh = Freshness(min_interval_s=0.0)
    fresh.sent(_status(), now=0.0)
    assert fresh.due(_key(safe_mode=True), now=0.0)
    assert fresh.due(_key(version=None), now=0.0)


def test_the_first_status_is_always_due():
    assert Freshness().due(_key(), now=0.0)
