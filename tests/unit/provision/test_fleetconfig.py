"""fleet.toml loading: clear errors, path resolution, TOML rendering round-trips."""

from __future__ import annotations

import pytest
import tomllib

from edgefleet.host.errors import ProvisionError
from edgefleet.host.fleetdir import dump_toml, load_fleet_config, parse_broker_url


def test_missing_fleet_config_says_how_to_create_one(tmp_path):
    with pytest.raises(ProvisionError, match="edgefleet init --fleet"):
        load_fleet_config(tmp_path)


def test_malformed_toml_names_the_file(tmp_path):
    (tmp_path / "fleet.toml").write_text("prefix = \n")
    with pytest.raises(ProvisionError, match=r"cannot read fleet config .*fleet\.toml"):
        load_fleet_config(tmp_path)


def test_invalid_and_unknown_settings_are_listed(tmp_path):
    (tmp_path / "fleet.toml").write_text(
        'broker_url = "ftp://x"\nsigning_key_id = "k"\nprefix = "a/#"\ncolour = "blue"\n'
    )
    with pytest.raises(ProvisionError) as info:
        load_fleet_config(tmp_path)
    text = str(info.value)
    for field in ("broker_url", "prefix", "colour"):
        assert field in text


def test_paths_resolve_against_the_fleet_directory(tmp_path):
    (tmp_path / "fleet.toml").write_text('broker_url = "mqtts://b:8883"\nsigning_key_id = "k"\n')
    config = load_fleet_config(tmp_path / "fleet.toml")
    ca, cert, key = config.tls_files()
    assert cert == tmp_path.resolve() / "host/host.crt"
    assert ca == tmp_path.resolve() / "ca/ca.crt"
    assert key == tmp_path.resolve() / "host/host.key"
    assert config.broker.port == 8883
    assert config.broker.tls


def test_broker_url_defaults_ports():
    assert parse_broker_url("mqtts://h").port == 8883
    assert parse_broker_url("mqtt://h").port == 1883
    with pytest.raises(ProvisionError, match="invalid port"):
        parse_broker_url("mqtts://h:99999")


def test_dump_toml_round_trips_awkward_strings():
    data = {
        "a": 'quote " backslash \\ newline \n tab \t unicode é',
        "n": 3,
        "b": True,
        "l": ["x", 'y"'],
        "t": {"k": "v", "skip": None},
    }
    parsed = tomllib.loads(dump_toml(data))
    assert parsed == {**data, "t": {"k": "v"}}
