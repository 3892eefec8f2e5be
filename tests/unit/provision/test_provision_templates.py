"""deploy/ is the one home of the templates, every file in it is packaged, and the rendered
ACL agrees with the protocol's topic scheme (Mosquitto runs it in tests/integration)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from edgefleet.host.fleetdir import DeviceRecord, load_fleet_config
from edgefleet.host.provision import init_fleet
from edgefleet.host.provision._brokerconf import PACKAGED_TEMPLATES, render_acl
from edgefleet.shared.topics import Topics

REPO = Path(__file__).resolve().parents[3]


def test_every_deploy_file_is_packaged():
    shipped = {p.relative_to(REPO / "deploy").as_posix() for p in (REPO / "deploy").rglob("*")}
    assert {p for p in shipped if (REPO / "deploy" / p).is_file()} == set(PACKAGED_TEMPLATES)


def _acl_rules(acl: str) -> list[tuple[str, str, str]]:
    rule = re.compile(r"(pattern|topic) (read|write|readwrite) (\S+)")
    return [(m[1], m[2], m[3]) for line in acl.splitlines() if (m := rule.fullmatch(line))]


def test_acl_patterns_are_exactly_the_protocol_topics_of_a_device(tmp_path):
    init_fleet(tmp_path / "f", prefix="acme/prod")
    config = load_fleet_config(tmp_path / "f")
    acl = render_acl(
        config, [DeviceRecord(device_id="d1", groups=["g1"], serial=1, provisioned_at=0)]
    )
    t = Topics("acme/prod")
    patterns = {
        (access, topic.replace("%u", "d1"))
        for kind, access, topic in _acl_rules(acl)
        if kind == "pattern"
    }
    assert patterns == {
        ("read", t.desired_device("d1")),
        ("read", t.predictions_ack("d1")),
        ("read", t.images("d1")),
        ("write", t.status("d1")),
        ("write", t.reported("d1")),
        ("write", t.predictions("d1")),
        ("write", t.chunk_request("d1")),
        ("write", t.logs("d1")),
        ("write", t.thumbnails("d1")),
        ("read", t.shadow_device("d1")),
        ("write", t.shadow_report("d1")),
    }
    block = acl[acl.index("user d1\n") :].split("\n\n")[0]
    assert _acl_rules(block) == [
        ("topic", "read", "acme/prod/models/+/chunks/+"),
        ("topic", "read", t.desired_group("g1")),
        ("topic", "read", t.shadow_group("g1")),
    ]
    assert t.parse(t.chunk("a" * 64, 3)).kind == "chunk"
    host_block = acl[acl.index(f"user {config.host_identity}\n") :].split("\n\n")[0]
    assert _acl_rules(host_block) == [("topic", "readwrite", "acme/prod/#")]


def test_rendered_mosquitto_conf_locks_the_broker_down(tmp_path):
    init_fleet(tmp_path / "f", broker_url="mqtts://b.example:8883", bind_address="10.1.2.3")
    conf = (tmp_path / "f/broker/mosquitto.conf").read_text()
    lines = {line for line in conf.splitlines() if line and not line.startswith("#")}
    for required in (
        "allow_anonymous false",
        "per_listener_settings false",
        "require_certificate true",
        "use_identity_as_username true",
        "listener 8883 10.1.2.3",
        f"crlfile {tmp_path / 'f/ca/crl.pem'}",
        f"acl_file {tmp_path / 'f/broker/acl'}",
    ):
        assert required in lines, required
    listeners = {"listener 8883 10.1.2.3", "listener 8884 10.1.2.3"}  # devices, host processes
    assert not any(line.startswith("listener") for line in lines - listeners)
    assert "$" not in conf.replace("$$", ""), "an unrendered template variable"


def test_install_script_passes_shellcheck():
    result = subprocess.run(
        ["shellcheck", "--shell=sh", str(REPO / "deploy/install-device.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
