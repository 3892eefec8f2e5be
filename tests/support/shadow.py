"""A device Shadow with a running comparison and no candidate thread (unit tests)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from edgefleet.device.config import ShadowConfig
from edgefleet.device.shadow import Shadow, _Run
from edgefleet.shared.topics import Topics
from support.manifests import shadow_manifest


def idle_shadow(tmp_path: Path, sample: float) -> tuple[Shadow, _Run]:
    """A Shadow whose run is `running` but has no thread: nothing takes items off its queue."""
    manifest = shadow_manifest(version=2, sample=sample)
    agent = SimpleNamespace(
        config=SimpleNamespace(device_id="d1", groups=["g"], shadow=ShadowConfig()),
        topics=Topics("p"),
        store=SimpleNamespace(root=tmp_path),
        classifier=None,
    )
    shadow = Shadow(agent)  # type: ignore[arg-type]
    run = _Run(manifest, manifest.variants[0], "e")
    run.state = "running"
    shadow.run = run
    return shadow, run
