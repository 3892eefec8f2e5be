"""``edgefleet demo --shadow``: after the deployed push, a second build runs in shadow.

The candidate is another build the demo quantized (QAT if made, else float32); it runs on
every input the demo feeds (sample 1.0) beside the deployed model, and its agreement
report, with both models' accuracy against the held-out labels, is printed at the end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgefleet.host.cli.shadow import summary_lines
from edgefleet.host.fleet import load_model
from edgefleet.host.fleet._shadow import (
    Shadow,
    ShadowPlan,
    start_shadow,
    stop_shadow,
    summarize,
    wait_summary,
)

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.host.demo._run import _Demo

CANDIDATE_MODES = ("qat", "float32", "dynamic", "float16")


def candidate_for(deploy: Path) -> Path | None:
    """Another build beside ``deploy`` (``NAME_MODE.tflite``), QAT first."""
    name, _, mode = deploy.stem.rpartition("_")
    for other in CANDIDATE_MODES:
        path = deploy.with_name(f"{name}_{other}.tflite")
        if other != mode and path.is_file():
            return path
    return None


def start(demo: _Demo, deploy: Path, group: str) -> Shadow | None:
    """Publish the candidate in shadow to the demo group; None if there is no other build."""
    assert demo.fleet is not None  # noqa: S101 - the push came first
    path = candidate_for(deploy)
    if path is None:
        demo.log("shadow: no other build to compare (quantize QAT or float32 too)")
        return None
    shadow = start_shadow(demo.fleet, load_model(path), ShadowPlan(group=group, sample=1.0))
    demo.log(f"shadow: {shadow.rollout} ({shadow.manifest.mode}) beside the deployed model")
    deadline = time.monotonic() + demo.options.timeout_s
    while time.monotonic() < deadline:
        summary = wait_summary(demo.fleet, shadow, timeout=0.5, until_finished=False)
        states = {r.state for r in summary.reports.values()}
        if not summary.missing and states == {"running"}:
            demo.log("shadow: every device runs the candidate")
            return shadow
        if "failed" in states:
            break
    demo.log(f"shadow: the candidate did not start everywhere: {summary.reports}")
    return shadow


def finish(demo: _Demo, shadow: Shadow, labels: dict[str, str], fed: int) -> None:
    """Wait until the devices compared what was fed, print the report, end the shadow."""
    assert demo.fleet is not None  # noqa: S101
    deadline = time.monotonic() + 15.0
    summary = summarize(shadow, {})
    while time.monotonic() < deadline:
        summary = wait_summary(demo.fleet, shadow, timeout=2.5, until_finished=False)
        if summary.compared + summary.dropped + summary.failures >= fed:
            break
    summary = summarize(shadow, summary.reports, labels)
    demo.log("shadow report (edgefleet shadow report):")
    for line in summary_lines(summary):
        demo.say(f"           {line}")
    stop_shadow(demo.fleet, shadow)
