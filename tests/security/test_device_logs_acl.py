"""Device logs on a real TLS fleet: a device publishes on its own logs topic only.

Mosquitto runs the config and ACL `edgefleet init` renders. A real agent's WARNING reaches
the host over TLS on its own ``logs`` topic; a raw client holding another device's real
certificate cannot put lines on that topic (the broker drops the forged publish), while its
own topic works.
"""

from __future__ import annotations

import time

import pytest

from edgefleet.host.fleet import close_fleet, open_fleet
from edgefleet.shared.messages import DeviceLog, decode

try:  # the helpers of the trust test: one TLS fleet recipe for the security tests
    from test_trust import RawDevice, make_fleet, start_agent
except ImportError:  # pragma: no cover - run from another rootdir
    from security.test_trust import RawDevice, make_fleet, start_agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _line(device: str, seq: int, message: str) -> dict:
    return DeviceLog(
        device_id=device,
        boot_id="forged",
        seq=seq,
        ts=time.time(),
        level="ERROR",
        logger="edgefleet.device.agent",
        message=message,
    ).model_dump()


def _logs_until(host, topic: str, needle: str, seconds: float = 30.0) -> list[tuple[str, str]]:
    """(topic, message) of every log line received until one on ``topic`` contains ``needle``."""
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = host.conn.next_message(left)
        if msg is None or not msg.topic.endswith("/logs"):
            continue
        line = decode(DeviceLog, msg.payload)
        seen.append((msg.topic, line.message))
        if msg.topic == topic and needle in line.message:
            return seen
    pytest.fail(f"no line with {needle!r} on {topic}; got {seen}")


def test_a_device_cannot_publish_on_another_devices_logs_topic(tmp_path):
    config, bundles, broker = make_fleet(tmp_path, {"devA": ["g"], "devB": ["g"]})
    agent = start_agent(bundles["devA"], tmp_path / "home" / "devA")
    host = open_fleet(broker=None, fleet_dir=config.root, state_dir=tmp_path / "host")
    raw = None
    try:
        t = host.topics
        host.conn.subscribe(t.all_logs(), t.all_status())
        deadline = time.monotonic() + 30
        while (msg := host.conn.next_message(1.0)) is None or msg.topic != t.status("devA"):
            assert time.monotonic() < deadline, "devA never published its status"
        # The real agent over TLS: an unreadable ack makes it log a WARNING, published.
        host.conn.publish(t.predictions_ack("devA"), b"not an ack")
        real = _logs_until(host, t.logs("devA"), "ignoring an unreadable ack")
        assert real[-1][0] == t.logs("devA")

        raw = RawDevice(bundles["devB"], broker.port, client_id="devB")
        raw.publish(t.logs("devA"), _line("devA", 1, "forged by devB"))
        raw.publish(t.logs("devB"), _line("devB", 2, "devB's own sentinel"))
        seen = _logs_until(host, t.logs("devB"), "devB's own sentinel")
        assert all("forged" not in message for _, message in seen), seen
    finally:
        if raw is not None:
            raw.close()
        close_fleet(host)
        agent.stop()
        broker.stop()
