"""Attacks 4 and 6 of issue 16: the host trusts provisioning, not claims; client ids are bound.

A real TLS fleet on loopback: mosquitto running the config `edgefleet init` renders, a real
agent, and raw paho clients holding real device certificates that lie about themselves.
"""

from __future__ import annotations

import getpass
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet.host.demo._agents import demo_agent_config, extract_bundle
from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    MAX_VERSION_STEP,
    FleetView,
    PushPlan,
    choose_version,
    close_fleet,
    device_rows,
    format_warnings,
    load_model,
    open_fleet,
    push,
)
from edgefleet.host.fleetdir import DeviceRecord, Registry, dump_toml
from edgefleet.host.provision import init_fleet, provision_device
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.topics import Topics
from support.agent import AgentProcess, shared_mnist_model
from support.broker import MosquittoBroker, free_port

HUGE = 2**63 - 2
WAIT = 10.0


# --- a TLS fleet ---------------------------------------------------------------------------


def make_fleet(root: Path, devices: dict[str, list[str]]):
    port = free_port()
    config = init_fleet(
        root / "fleet",
        broker_url=f"mqtts://localhost:{port}",
        host_broker_url=f"mqtts://localhost:{free_port()}",
        prefix="efsec",
        bind_address="127.0.0.1",
        broker_user=getpass.getuser(),
    )
    bundles = {}
    for device, groups in devices.items():
        bundle = provision_device(config.root, device, groups=groups)
        bundles[device] = extract_bundle(bundle, root / "bundles" / device)
    broker = MosquittoBroker(root / "mosquitto", port=port)
    broker.start(conf=config.resolve(config.broker_conf))
    return config, bundles, broker


def start_agent(bundle: Path, home: Path) -> AgentProcess:
    settings = demo_agent_config(bundle, home=home, url="", tls=True, mqtt311=False)
    settings["status"] = {"heartbeat_s": 0.5}
    (bundle / "agent.toml").write_text(dump_toml(settings))
    return AgentProcess(bundle / "agent.toml")


class RawDevice:
    """A paho client with a device's real certificate that says whatever the test wants."""

    def __init__(self, bundle: Path, port: int, *, client_id: str) -> None:
        self.disconnects: list[object] = []
        self.connected = threading.Event()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.c.tls_set(
            ca_certs=str(bundle / "ca.crt"),
            certfile=str(bundle / "device.crt"),
            keyfile=str(bundle / "device.key"),
        )
        self.c.on_connect = lambda *_a: self.connected.set()
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(rc)
        self.c.connect("localhost", port)
        self.c.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"

    def publish(self, topic: str, payload: dict, *, retain: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.c.publish(topic, data, qos=1, retain=retain).wait_for_publish(WAIT)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def status(device: str, *, groups: list[str], version: int | None = None) -> dict:
    return {
        "device_id": device,
        "online": True,
        "ts": time.time(),
        "groups": groups,
        "model_name": "mnist_tiny" if version else None,
        "model_version": version,
    }


# --- attack 4: group claims and version claims ---------------------------------------------


@pytest.fixture(scope="module")
def claims_fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    # "aaa-liar" sorts first: with group membership taken from status claims it would be
    # the canary of `push --group beta --canary 1`.
    config, bundles, broker = make_fleet(
        root, {"aaa-liar": ["alpha"], "beta-1": ["beta"], "beta-big": ["beta"]}
    )
    agent = start_agent(bundles["beta-1"], root / "home" / "beta-1")
    yield config, bundles, broker, root
    agent.stop()
    broker.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_device_claiming_another_group_is_neither_canary_nor_able_to_abort(
    claims_fleet, tmp_path, tmp_path_factory
):
    config, bundles, broker, _ = claims_fleet
    model = shared_mnist_model(tmp_path_factory)
    t = Topics(config.prefix)
    liar = RawDevice(bundles["aaa-liar"], broker.port, client_id="aaa-liar")
    liar.publish(t.status("aaa-liar"), status("aaa-liar", groups=["alpha", "beta"]), retain=True)
    stop = threading.Event()

    def refuse_everything() -> None:  # "rejected" for whatever rollout is running
        while not stop.is_set():
            report = {
                "device_id": "aaa-liar",
                "state": "rejected",
                "reason": "bad_signature",
                "ts": time.time(),
            }
            liar.publish(t.reported("aaa-liar"), report)
            stop.wait(0.2)

    threading.Thread(target=refuse_everything, daemon=True).start()
    fleet = open_fleet(broker=None, fleet_dir=config.root, state_dir=tmp_path, need_key=True)
    try:
        fleet.observe()
        deadline = time.monotonic() + 30
        while not (s := fleet.view.statuses.get("beta-1")) or not s.online:
            assert time.monotonic() < deadline, "beta-1 never came online"
            fleet.pump(0.5)
        assert fleet.view.claimed_groups["aaa-liar"] == {"alpha", "beta"}
        assert fleet.view.members("beta") == ["beta-1", "beta-big"]
        # beta-big is a raw client that never activates: the push waits out its full time,
        # which only has to cover beta-1's canary (a few seconds; 30 s under load)
        result = push(fleet, load_model(model.path), PushPlan(group="beta", canary=1, wait=30.0))
        assert result.aborted is None or "aaa-liar" not in result.aborted, result.aborted
        assert "aaa-liar" not in result.targets
        progress = {p.device_id: p for p in result.progress}
        assert progress["beta-1"].phase == "active", progress["beta-1"].describe()
        # fleet status: the claim shows up as a warning, never as a membership
        rows = {r.device_id: r for r in device_rows(fleet)}
        assert rows["aaa-liar"].groups == ("alpha",)
        assert rows["aaa-liar"].claimed_groups == ("alpha", "beta")
        assert rows["aaa-liar"].groups_verified
        text = format_warnings(list(rows.values()), verified=True)
        assert "aaa-liar claims groups ['alpha', 'beta'] but is provisioned in ['alpha']" in text
        assert rows["aaa-liar"].as_json()["warnings"]
    finally:
        stop.set()
        close_fleet(fleet)
        liar.publish(t.status("aaa-liar"), status("aaa-liar", groups=["alpha"]), retain=True)
        liar.close()


@pytest.mark.integration
def test_a_device_claiming_version_2_63_minus_2_does_not_move_the_signed_version(
    claims_fleet, tmp_path, tmp_path_factory
):
    config, bundles, broker, _ = claims_fleet
    model = shared_mnist_model(tmp_path_factory)
    t = Topics(config.prefix)
    big = RawDevice(bundles["beta-big"], broker.port, client_id="beta-big")
    claim = status("beta-big", groups=["beta"], version=HUGE)
    big.publish(t.status("beta-big"), claim, retain=True)
    report = {"device_id": "beta-big", "state": "active", "active_version": HUGE}
    big.publish(t.reported("beta-big"), report, retain=True)
    fleet = open_fleet(broker=None, fleet_dir=config.root, state_dir=tmp_path, need_key=True)
    try:
        first = push(fleet, load_model(model.path), PushPlan(group="beta"))
        second = push(fleet, load_model(model.path), PushPlan(group="beta"))
        assert "beta-big" in first.targets  # a real member: its claim is seen, and bounded
        # beta-1 really runs v1 (the test above, if it ran): a claim within the bound counts
        assert first.version in (1, 2)
        assert second.version == first.version + 1
        assert fleet.registry.max_version() == second.version  # the registry is the truth
    finally:
        close_fleet(fleet)
        big.publish(t.status("beta-big"), status("beta-big", groups=["beta"]), retain=True)
        big.c.publish(t.reported("beta-big"), b"", qos=1, retain=True).wait_for_publish(WAIT)
        big.close()


def test_version_rule_believes_claims_only_within_a_step_of_what_was_signed():
    assert choose_version(0, {"a": HUGE}, None).version == 1
    assert choose_version(0, {"a": HUGE}, None).ignored == {"a": HUGE}
    # a host that lost its state dir still signs above what its devices run
    assert choose_version(0, {"a": 7, "b": MAX_VERSION_STEP}, None).version == MAX_VERSION_STEP + 1
    assert choose_version(40, {"a": 3}, None).version == 41
    assert choose_version(40, {"a": 3}, 100).version == 100
    with pytest.raises(FleetError, match="not above version 7"):
        choose_version(0, {"a": 7}, 7)
    with pytest.raises(FleetError, match="outside"):
        choose_version(0, {}, 2**63)
    with pytest.raises(FleetError, match="above the protocol's limit"):
        choose_version(2**63 - 1, {}, None)
    warnings = choose_version(5, {"liar": HUGE}, None).warnings(5)
    assert "liar claims model version" in warnings[0]


# --- attack 6: client-id takeover ----------------------------------------------------------


@pytest.mark.integration
def test_a_device_certificate_cannot_take_another_devices_or_the_ingest_workers_client_id(
    tmp_path,
):
    config, bundles, broker = make_fleet(tmp_path, {"devA": ["g"], "devB": ["g"]})
    try:
        victim = RawDevice(bundles["devB"], broker.port, client_id="devB")
        ingest_id = "edgefleet-ingest-efsec-1"
        host = open_fleet(
            broker=None,
            fleet_dir=config.root,
            state_dir=tmp_path / "host",
            client_id=ingest_id,
            persistent=True,
        )
        attackers = []
        for _ in range(3):
            for stolen in ("devB", ingest_id, config.host_identity):
                attackers.append(RawDevice(bundles["devA"], broker.port, client_id=stolen))
                time.sleep(0.2)
        time.sleep(1.0)
        assert victim.disconnects == [], "devA's certificate kicked devB off"
        assert not host.conn.disconnected.is_set(), "devA's certificate kicked the ingest worker"
        log = broker.log_path.read_text()
        assert "as devB (" in log
        assert f"as {ingest_id} (" in log
        # the host listener refuses device certificates at the TLS handshake
        host_port = BrokerUrl.parse(config.host_url).port
        with pytest.raises((OSError, AssertionError)):
            RawDevice(bundles["devA"], host_port, client_id="edgefleet-host-x").close()
        for client in attackers:
            client.close()
        victim.close()
        close_fleet(host)
    finally:
        broker.stop()


def test_membership_comes_from_provisioning_and_claims_only_without_a_fleet_dir():
    registry = Registry(
        devices={
            "a": DeviceRecord(device_id="a", groups=["alpha"], serial=1, provisioned_at=0),
            "b": DeviceRecord(device_id="b", groups=["beta"], serial=2, provisioned_at=0),
            "r": DeviceRecord(
                device_id="r", groups=["beta"], serial=3, provisioned_at=0, revoked_at=5
            ),
        }
    )
    view = FleetView(claimed_groups={"a": {"alpha", "beta"}, "x": {"beta"}})
    assert view.members("beta") == ["a", "x"]  # no fleet dir: unverified claims
    view.load_provisioned(registry)
    assert view.provisioned
    assert view.members("beta") == ["b"]  # not the liar, not the stranger, not the revoked
    assert view.revoked == {"r"}
