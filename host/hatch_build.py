"""Build hook: ship the repository's ``deploy/`` folder inside the host distribution.

``deploy/`` has one home, beside ``host/`` in the repository. A wheel built from the checkout
takes it from there as ``edgefleet/host/templates``; the sdist carries it as ``deploy/`` so
that a wheel built from the sdist finds it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class DeployFilesHook(BuildHookInterface):  # type: ignore[type-arg]
    """Force-include ``deploy/`` from the checkout or from an unpacked sdist."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Add the deploy files to this build."""
        root = Path(self.root)
        for candidate in (root.parent / "deploy", root / "deploy"):
            if (candidate / "install-device.sh").is_file():
                break
        else:
            raise FileNotFoundError(f"deploy/ not found beside or inside {root}")
        target = "deploy" if self.target_name == "sdist" else "edgefleet/host/templates"
        if version == "editable":
            return  # the checkout's deploy/ is read in place (edgefleet.host.provision)
        build_data["force_include"][str(candidate)] = target
