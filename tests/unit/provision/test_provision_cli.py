"""`edgefleet init | provision | revoke | keys` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.fleetdir import load_fleet_config, load_registry

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_init_provision_revoke_and_rotate_from_the_command_line(tmp_path):
    fleet = str(tmp_path / "fleet")
    out = _ok("init", "--dir", fleet, "--broker-url", "mqtts://b.example:8883", "--prefix", "acme")
    assert "fleet created" in out
    assert load_fleet_config(tmp_path / "fleet").prefix == "acme"

    out = _ok("provision", "pi-1", "-g", "field", "--group", "north", "--dir", fleet)
    assert (tmp_path / "fleet/bundles/pi-1.tar.gz").is_file()
    assert "kill -HUP" in out
    assert load_registry(tmp_path / "fleet").devices["pi-1"].groups == ["field", "north"]

    out = _ok("revoke", "pi-1", "--dir", fleet)
    assert "revoked pi-1" in out
    assert load_registry(tmp_path / "fleet").devices["pi-1"].revoked_at is not None

    old = load_fleet_config(tmp_path / "fleet").signing_key_id
    out = _ok("keys", "rotate", "--stage", "--dir", fleet)
    new = out.split("new signing key ")[1].split(":")[0]
    assert load_fleet_config(tmp_path / "fleet").signing_key_id == old
    _ok("keys", "activate", new, "--dir", fleet)
    _ok("keys", "retire", old, "--dir", fleet)
    listing = _ok("keys", "list", "--dir", fleet)
    assert listing.split() == ["*", new, str(tmp_path / f"fleet/signing/{new}.pub")]


def test_fleet_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_FLEET_DIR", str(tmp_path / "envfleet"))
    _ok("init")
    _ok("provision", "pi-2")
    assert (tmp_path / "envfleet/bundles/pi-2.tar.gz").is_file()


def test_errors_are_one_clear_line_and_exit_code_1(tmp_path):
    fleet = str(tmp_path / "fleet")
    for args, message in [
        (["provision", "pi-1", "--dir", fleet], "no fleet config"),
        (["init", "--dir", fleet, "--broker-url", "mqtt://x"], "must be mqtts"),
        (["revoke", "--dir", fleet], "name the DEVICE"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("error: ")
        assert message in result.output
    _ok("init", "--dir", fleet)
    result = runner.invoke(app, ["init", "--dir", fleet])
    assert result.exit_code == 1
    assert "refusing to overwrite" in result.output
    result = runner.invoke(app, ["provision", "bad/id", "--dir", fleet])
    assert result.exit_code == 1
    assert "invalid device id" in result.output
