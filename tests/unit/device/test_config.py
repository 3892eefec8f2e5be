import re
from pathlib import Path

import pytest

from edgefleet.device.config import AgentConfig, MqttConfig, load_config, parse_config
from edgefleet.device.errors import ConfigError

FULL = """
device_id = "pi-001"
groups = ["field"]
state_dir = "state"

[mqtt]
url = "mqtts://broker.example:8883"
prefix = "edgefleet"
keepalive_s = 30
ca_file = "ca.crt"
cert_file = "device.crt"
key_file = "device.key"

[trust]
signing_keys = ["signing-keys/"]
max_model_bytes = 67108864

[runtime]
backend = "auto"
num_threads = 2
edgetpu = "usb"

[inference]
watch_dir = "/var/lib/edgefleet/inbox"
top_k = 3

[outbox]
max_records = 100000
when_full = "drop_oldest"

[status]
heartbeat_s = 30
"""


def test_documented_example_parses_with_paths_relative_to_the_config(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(FULL)
    config = load_config(tmp_path / "agent.toml")
    assert config.device_id == "pi-001"
    assert config.state_dir == tmp_path / "state"
    assert config.mqtt.ca_file == tmp_path / "ca.crt"
    assert (config.mqtt.tls, config.mqtt.port, config.mqtt.host) == (True, 8883, "broker.example")
    assert config.trust.signing_keys == [tmp_path / "signing-keys"]
    assert config.inference.watch_dir == Path("/var/lib/edgefleet/inbox")
    assert config.runtime.num_threads == 2


def test_unknown_setting_is_named_in_the_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"mqtt\.keepalive: unknown setting"):
        parse_config(FULL.replace("keepalive_s", "keepalive"), base=tmp_path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('device_id = "a/b"\nstate_dir = "s"', "device_id"),
        ('state_dir = "s"', "device_id: Field required"),
        ('device_id = "d"\nstate_dir = "s"\n[mqtt]\nurl = "http://x"', "mqtt.url"),
        ('device_id = "d"\nstate_dir = "s"\n[outbox]\nwhen_full = "panic"', "outbox.when_full"),
        ('device_id = "d"\nstate_dir = "s"\ngroups = ["+"]', "invalid group '+'"),
        ("device_id = ", "not valid TOML"),
    ],
)
def test_invalid_configs_say_what_is_wrong(tmp_path: Path, text: str, fragment: str):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_config(text, base=tmp_path)


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read agent config"):
        load_config(tmp_path / "nope.toml")


def test_plain_url_defaults_to_1883(tmp_path: Path):
    config = parse_config('device_id = "d"\nstate_dir = "/s"', base=tmp_path)
    assert (config.mqtt.port, config.mqtt.tls) == (1883, False)
    assert config.log_level == "warning"


def test_mqtt_protocol_round_trips_and_defaults_to_5(tmp_path: Path):
    base = 'device_id = "d"\nstate_dir = "/s"\n'
    assert parse_config(base, base=tmp_path).mqtt.protocol == "5"
    config = parse_config(base + '[mqtt]\nprotocol = "3.1.1"', base=tmp_path)
    assert config.mqtt.protocol == "3.1.1"
    again = AgentConfig.model_validate(config.model_dump(mode="json"))
    assert again.mqtt.protocol == "3.1.1"
    assert MqttConfig.model_fields["protocol"].description
    with pytest.raises(ConfigError, match=r"mqtt\.protocol"):
        parse_config(base + '[mqtt]\nprotocol = "3"', base=tmp_path)
