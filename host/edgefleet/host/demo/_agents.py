"""The demo's devices: real ``edgefleet-agent run --config`` processes made from their bundles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.device.config import MqttConfig
from edgefleet.host.demo._brokers import die_with_parent
from edgefleet.host.errors import DemoError
from edgefleet.host.fleetdir import dump_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from edgefleet.host.fleetdir import FleetConfig

STOP_TIMEOUT_S = 10.0


def agent_command() -> list[str]:
    """How to start the agent: the console script beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("edgefleet-agent")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("edgefleet-agent")
    if found:
        return [found]
    return [sys.executable, "-c", "from edgefleet.device.cli import main; main()"]


def agent_speaks_mqtt311() -> bool:
    """True if the agent config offers ``mqtt.protocol`` (needed for a 3.1.1-only broker)."""
    return "protocol" in MqttConfig.model_fields


def extract_bundle(bundle: Path, dest: Path) -> Path:
    """Unpack a device bundle (tar ``data`` filter: no links out, no devices); return its top."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    (top,) = (p for p in dest.iterdir() if p.is_dir())
    return top


def demo_agent_config(
    bundle_dir: Path, *, home: Path, url: str, tls: bool, mqtt311: bool
) -> dict[str, Any]:
    """The bundle's own agent.toml, pointed at folders under ``home`` and tuned for a quick run."""
    config: dict[str, Any] = tomllib.loads((bundle_dir / "agent.toml").read_text())
    config["state_dir"] = str(home / "state")
    config["log_level"] = "info"
    mqtt = config.setdefault("mqtt", {})
    mqtt["reconnect_max_s"] = 2.0
    if not tls:  # a plain loopback broker: no certificates, the demo's URL
        for key in ("ca_file", "cert_file", "key_file"):
            mqtt.pop(key, None)
        mqtt["url"] = url
    if mqtt311:
        mqtt["protocol"] = "3.1.1"
    inference = config.setdefault("inference", {})
    inference.update(watch_dir=str(home / "inbox"), poll_s=0.05, thumbnails=True)
    config["update"] = {"chunk_timeout_s": 1.0}
    config["status"] = {"heartbeat_s": 2.0}
    return config


class AgentGroup:
    """The demo's agent processes; :meth:`stop_all` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_all(
        self, device_ids: list[str], *, config: FleetConfig, url: str, tls: bool, mqtt311: bool
    ) -> None:
        """Unpack each device's bundle, write its agent.toml, start ``edgefleet-agent run``.

        ``mqtt311`` sets ``mqtt.protocol = "3.1.1"`` (for a broker that speaks nothing newer).
        """
        for device in device_ids:
            bundle = extract_bundle(
                config.resolve(f"bundles/{device}.tar.gz"), self.root / device / "bundle"
            )
            settings = demo_agent_config(
                bundle, home=self.root / device, url=url, tls=tls, mqtt311=mqtt311
            )
            (bundle / "agent.toml").write_text(dump_toml(settings))
            self.start(device, bundle / "agent.toml")

    def start(self, device: str, config_path: Path) -> None:
        """Start one agent, its output going to ``<root>/<device>/agent.log``."""
        with (self.root / device / "agent.log").open("ab") as log:
            self.procs[device] = subprocess.Popen(
                [*agent_command(), "run", "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - a single prctl call
            )

    def pids(self) -> dict[str, int]:
        """Device id -> process id."""
        return {d: p.pid for d, p in self.procs.items()}

    def inboxes(self) -> dict[str, Path]:
        """Device id -> its watched folder."""
        return {d: self.root / d / "inbox" for d in self.procs}

    def check_alive(self) -> None:
        """Raise DemoError naming any agent that has exited, with the end of its log."""
        dead = [d for d, p in self.procs.items() if p.poll() is not None]
        if dead:
            codes = ", ".join(f"{d} (exit {self.procs[d].returncode})" for d in dead)
            raise DemoError(f"agent(s) exited: {codes}\n{self.tail_logs(dead)}")

    def tail_logs(self, devices: list[str] | None = None, *, chars: int = 1500) -> str:
        """The end of each agent's log, for error messages."""
        parts = []
        for device in devices or list(self.procs):
            log = self.root / device / "agent.log"
            text = log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
            parts.append(f"--- {device} ({log}):\n{text}")
        return "\n".join(parts)

    def stop_all(self) -> None:
        """SIGTERM every agent, wait up to 10 s in all, SIGKILL whatever is left."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
