"""The agent's published logs (rate, size, no recursion, never blocking) and its metrics config."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from edgefleet.device.config import LogsConfig, parse_config
from edgefleet.device.errors import ConfigError
from edgefleet.device.logpub import LogPublisher
from edgefleet.device.metrics import OtaTracker
from edgefleet.shared.messages import DeviceLog, Reported, UpdateState, decode

TOPIC = "p/devices/d1/logs"
SHA = "a" * 64


class Link:
    """The agent's broker link as the publisher sees it; optionally failing or logging."""

    def __init__(self, *, connected: bool = True, fail: bool = False) -> None:
        self.connected = threading.Event()
        if connected:
            self.connected.set()
        self.fail = fail
        self.sent: list[tuple[str, bytes, int]] = []
        self.calls = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> object:
        self.calls += 1
        assert not retain
        # What paho or our own code might do while publishing: log. It must not come back.
        logging.getLogger("edgefleet.device._mqtt").warning("while publishing")
        logging.getLogger("paho.mqtt.client").error("paho trouble")
        if self.fail:
            msg = "socket gone"
            raise OSError(msg)
        self.sent.append((topic, payload, qos))
        return None

    def lines(self) -> list[DeviceLog]:
        return [decode(DeviceLog, payload) for _, payload, _ in self.sent]


@pytest.fixture
def logger():
    log = logging.getLogger("edgefleet.device.test_observability")
    log.setLevel(logging.DEBUG)
    log.propagate = True
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    yield log
    root.setLevel(old)


def publisher(link: Link, **settings) -> LogPublisher:
    pub = LogPublisher(
        LogsConfig(**settings), device_id="d1", boot_id="boot1", topic=TOPIC, link=link
    )
    pub.start()
    return pub


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_lines_at_or_above_the_level_are_published_qos0_with_a_sequence(logger):
    link = Link()
    pub = publisher(link)
    try:
        logger.info("not published: below warning")
        logging.getLogger("paho.mqtt.client").error("not published: the MQTT library's own")
        logger.warning("disk at %d%%", 93)
        try:
            raise ValueError("boom")  # noqa: TRY301 - a real traceback for the line
        except ValueError:
            logger.exception("it failed")
        wait_until(lambda: len(link.sent) == 2)
    finally:
        pub.stop()
    first, second = link.lines()
    assert (first.level, first.message, first.logger) == (
        "WARNING",
        "disk at 93%",
        "edgefleet.device.test_observability",
    )
    assert (first.device_id, first.boot_id, first.dropped) == ("d1", "boot1", 0)
    assert second.level == "ERROR"
    assert "Traceback" in second.message
    assert "ValueError: boom" in second.message
    assert second.seq == first.seq + 1
    assert {t for t, _, _ in link.sent} == {TOPIC}
    assert {q for _, _, q in link.sent} == {0}


def test_publishing_never_recurses_and_errors_are_counted_not_logged(logger):
    link = Link(fail=True)
    pub = publisher(link)
    try:
        logger.warning("one")
        wait_until(lambda: link.calls == 1)
        time.sleep(0.2)
    finally:
        pub.stop()
    # The warnings logged inside publish() (ours and paho's) were not queued again.
    assert link.calls == 1
    assert pub.dropped_total == 1
    assert pub.sent == 0


def test_rate_limit_drops_and_the_next_line_says_how_many(logger):
    link = Link(connected=False)  # offline: lines wait in the queue
    pub = publisher(link, per_minute=60, burst=3)
    try:
        for i in range(10):
            logger.warning("flood %d", i)
        assert pub.dropped_total == 7  # burst of 3, then the bucket is empty
        time.sleep(1.1)  # one token back (60 a minute)
        logger.warning("after the flood")
        link.connected.set()
        pub._wake.set()
        wait_until(lambda: len(link.sent) == 4)
    finally:
        pub.stop()
    lines = link.lines()
    assert [ln.message for ln in lines] == ["flood 0", "flood 1", "flood 2", "after the flood"]
    assert lines[-1].dropped == 7
    assert lines[-1].seq - lines[2].seq == 8  # the gap is the dropped lines


def test_offline_queue_is_bounded_and_emit_never_blocks(logger):
    link = Link(connected=False)
    pub = publisher(link, per_minute=6000, burst=1000, queue=5)
    try:
        start = time.perf_counter()
        for i in range(500):
            logger.error("line %d", i)
        elapsed = time.perf_counter() - start
        assert len(pub._queue) == 5
        assert pub.dropped_total == 495
    finally:
        pub.stop()
    assert elapsed < 1.0  # no network, no waiting: 500 lines in well under a second


def test_long_lines_are_cut_to_the_bound(logger):
    link = Link()
    pub = publisher(link, max_line_bytes=200)
    try:
        logger.warning("x" * 10_000)
        logger.warning("é" * 500)  # multi-byte characters are never split
        wait_until(lambda: len(link.sent) == 2)
    finally:
        pub.stop()
    for line in link.lines():
        assert len(line.message.encode()) <= 200
        assert line.message.endswith(" [cut]")


def test_level_off_installs_no_publisher(tmp_path):
    config = parse_config(
        'device_id = "d"\nstate_dir = "s"\n[logs]\nlevel = "off"\n', base=tmp_path
    )
    assert config.logs.level == "off"


def test_config_refuses_a_non_loopback_metrics_address_unless_asked(tmp_path):
    base = 'device_id = "d"\nstate_dir = "s"\n[metrics]\n'
    with pytest.raises(ConfigError, match="allow_remote"):
        parse_config(base + 'listen = "0.0.0.0:9101"\n', base=tmp_path)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_config(base + 'listen = "9101"\n', base=tmp_path)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_config(base + 'listen = "127.0.0.1:70000"\n', base=tmp_path)
    ok = parse_config(base + 'listen = "0.0.0.0:9101"\nallow_remote = true\n', base=tmp_path)
    assert ok.metrics.listen == "0.0.0.0:9101"
    assert parse_config(base + 'listen = "[::1]:9101"\n', base=tmp_path).metrics.listen
    assert parse_config(base + 'listen = "localhost:9101"\n', base=tmp_path).metrics.listen
    default = parse_config('device_id = "d"\nstate_dir = "s"\n', base=tmp_path)
    assert default.metrics.listen is None  # off by default
    assert default.logs.level == "warning"


def report(state: UpdateState, **kw) -> Reported:
    return Reported(device_id="d1", state=state, model_name="m", version=2, sha256=SHA, **kw)


def test_ota_tracker_times_an_update_from_the_first_busy_report():
    ota = OtaTracker()
    ota.report(report(UpdateState.ACTIVE), model_size=100, now=0.0)  # restated at start-up
    assert ota.duration_s is None
    assert ota.outcomes == {}
    ota.report(report(UpdateState.DOWNLOADING), model_size=0, now=10.0)
    ota.report(report(UpdateState.HEALTH_CHECK), model_size=0, now=12.0)
    ota.report(report(UpdateState.ACTIVE), model_size=4096, now=13.5)
    assert (ota.duration_s, ota.size_bytes, ota.outcomes) == (3.5, 4096, {"active": 1})
    # A rollback to a model already on the device downloads nothing.
    ota.report(report(UpdateState.HEALTH_CHECK), model_size=0, now=20.0)
    ota.report(report(UpdateState.ACTIVE), model_size=4096, now=21.0)
    assert (ota.duration_s, ota.size_bytes) == (1.0, 0)
    ota.report(
        report(UpdateState.REJECTED, reason="bad_signature", step="verifying"),
        model_size=0,
        now=30.0,
    )
    assert ota.outcomes == {"active": 2, "rejected": 1}
