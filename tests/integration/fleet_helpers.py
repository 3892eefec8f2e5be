"""Helpers for the fleet integration tests: a fleet of real agent processes and a host handle."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.host.fleet import Fleet, open_fleet
from edgefleet.shared.manifest import private_key_pem
from support.agent import AgentProcess, Signer, write_agent_config


@dataclass
class AgentFleet:
    """Real ``edgefleet-agent run`` processes sharing one broker, prefix and trusted key."""

    root: Path
    url: str
    prefix: str
    signer: Signer
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)

    @property
    def key_file(self) -> Path:
        path = self.root / "signing.key"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_bytes(private_key_pem(self.signer.key))
        return path

    def start(
        self, device_id: str, *, groups: list[str] | None = None, keys: list[Path] | None = None
    ) -> AgentProcess:
        if device_id not in self.configs:
            self.configs[device_id] = write_agent_config(
                self.root / device_id,
                device_id=device_id,
                broker_url=self.url,
                prefix=self.prefix,
                keys=keys or [self.signer.public_path],
                groups=groups,
            )
        self.agents[device_id] = AgentProcess(self.configs[device_id])
        return self.agents[device_id]

    def stop(self, device_id: str) -> None:
        self.agents.pop(device_id).stop()

    def stop_all(self) -> None:
        """SIGTERM every agent first, then wait: stopping them one by one costs ~3 s each."""
        for agent in self.agents.values():
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        for device_id in list(self.agents):
            self.stop(device_id)

    def logs(self) -> str:
        return "\n".join(f"--- {d}\n{a.log()[-3000:]}" for d, a in self.agents.items())

    def host(self, state_dir: Path) -> Fleet:
        return open_fleet(
            broker=self.url,
            fleet_dir=None,
            prefix=self.prefix,
            state_dir=state_dir,
            key_file=self.key_file,
            need_key=True,
        )


def wait_online(fleet: Fleet, devices: list[str], timeout: float = 60.0) -> None:
    """Observe until every device's retained status says online (with its groups)."""
    fleet.observe()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        online = fleet.view.online()
        if all(d in online for d in devices):
            return
        fleet.pump(0.5)
    missing = sorted(set(devices) - fleet.view.online())
    raise TimeoutError(f"devices never came online: {missing}")
