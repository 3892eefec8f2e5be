"""A real Mosquitto running the config `edgefleet init` renders: mutual TLS, ACL, CRL.

Devices here are raw paho clients using the files of their real bundles (agent.toml, CA,
certificate, key, trusted signing keys). Once the agent can run against a TLS broker, the
"connects and gets its model" and "untrusted key" cases should also run the real agent.
"""

from __future__ import annotations

import contextlib
import getpass
import queue
import signal
import socket
import ssl
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.device.config import AgentConfig, load_config
from edgefleet.device.trust import load_trusted_keys
from edgefleet.host.fleetdir import FleetConfig
from edgefleet.host.provision import _pki as pki
from edgefleet.host.provision import init_fleet, load_signing_key, provision_device, revoke_device
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.chunks import MemoryChunkStore, Reassembler, split_model
from edgefleet.shared.errors import UnknownKeyError
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    Targets,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics
from support.broker import MosquittoBroker, free_port

pytestmark = pytest.mark.integration

PREFIX = "eftls"
T = Topics(PREFIX)
WAIT = 10.0
# Which groups each test device joins; devR is revoked before the broker starts.
DEVICES = {"devA": ["field"], "devB": ["lab"], "devR": ["field"]}


@dataclass
class Fleet:
    config: FleetConfig
    bundles: dict[str, Path]
    broker: MosquittoBroker

    @property
    def port(self) -> int:
        return self.broker.port


def _extract(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("tlsfleet")
    port = free_port()
    config = init_fleet(
        root / "fleet",
        broker_url=f"mqtts://localhost:{port}",
        prefix=PREFIX,
        bind_address="127.0.0.1",
        broker_user=getpass.getuser(),  # see tests/support/broker.py
    )
    bundles = {}
    for device, groups in DEVICES.items():
        bundle = provision_device(config.root, device, groups=groups)
        bundles[device] = _extract(bundle, root / "bundles" / device)
    revoke_device(config.root, "devR")
    broker = MosquittoBroker(root / "mosquitto", port=port)
    broker.start(conf=config.resolve(config.broker_conf))
    yield Fleet(config=config, bundles=bundles, broker=broker)
    broker.stop()


class Client:
    """A paho client over TLS that records every message it receives, in order."""

    def __init__(
        self,
        port: int,
        *,
        ca: Path,
        cert: Path,
        key: Path,
        client_id: str,
        clean_session: bool = True,
        username: str | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.received: list[tuple[str, bytes]] = []
        self._connected = threading.Event()
        self._subacks: queue.Queue[int] = queue.Queue()
        self.rc: object = None
        self.session_present = False
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        self.c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        if username is not None:
            self.c.username_pw_set(username)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.c.on_subscribe = lambda _c, _u, mid, _rc, _p: self._subacks.put(mid)
        self.c.connect("localhost", port)
        self.c.loop_start()
        assert self._connected.wait(WAIT), "no CONNACK"
        assert not self.rc.is_failure, f"connection refused: {self.rc}"

    def _on_connect(self, _c, _u, flags, rc, _props) -> None:
        self.rc = rc
        self.session_present = flags.session_present
        self._connected.set()

    def subscribe(self, *topics: str) -> None:
        for topic in topics:
            _, mid = self.c.subscribe(topic, qos=1)
            assert self._subacks.get(timeout=WAIT) == mid

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT)

    def until(self, topic: str, payload: bytes | None = None) -> list[tuple[str, bytes]]:
        """Wait for a message on ``topic`` (and payload); return everything before it."""
        deadline = time.monotonic() + WAIT
        start = len(self.received)
        while True:
            got = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            self.received.append(got)
            if got[0] == topic and payload in (None, got[1]):
                return self.received[start:-1]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def device_client(fleet: Fleet, device: str, *, client_id: str | None = None, **kwargs) -> Client:
    """Connect as ``device`` with the TLS files its bundle's agent.toml names."""
    cfg: AgentConfig = load_config(fleet.bundles[device] / "agent.toml")
    assert cfg.mqtt.ca_file
    assert cfg.mqtt.cert_file
    assert cfg.mqtt.key_file
    return Client(
        fleet.port,
        ca=cfg.mqtt.ca_file,
        cert=cfg.mqtt.cert_file,
        key=cfg.mqtt.key_file,
        client_id=client_id or device,
        **kwargs,
    )


def host_client(fleet: Fleet, client_id: str = "host-test") -> Client:
    """A host client on the host-only listener (host certificates are refused elsewhere)."""
    ca, cert, key = fleet.config.tls_files()
    port = BrokerUrl.parse(fleet.config.host_url).port
    return Client(port, ca=ca, cert=cert, key=key, client_id=client_id)


def bundle_trust(fleet: Fleet, device: str) -> dict[str, Ed25519PublicKey]:
    """The keys the agent trusts, loaded the agent's way from the bundle's agent.toml."""
    cfg = load_config(fleet.bundles[device] / "agent.toml")
    return load_trusted_keys(cfg.trust.signing_keys)


def make_manifest(model: bytes, *, version: int, devices=(), groups=()) -> Manifest:
    now = int(time.time())
    return Manifest(
        name="tls_test_model",
        version=version,
        created_at=now,
        expires_at=now + 3600,
        targets=Targets(devices=list(devices), groups=list(groups)),
        variants=[ModelVariant.for_bytes(model, accelerator="cpu", chunk_size=64 * 1024)],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=1 / 255, zero_point=-128),
        output=TensorSpec(shape=(1, 10), dtype="int8", scale=1 / 256, zero_point=-128),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=[str(i) for i in range(10)],
    )


# --- the happy path -----------------------------------------------------------------------


def test_provisioned_device_gets_its_signed_model_over_tls(fleet):
    model = bytes(range(256)) * 1000  # 256 kB: four 64 KiB chunks
    manifest = make_manifest(model, version=1, devices=["devA"])
    envelope = sign_manifest(manifest, load_signing_key(fleet.config))
    variant = manifest.variants[0]
    host = host_client(fleet)
    host.publish(T.desired_device("devA"), envelope, retain=True)
    for index, raw in enumerate(split_model(model, chunk_size=variant.chunk_size)):
        host.publish(T.chunk(variant.sha256, index), raw, retain=True)

    dev = device_client(fleet, "devA")
    dev.subscribe(T.desired_device("devA"))
    dev.until(T.desired_device("devA"), envelope)
    accepted = verify_manifest(
        envelope,
        trusted_keys=bundle_trust(fleet, "devA"),
        device_id="devA",
        groups=DEVICES["devA"],
        current_version=0,
        now=time.time(),
    )
    assert accepted.variants[0].sha256 == variant.sha256

    dev.subscribe(T.chunks_filter(variant.sha256))
    store = MemoryChunkStore()
    asm = Reassembler(
        sha256=variant.sha256, size=variant.size, chunk_size=variant.chunk_size, store=store
    )
    while not asm.complete:
        _, raw = dev.messages.get(timeout=WAIT)
        asm.add(raw)
    assert asm.assemble() == model
    for c in (dev, host):
        c.close()


def test_device_reads_its_groups_desired_state_only(fleet):
    host = host_client(fleet)
    host.publish(T.desired_group("field"), b"field-manifest", retain=True)
    host.publish(T.desired_group("lab"), b"lab-manifest", retain=True)
    host.publish(T.desired_device("devA"), b"sentinel-a", retain=True)
    dev = device_client(fleet, "devA")
    dev.subscribe(T.desired_group("lab"), T.desired_group("field"), T.desired_device("devA"))
    before = dev.until(T.desired_device("devA"), b"sentinel-a")
    assert (T.desired_group("field"), b"field-manifest") in before
    assert all(topic != T.desired_group("lab") for topic, _ in before)
    for c in (dev, host):
        c.close()


# --- isolation between devices -------------------------------------------------------------


A_READABLE = {
    T.desired_device("devA"),
    T.desired_group("field"),
    T.predictions_ack("devA"),
    T.images("devA"),
}


def test_device_cannot_read_another_devices_topics(fleet):
    host = host_client(fleet)
    for topic in (T.desired_device("devB"), T.predictions_ack("devB"), T.images("devB")):
        host.publish(topic, b"for-B-only", retain=True)
    host.publish(T.desired_group("lab"), b"for-lab-only", retain=True)
    host.publish(T.desired_device("devA"), b"sentinel-a", retain=True)
    b = device_client(fleet, "devB")
    b.subscribe(T.desired_device("devB"))
    b.until(T.desired_device("devB"), b"for-B-only")  # the messages really exist

    # devA even claims devB's username: the broker takes the name from the certificate.
    a = device_client(fleet, "devA", client_id="devA-snoop", username="devB")
    a.subscribe(
        T.desired_device("devB"),
        T.predictions_ack("devB"),
        T.images("devB"),
        T.desired_group("lab"),
        T.all_status(),
        f"{PREFIX}/#",
        "#",
    )
    a.subscribe(T.desired_device("devA"))
    before = a.until(T.desired_device("devA"), b"sentinel-a")
    # Mosquitto grants every SUBSCRIBE (SUBACK 0x01) and filters on delivery instead.
    assert {topic for topic, _ in before} <= A_READABLE
    assert all(payload != b"for-B-only" for _, payload in before)
    for c in (a, b, host):
        c.close()


def test_device_cannot_publish_as_another_device(fleet):
    host = host_client(fleet)
    host.subscribe(f"{PREFIX}/#")
    a = device_client(fleet, "devA")
    forged = [
        T.status("devB"),
        T.reported("devB"),
        T.predictions("devB"),
        T.chunk_request("devB"),
        T.predictions_ack("devA"),  # acks come from the host only
        T.desired_device("devA"),  # a device cannot choose its own model
        T.desired_group("field"),
        T.chunk("0" * 64, 0),
    ]
    for topic in forged:
        a.publish(topic, b"forged", retain=True)
    a.publish(T.status("devA"), b"sentinel", retain=True)
    before = host.until(T.status("devA"), b"sentinel")
    assert all(payload != b"forged" for _, payload in before), before
    # Its own write topics do arrive.
    for topic in (T.reported("devA"), T.predictions("devA"), T.chunk_request("devA")):
        a.publish(topic, b"own")
        host.until(topic, b"own")
    for c in (a, host):
        c.close()


def test_session_takeover_by_client_id_leaks_nothing(fleet):
    b = device_client(fleet, "devB", client_id="devB-persistent", clean_session=False)
    b.subscribe(T.desired_device("devB"))
    b.close()
    host = host_client(fleet)
    host.publish(T.desired_device("devB"), b"queued-for-B")  # queued in devB's session
    host.publish(T.desired_device("devA"), b"sentinel-a", retain=True)
    # devA asks for devB's client id: the device listener replaces it with devA's CN
    # (use_username_as_clientid), so devA never sees devB's session
    # (tests/security/test_trust.py covers the takeover in full).
    a = device_client(fleet, "devA", client_id="devB-persistent", clean_session=False)
    assert not a.session_present
    a.subscribe(T.desired_device("devA"))
    before = a.until(T.desired_device("devA"), b"sentinel-a")
    assert all(payload != b"queued-for-B" for _, payload in before)
    for c in (a, host):
        c.close()


# --- who may connect at all -------------------------------------------------------------------


def _mqtt_connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def tls_attempt(port: int, *, ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    """Do a TLS handshake and an MQTT CONNECT; return 'connected' or the error."""
    with _tls_socket(port, ca=ca, cert=cert, key=key) as tls:
        try:
            tls.sendall(_mqtt_connect_packet("probe"))
            reply = tls.recv(4)
        except (ssl.SSLError, ConnectionError) as exc:
            return str(exc)
    return "connected" if reply[:1] == b"\x20" and reply[3:4] == b"\x00" else f"reply {reply!r}"


def tls_refusal(port: int, *, ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    """Handshake, send nothing and read: return the TLS alert the broker sends.

    With TLS 1.3 the server checks the client certificate after the client's side of the
    handshake is done; sending nothing avoids a reset that would swallow the alert.
    """
    with _tls_socket(port, ca=ca, cert=cert, key=key) as tls:
        try:
            data = tls.recv(4)
        except TimeoutError:
            return "no alert: the broker accepted the certificate"
        except (ssl.SSLError, ConnectionError) as exc:
            return str(exc)
    return f"closed without an alert ({data!r})"


@contextlib.contextmanager
def _tls_socket(port: int, *, ca: Path, cert: Path | None, key: Path | None):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        yield tls


def _files(bundle: Path) -> dict[str, Path]:
    return {"ca": bundle / "ca.crt", "cert": bundle / "device.crt", "key": bundle / "device.key"}


def _write_client(
    tmp: Path, ca: pki.CertificateAuthority, name: str, **kwargs
) -> tuple[Path, Path]:
    key = pki.new_tls_key()
    cert = pki.issue_certificate(ca, common_name=name, public_key=key.public_key(), **kwargs)
    (tmp / f"{name}.crt").write_bytes(pki.cert_pem(cert))
    (tmp / f"{name}.key").write_bytes(pki.key_pem(key))
    return tmp / f"{name}.crt", tmp / f"{name}.key"


def test_provisioned_device_completes_the_handshake(fleet):
    assert tls_attempt(fleet.port, **_files(fleet.bundles["devA"])) == "connected"


def _fleet_ca(fleet: Fleet) -> pki.CertificateAuthority:
    return pki.load_ca(
        cert_path=fleet.config.resolve(fleet.config.ca_file),
        key_path=fleet.config.resolve(fleet.config.ca_key_file),
    )


def test_certificate_made_like_the_rejected_ones_but_valid_is_accepted(fleet, tmp_path):
    # The control for the refusals below: same helper, fleet CA, valid dates.
    cert, key = _write_client(tmp_path, _fleet_ca(fleet), "devA")
    result = tls_attempt(fleet.port, ca=fleet.bundles["devA"] / "ca.crt", cert=cert, key=key)
    assert result == "connected"


def test_certificate_from_another_ca_is_refused(fleet, tmp_path):
    rogue = pki.create_ca(name=fleet.config.name)  # same name, different key
    cert, key = _write_client(tmp_path, rogue, "devA")
    result = tls_refusal(fleet.port, ca=fleet.bundles["devA"] / "ca.crt", cert=cert, key=key)
    assert "unknown ca" in result


def test_expired_certificate_is_refused(fleet, tmp_path):
    ca = _fleet_ca(fleet)
    now = pki.utcnow()
    cert, key = _write_client(
        tmp_path, ca, "devA", not_before=now - 10 * pki._DAY, not_after=now - pki._DAY
    )
    result = tls_refusal(fleet.port, ca=fleet.bundles["devA"] / "ca.crt", cert=cert, key=key)
    assert "certificate expired" in result


def test_revoked_certificate_is_refused(fleet):
    assert "certificate revoked" in tls_refusal(fleet.port, **_files(fleet.bundles["devR"]))


def test_client_without_certificate_is_refused(fleet):
    result = tls_refusal(fleet.port, ca=fleet.bundles["devA"] / "ca.crt")
    assert "certificate required" in result


def test_plain_mqtt_without_tls_is_refused(fleet):
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=WAIT) as s:
        s.sendall(_mqtt_connect_packet("anonymous"))
        try:
            reply = s.recv(4)
        except ConnectionError:
            reply = b""
    assert not reply.startswith(b"\x20"), "a CONNACK over plain TCP"


def test_revocation_takes_effect_on_broker_reload(fleet, tmp_path):
    bundle = provision_device(fleet.config.root, "devLate", groups=["field"])
    files = _files(_extract(bundle, tmp_path / "late"))
    fleet.broker.proc.send_signal(signal.SIGHUP)  # picks up the new ACL block
    assert tls_attempt(fleet.port, **files) == "connected"
    revoke_device(fleet.config.root, "devLate")
    fleet.broker.proc.send_signal(signal.SIGHUP)
    # The reload is asynchronous: poll until the broker refuses (or give up and fail).
    deadline = time.monotonic() + WAIT
    while (result := tls_attempt(fleet.port, **files)) == "connected":
        assert time.monotonic() < deadline, "revoked certificate still accepted after SIGHUP"
        time.sleep(0.1)
    assert "certificate revoked" in tls_refusal(fleet.port, **files), result


# --- model signing trust -------------------------------------------------------------------


def test_model_signed_with_an_untrusted_key_is_rejected(fleet):
    model = b"\x00" * 1000
    manifest = make_manifest(model, version=2, devices=["devA"])
    rogue_envelope = sign_manifest(manifest, Ed25519PrivateKey.generate())
    host = host_client(fleet)
    host.publish(T.desired_device("devA"), rogue_envelope, retain=True)
    dev = device_client(fleet, "devA")
    dev.subscribe(T.desired_device("devA"))
    dev.until(T.desired_device("devA"), rogue_envelope)
    trust = bundle_trust(fleet, "devA")
    assert list(trust) == [fleet.config.signing_key_id]  # the device does trust a key
    with pytest.raises(UnknownKeyError):
        verify_manifest(
            rogue_envelope,
            trusted_keys=trust,
            device_id="devA",
            groups=DEVICES["devA"],
            current_version=0,
            now=time.time(),
        )
    for c in (dev, host):
        c.close()
