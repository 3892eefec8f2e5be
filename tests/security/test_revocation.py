"""Attack 5 of issue 16: a revoked device stays connected after revoke + SIGHUP.

Two real agents on a real TLS fleet. `edgefleet revoke DEVICE` followed by the documented
`--apply` (a broker restart) ends the revoked agent's live session for good, while the other
agent reconnects by itself and keeps publishing; retained state survives the restart.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from edgefleet.host.fleet import close_fleet, device_rows, format_table, open_fleet
from edgefleet.host.provision import revoke_device
from edgefleet.shared.messages import Status, decode
from edgefleet.shared.topics import Topics

try:  # the helpers of the trust test: one TLS fleet recipe for the security tests
    from test_trust import make_fleet, start_agent
except ImportError:  # pragma: no cover - run from another rootdir
    from security.test_trust import make_fleet, start_agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _live_status(fleet, device: str, seconds: float) -> bool:
    """True if ``device`` publishes a live (not retained) online status within ``seconds``."""
    deadline = time.monotonic() + seconds
    t = fleet.topics
    while (left := deadline - time.monotonic()) > 0:
        msg = fleet.conn.next_message(left)
        if msg is None or msg.retain or msg.topic != t.status(device) or not msg.payload:
            continue
        if decode(Status, msg.payload).online:
            return True
    return False


def _edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from edgefleet.host.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_revoke_apply_ends_the_live_session_and_the_other_device_comes_back(tmp_path):
    config, bundles, broker = make_fleet(tmp_path, {"keep": ["g"], "gone": ["g"]})
    agents = {d: start_agent(bundles[d], tmp_path / "home" / d) for d in ("keep", "gone")}
    new_pid = None
    host = open_fleet(broker=None, fleet_dir=config.root, state_dir=tmp_path / "host")
    try:
        host.conn.subscribe(host.topics.all_status())
        for device in ("keep", "gone"):
            assert _live_status(host, device, 30), f"{device} never came online"
        sentinel = Topics(config.prefix).desired_group("g")
        host.conn.wait_published([host.conn.publish(sentinel, b"retained-sentinel", retain=True)])

        # The old procedure: revoke, then reload. The live session goes on.
        assert broker.proc is not None
        revoke_device(config.root, "gone")
        os.kill(broker.proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert _live_status(host, "gone", 5), "expected the pre-existing session to survive SIGHUP"
        close_fleet(host)

        # The documented procedure: --apply restarts the broker.
        out = _edgefleet(
            "revoke", "--apply", "--dir", str(config.root), "--broker-pid", str(broker.proc.pid)
        )
        assert out.returncode == 0, out.stdout + out.stderr
        found = re.search(r"new pid (\d+)", out.stdout)
        assert found, out.stdout
        new_pid = int(found.group(1))
        broker.proc.wait(timeout=5)  # the old broker, our child, exited (SIGTERM)

        host = open_fleet(broker=None, fleet_dir=config.root, state_dir=tmp_path / "host")
        host.conn.subscribe(sentinel)
        retained = {m.topic: m.payload for m in host.conn.drain_retained()}
        assert retained.get(sentinel) == b"retained-sentinel", "retained state lost"
        host.conn.subscribe(host.topics.all_status())
        assert _live_status(host, "keep", 30), "the other device did not come back"
        assert not _live_status(host, "gone", 6), "the revoked device is still connected"
        log = (config.root / "broker" / "mosquitto.log").read_text()
        assert "certificate verify failed" in log, "the revoked agent should be refused"

        # fleet status marks it from the registry
        host.observe()
        rows = {r.device_id: r for r in device_rows(host)}
        assert rows["gone"].revoked
        assert "REVOKED" in format_table(list(rows.values()))
        assert not rows["keep"].revoked
    finally:
        close_fleet(host)
        for agent in agents.values():
            agent.stop()
        if new_pid is not None:
            os.kill(new_pid, signal.SIGTERM)
        broker.stop()


def test_revoke_without_apply_says_exactly_how_to_apply_it(tmp_path):
    config, _bundles, broker = make_fleet(tmp_path, {"d1": ["g"]})
    broker.stop()
    out = _edgefleet("revoke", "d1", "--dir", str(config.root))
    assert out.returncode == 0, out.stderr
    assert "only refuses NEW connections" in out.stdout
    assert f"edgefleet revoke --apply --fleet {config.root} --systemd-unit mosquitto" in out.stdout
    assert "--broker-pid PID" in out.stdout
    bad = _edgefleet("revoke", "--apply", "--dir", str(config.root))
    assert bad.returncode == 1
    assert "--systemd-unit" in bad.stdout
