"""`edgefleet init | provision | revoke | wheelhouse | keys ...`: CA, bundles, wheels, keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from edgefleet.host.cli._options import OldFleetDir, example, fleet_dir_of
from edgefleet.host.errors import HostError

FleetDir = Annotated[
    Path | None,
    typer.Option(
        "--fleet",
        envvar="EDGEFLEET_FLEET",
        help="Fleet directory (made by `edgefleet init`; default ./fleet).",
    ),
]


def _fleet(fleet: Path | None, old: Path | None) -> Path:
    """--fleet / EDGEFLEET_FLEET, else the old --dir / EDGEFLEET_FLEET_DIR, else ./fleet."""
    return fleet_dir_of(fleet, old) or Path("fleet")


_RELOAD_HINT = "reload the broker so it applies the new ACL and CRL: kill -HUP <mosquitto pid>"


def _apply_hint(fleet_dir: Path, device_id: str) -> str:
    return (
        f"to apply it: the CRL and ACL in {fleet_dir} changed, but a broker reload (SIGHUP) "
        f"only refuses NEW connections; {device_id}'s live session ends when the broker "
        "restarts (other devices reconnect by themselves; retained state and sessions are "
        "kept). Restart it with one of:\n"
        f"  edgefleet revoke --apply --fleet {fleet_dir} --systemd-unit mosquitto   "
        "(Debian's package)\n"
        f"  edgefleet revoke --apply --fleet {fleet_dir} --broker-pid PID           "
        "(mosquitto -c CONF)\n"
        "then check: `edgefleet fleet status` shows it REVOKED and offline"
    )


T = TypeVar("T")
Platforms = Annotated[
    list[str] | None,
    typer.Option(
        "--platform",
        help="pip platform tag of the devices (repeatable, most specific first; default: "
        "Raspberry Pi OS Bookworm 64-bit, manylinux_2_36_aarch64 and older aarch64 tags).",
    ),
]
PythonVersion = Annotated[str, typer.Option(help="The devices' Python version.")]
Legacy = Annotated[
    bool, typer.Option(help="Wheels for install-device.sh --legacy (tflite-runtime, numpy 1).")
]

keys_app = typer.Typer(
    help="Model-signing keys: list, rotate, activate, retire.", no_args_is_help=True
)


def _run(action: Callable[[], T]) -> T:
    """Run a library call; print a HostError as a one-line error and exit 1."""
    try:
        return action()
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc


def init(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    fleet: FleetDir = None,
    old_dir: OldFleetDir = None,
    broker_url: Annotated[
        str, typer.Option(help="mqtts://HOST:PORT that the host and devices connect to.")
    ] = "mqtts://localhost:8883",
    host_broker_url: Annotated[
        str | None,
        typer.Option(
            help="mqtts://HOST:PORT of the host-only listener (host certificates only; "
            "default: the broker URL's port + 1)."
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="MQTT topic prefix.")] = "edgefleet",
    name: Annotated[str, typer.Option(help="Fleet name (the CA's organization).")] = "edgefleet",
    san: Annotated[
        list[str] | None,
        typer.Option(
            help="Broker certificate SAN (repeat; default: URL host, localhost, 127.0.0.1)."
        ),
    ] = None,
    bind: Annotated[str | None, typer.Option(help="Address the broker listener binds.")] = None,
    broker_user: Annotated[
        str | None,
        typer.Option(
            help="Account mosquitto drops to when started as root (`user` line of "
            "mosquitto.conf; default: mosquitto). Also changes it on an existing fleet."
        ),
    ] = None,
    autosave_interval: Annotated[
        int,
        typer.Option(
            min=1,
            help="Broker autosave: seconds between saves (or changes, with "
            "--autosave-on-changes); see docs/provisioning.md for the trade-off.",
        ),
    ] = 10,
    autosave_on_changes: Annotated[
        bool, typer.Option(help="Count changes instead of seconds for the autosave.")
    ] = False,
) -> None:
    """Create a fleet: CA, broker and host certificates, signing key, mosquitto.conf and ACL.

    Run as root, it also lets the broker account (--broker-user, default mosquitto) read
    the broker's files, so `mosquitto -c FLEET/broker/mosquitto.conf` started as root works.
    On an existing fleet, `--broker-user NAME` only changes that account (and its access).
    """
    from edgefleet.host.fleetdir import FLEET_FILE
    from edgefleet.host.provision import grant_broker_access, init_fleet, set_broker_user

    fleet_dir = _fleet(fleet, old_dir)
    if (fleet_dir / FLEET_FILE).exists() and broker_user is not None:
        access = _run(lambda: set_broker_user(fleet_dir, broker_user))
        print(f"{fleet_dir}: mosquitto.conf now says `user {broker_user}`; {access.summary()}")
        print(f"start the broker: mosquitto -c {fleet_dir / 'broker' / 'mosquitto.conf'}")
        return

    config = _run(
        lambda: init_fleet(
            fleet_dir,
            name=name,
            broker_url=broker_url,
            host_broker_url=host_broker_url,
            prefix=prefix,
            sans=san or None,
            bind_address=bind,
            broker_user=broker_user,
            autosave_interval=autosave_interval,
            autosave_on_changes=autosave_on_changes,
        )
    )
    access = _run(lambda: grant_broker_access(config.root, broker_user))
    print(f"fleet created in {config.root}")
    print(f"signing key: {config.signing_key_id}")
    if access.changed or access.blocked:
        print(access.summary())
    print(f"start the broker: mosquitto -c {config.resolve(config.broker_conf)}")
    print(f"devices connect to {config.broker_url}, host commands to {config.host_url}")


def provision(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device_id: Annotated[str, typer.Argument(help="Device id: certificate CN, MQTT username.")],
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="Group to join (repeatable).")
    ] = None,
    fleet: FleetDir = None,
    old_dir: OldFleetDir = None,
    reissue: Annotated[
        bool, typer.Option(help="Replace an existing device's certificate (revokes the old one).")
    ] = False,
    days: Annotated[int, typer.Option(help="Certificate validity in days.", min=1)] = 1825,
    edgetpu: Annotated[
        str, typer.Option(help="Agent runtime.edgetpu: off, usb, pci or a device string.")
    ] = "off",
    wheelhouse_dir: Annotated[
        Path | None,
        typer.Option(
            "--wheelhouse",
            help="Also download the agent's dependencies into this folder, for devices "
            "without internet (install-device.sh --wheelhouse DIR).",
        ),
    ] = None,
    platform: Platforms = None,
    python_version: PythonVersion = "3.11",
    legacy: Legacy = False,
) -> None:
    """Issue a device certificate and write its install bundle (a tarball with the agent)."""
    fleet_dir = _fleet(fleet, old_dir)
    from edgefleet.host.provision import provision_device

    bundle = _run(
        lambda: provision_device(
            fleet_dir, device_id, groups=group or [], reissue=reissue, days=days, edgetpu=edgetpu
        )
    )
    print(f"bundle: {bundle}  (holds the device's private key: copy it over a trusted channel)")
    print("on the device: tar xzf BUNDLE && cd edgefleet-* && sudo ./install-device.sh")
    if wheelhouse_dir is not None:
        wheelhouse(wheelhouse_dir, platform, python_version, legacy)
    print(_RELOAD_HINT)


def wheelhouse(
    directory: Annotated[Path, typer.Argument(help="The wheelhouse folder (created if missing).")],
    platform: Platforms = None,
    python_version: PythonVersion = "3.11",
    legacy: Legacy = False,
) -> None:
    """Download the agent's dependencies as wheels for devices without internet."""
    from edgefleet.host.provision import DEVICE_PLATFORMS, fill_wheelhouse

    extras = ("legacy",) if legacy else ("litert",)
    platforms = tuple(platform or DEVICE_PLATFORMS)
    wheels = _run(
        lambda: fill_wheelhouse(
            directory, platforms=platforms, python_version=python_version, extras=extras
        )
    )
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"wheelhouse: {directory}  ({len(wheels)} wheels, {size:.1f} MB, {platforms[0]})")
    flag = " --legacy" if legacy else ""
    print(
        f"copy it to the device next to the bundle; there: "
        f"sudo ./install-device.sh{flag} --wheelhouse ../{directory.name}"
    )


def revoke(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device_id: Annotated[str | None, typer.Argument(help="Device to revoke.")] = None,
    fleet: FleetDir = None,
    old_dir: OldFleetDir = None,
    refresh_crl: Annotated[
        bool, typer.Option(help="Only re-sign the CRL (do it well before crl_days run out).")
    ] = False,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Restart the broker so live sessions of revoked devices end (with "
            "--systemd-unit, --broker-pid or --broker-pidfile). Alone: only restart.",
        ),
    ] = False,
    systemd_unit: Annotated[
        str | None, typer.Option(help="systemd unit of the broker (Debian: mosquitto).")
    ] = None,
    broker_pid: Annotated[
        int | None, typer.Option(help="Pid of a `mosquitto -c CONF` broker on this machine.")
    ] = None,
    broker_pidfile: Annotated[
        Path | None, typer.Option(help="Pid file of the broker (rewritten after the restart).")
    ] = None,
) -> None:
    """Revoke a device: its certificate goes on the CRL and its ACL block is removed.

    A reload only refuses new connections; --apply restarts the broker so the revoked
    device's live session ends too (docs/provisioning.md, "Revoking a device").
    """
    fleet_dir = _fleet(fleet, old_dir)
    from edgefleet.host.provision import _provision as prov
    from edgefleet.host.provision import restart_broker

    if refresh_crl:
        path = _run(lambda: prov.refresh_crl(fleet_dir))
        print(f"CRL re-signed: {path}")
    elif device_id is not None:
        record = _run(lambda: prov.revoke_device(fleet_dir, device_id))
        print(f"revoked {record.device_id} (certificate serial {record.serial:x})")
    elif not apply:
        print("error: name the DEVICE to revoke, or pass --refresh-crl or --apply")
        raise typer.Exit(code=1)
    if not apply:
        print(_apply_hint(fleet_dir, device_id) if device_id else _RELOAD_HINT)
        return
    done = _run(
        lambda: restart_broker(
            fleet_dir, pid=broker_pid, pidfile=broker_pidfile, systemd_unit=systemd_unit
        )
    )
    pid = f"; new pid {done.pid}" if done.pid is not None else ""
    print(f"broker restarted: {done.how}{pid}")
    print("every client handshakes again: revoked certificates are refused from now on")


@keys_app.command("list", epilog=example("edgefleet keys list --fleet fleet"))
def keys_list(fleet: FleetDir = None, old_dir: OldFleetDir = None) -> None:
    """List the trusted signing keys; the active one is marked with '*'."""
    fleet_dir = _fleet(fleet, old_dir)
    from edgefleet.host.fleetdir import load_fleet_config
    from edgefleet.host.provision import trusted_key_files

    config = _run(lambda: load_fleet_config(fleet_dir))
    for key_id, path in _run(lambda: trusted_key_files(config)).items():
        mark = "*" if key_id == config.signing_key_id else " "
        print(f"{mark} {key_id}  {path}")


@keys_app.command("rotate", epilog=example("edgefleet keys rotate --stage --fleet fleet"))
def keys_rotate(
    fleet: FleetDir = None,
    old_dir: OldFleetDir = None,
    stage: Annotated[
        bool, typer.Option(help="Only trust the new key; activate it later with `keys activate`.")
    ] = False,
) -> None:
    """Create a new signing key (the old one stays trusted until `keys retire`)."""
    fleet_dir = _fleet(fleet, old_dir)
    from edgefleet.host.provision import rotate_signing_key

    key_id = _run(lambda: rotate_signing_key(fleet_dir, activate=not stage))
    state = "staged (trusted, not yet signing)" if stage else "active"
    print(f"new signing key {key_id}: {state}")
    print("devices need it in their trusted keys: re-provision with --reissue (see docs)")


@keys_app.command(
    "activate", epilog=example("edgefleet keys activate 3f2a9c1b5d7e0a4c --fleet fleet")
)
def keys_activate(
    key_id: Annotated[str, typer.Argument(help="A trusted key id (see `keys list`).")],
    fleet: FleetDir = None,
    old_dir: OldFleetDir = None,
) -> None:
    """Sign manifests with KEY_ID from now on."""
    fleet_dir = _fleet(fleet, old_dir)
    from edgefleet.host.provision import activate_signing_key

    _run(lambda: activate_signing_key(fleet_dir, key_id))
    print(f"signing with {key_id}")


@keys_app.command("retire", epilog=example("edgefleet keys retire 56475aa75463474c --fleet fleet"))
def keys_retire(
    key_id: Annotated[str, typer.Argument(help="A trusted, inactive key id.")],
    fleet: FleetDir = None,
    old_dir: OldFleetDir = None,
) -> None:
    """Stop trusting KEY_ID in new bundles; its private key moves to signing/retired/."""
    fleet_dir = _fleet(fleet, old_dir)
    from edgefleet.host.provision import retire_signing_key

    _run(lambda: retire_signing_key(fleet_dir, key_id))
    print(f"retired {key_id}")


def register(app: typer.Typer) -> None:
    """Add `init`, `provision`, `revoke`, `wheelhouse` and the `keys` group to the root app."""
    app.command(
        "init",
        epilog=example(
            "edgefleet init --fleet fleet --broker-url mqtts://broker.example.net:8883",
            "sudo edgefleet init --fleet fleet --broker-user mosquitto   # existing fleet",
        ),
    )(init)
    app.command(
        "provision",
        epilog=example(
            "edgefleet provision pi-001 --group field --fleet fleet",
            "edgefleet provision pi-001 --reissue --fleet fleet",
        ),
    )(provision)
    app.command(
        "revoke",
        epilog=example(
            "edgefleet revoke pi-007 --fleet fleet",
            "edgefleet revoke pi-007 --apply --broker-pid 1234 --fleet fleet",
            "edgefleet revoke --refresh-crl --fleet fleet",
        ),
    )(revoke)
    app.command("wheelhouse", epilog=example("edgefleet wheelhouse wheels --python-version 3.11"))(
        wheelhouse
    )
    app.add_typer(keys_app, name="keys")
