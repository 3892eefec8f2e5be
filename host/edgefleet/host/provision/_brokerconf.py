"""Render the deploy/ templates: mosquitto.conf, the Mosquitto ACL, a device's agent.toml."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from edgefleet.host.errors import ProvisionError
from edgefleet.host.fleetdir import DeviceRecord, FleetConfig, dump_toml, parse_broker_url
from edgefleet.shared.topics import Topics

# The files shipped in every device bundle, next to the config and certificates.
BUNDLE_TEMPLATES = (
    "install-device.sh",
    "systemd/edgefleet-agent.service",
    "udev/99-coral-edgetpu.rules",
)
# Every file under deploy/ that the host wheel carries (as edgefleet/host/templates/).
PACKAGED_TEMPLATES = (
    "mosquitto/mosquitto.conf.tmpl",
    "mosquitto/acl.tmpl",
    "prometheus/prometheus.yml",  # examples for monitoring (docs/fleet.md, "Monitoring")
    "grafana/edgefleet.json",
    *BUNDLE_TEMPLATES,
)
DEVICE_STATE_DIR = "/var/lib/edgefleet"
# Setgid, group edgefleet-inbox (install-device.sh): sensors and users drop inputs without sudo.
DEVICE_INBOX_DIR = "/var/spool/edgefleet/inbox"


def deploy_files() -> Traversable:
    """The deploy/ folder: package data in a built wheel, the checkout's ``deploy/`` otherwise.

    deploy/ has one home in the repository; the host wheel's build hook copies it in as
    ``edgefleet/host/templates``. An editable install reads the checkout's folder in place.
    """
    packaged = resources.files("edgefleet.host") / "templates"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[4] / "deploy"
    if (checkout / "install-device.sh").is_file():
        return checkout
    raise FileNotFoundError(
        "edgefleet-host has no deploy files: reinstall it from a wheel or from the repository"
    )


def template_text(name: str) -> str:
    """Return a deploy/ template (works with or without a repository checkout)."""
    return (deploy_files() / name).read_text(encoding="utf-8")


# Persistence defaults (docs/provisioning.md, "Broker persistence"): save every 10 s.
# Mosquitto writes its whole in-memory database (retained model chunks, sessions) on each
# save, so a shorter interval costs disk writes; the host re-asserts desired state after a
# crash, so what a crash loses within the window is put back.
DEFAULT_AUTOSAVE_INTERVAL = 10
DEFAULT_AUTOSAVE_ON_CHANGES = False


def render_mosquitto_conf(
    config: FleetConfig,
    *,
    bind_address: str | None = None,
    broker_user: str | None = None,
    paths_under: Path | None = None,
    autosave_interval: int = DEFAULT_AUTOSAVE_INTERVAL,
    autosave_on_changes: bool = DEFAULT_AUTOSAVE_ON_CHANGES,
) -> str:
    """Render mosquitto.conf: the device listener, the host-only listener, persistence.

    Args:
        config: The fleet (its broker URLs give the ports).
        bind_address: Listen on this address only (default: all interfaces).
        broker_user: Write ``user NAME`` (the account Mosquitto drops to when started as
            root; tests use their own user). None keeps Mosquitto's default ("mosquitto").
        paths_under: Absolute directory the fleet's files are found in on the broker
            machine (default: the fleet directory itself).
        autosave_interval: Seconds between saves of the broker's database (or, with
            ``autosave_on_changes``, the number of changes that triggers a save); >= 1.
        autosave_on_changes: Count changes instead of seconds.

    Raises:
        ProvisionError: The fleet has no host CA / host listener (made by an older
            ``edgefleet init``), or ``autosave_interval`` is below 1.
    """
    if config.host_broker_url is None or config.host_ca_file is None:
        raise ProvisionError(
            f"fleet {config.root} has no host CA and host listener (made by an older "
            "edgefleet init): create a new fleet with `edgefleet init` and re-provision"
        )
    if autosave_interval < 1:
        raise ProvisionError(f"autosave interval must be at least 1, not {autosave_interval}")
    root = paths_under or config.root

    def path(relative: str) -> str:
        return str(root / relative)

    bind = f" {bind_address}" if bind_address else ""
    host_port = parse_broker_url(config.host_broker_url).port
    user_line = f"user {broker_user}" if broker_user else "# user mosquitto  (the default)"
    unit = "changes" if autosave_on_changes else "seconds"
    return Template(template_text("mosquitto/mosquitto.conf.tmpl")).substitute(
        fleet_name=config.name,
        user_line=user_line,
        persistence_dir=path("broker/data"),
        autosave_what=f"after every {autosave_interval} {unit}",
        autosave_interval=autosave_interval,
        autosave_on_changes="true" if autosave_on_changes else "false",
        listener_line=f"listener {config.broker.port}{bind}",
        host_listener_line=f"listener {host_port}{bind}",
        ca_file=path(config.ca_file),
        host_ca_file=path(config.host_ca_file),
        cert_file=path("broker/server.crt"),
        key_file=path("broker/server.key"),
        crl_file=path(config.crl_file),
        acl_file=path(config.acl_file),
    )


def render_acl(config: FleetConfig, devices: list[DeviceRecord]) -> str:
    """Render the ACL: per-device patterns, the host's grant, one block per active device."""
    topics = Topics(config.prefix)
    # Chunks of every model: a model's chunks are shared by all devices it targets.
    all_chunks = f"{config.prefix}/models/+/chunks/+"
    blocks = []
    for device in devices:
        lines = [f"user {device.device_id}", f"topic read {all_chunks}"]
        lines += [f"topic read {topics.desired_group(g)}" for g in device.groups]
        lines += [f"topic read {topics.shadow_group(g)}" for g in device.groups]
        blocks.append("\n".join(lines))
    return Template(template_text("mosquitto/acl.tmpl")).substitute(
        fleet_name=config.name,
        prefix=config.prefix,
        host_identity=config.host_identity,
        device_blocks="\n\n".join(blocks) if blocks else "# (no devices provisioned yet)",
    )


def render_agent_config(
    config: FleetConfig,
    device: DeviceRecord,
    *,
    key_files: list[str],
    edgetpu: str = "off",
    state_dir: str = DEVICE_STATE_DIR,
) -> str:
    """Render the agent.toml shipped in a device bundle (paths relative to the file)."""
    data = {
        "device_id": device.device_id,
        "groups": device.groups,
        "state_dir": state_dir,
        "mqtt": {
            "url": config.broker_url,
            "prefix": config.prefix,
            "ca_file": "ca.crt",
            "cert_file": "device.crt",
            "key_file": "device.key",
        },
        "trust": {"signing_keys": ["signing-keys/"]},
        "runtime": {"edgetpu": edgetpu},
        "inference": {"watch_dir": DEVICE_INBOX_DIR},
    }
    header = (
        f"# edgefleet agent config for {device.device_id}, written by `edgefleet provision`.\n"
        f"# Trusted model-signing keys: {', '.join(key_files)}\n"
    )
    return header + dump_toml(data)
