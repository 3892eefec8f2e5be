"""Shadow deployments on the host: publish a candidate in shadow, read reports, promote, stop.

The broker holds the whole state of a shadow: the retained signed shadow manifest on
``{p}/groups/{group}/shadow`` or ``{p}/devices/{id}/shadow`` (what is being compared) and
each device's retained summary on ``{p}/devices/{id}/shadow/report`` (how it compares). A
shadow is named ``NAME-vVERSION`` (its rollout id). Promotion is an ordinary signed rollout
(:func:`edgefleet.host.fleet._push.push`, canary rules and all) of the same model bytes,
which this host kept when it published the shadow's chunks.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._checks import check_targets
from edgefleet.host.fleet._push import (
    DEFAULT_EXPIRY_S,
    ModelFiles,
    PushPlan,
    RolloutResult,
    group_members,
    next_version,
    publish_chunks,
    publish_desired,
    push,
    sign_for,
)
from edgefleet.shared.errors import DecodeError, TopicError
from edgefleet.shared.manifest import Manifest, Targets, decode_envelope
from edgefleet.shared.messages import decode
from edgefleet.shared.shadow import MAX_REPORT_BYTES, ShadowReport, ShadowSpec
from edgefleet.shared.topics import SHADOW_DEVICE, SHADOW_GROUP, SHADOW_REPORT, validate_id

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.shared.connection import Message

_UNTIL = re.compile(r"^\s*(?:(\d+)-inputs|(\d+(?:\.\d+)?)\s*([smhd]))\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TERM = re.compile(
    r"^\s*(agreement|latency|compared|failures)\s*(>=|<=|>|<)\s*([0-9.]+)\s*(%|x)?\s*$"
)
_FINAL = frozenset({"done", "failed", "stopped"})


def parse_until(text: str | None) -> tuple[int | None, float | None]:
    """``500-inputs`` -> (500, None); ``2h`` / ``30m`` / ``90s`` / ``1d`` -> (None, seconds).

    Raises:
        FleetError: Neither form.
    """
    if text is None:
        return None, None
    m = _UNTIL.match(text)
    if m is None or (m.group(1) is not None and int(m.group(1)) < 1):
        raise FleetError(
            f"--until {text!r}: give a number of inputs (500-inputs) or a duration "
            "(90s, 30m, 2h, 1d)"
        )
    if m.group(1) is not None:
        return int(m.group(1)), None
    return None, float(m.group(2)) * _SECONDS[m.group(3)]


@dataclass(frozen=True)
class Condition:
    """``--promote-if``: every term must hold (``agreement>=0.97,latency<=1.2x``)."""

    terms: tuple[tuple[str, str, float], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse the comma-separated terms.

        Raises:
            FleetError: A term is not ``METRIC OP NUMBER`` with a known metric.
        """
        terms = []
        for part in text.split(","):
            m = _TERM.match(part)
            if m is None:
                raise FleetError(
                    f"--promote-if: cannot read {part.strip()!r}; use terms like "
                    "agreement>=0.97 (or 97%), latency<=1.2x, compared>=500, failures<=0, "
                    "joined by commas"
                )
            metric, op, number, unit = m.groups()
            value = float(number) / (100 if unit == "%" else 1)
            terms.append((metric, op, value))
        return cls(tuple(terms), text)

    def check(self, summary: FleetSummary) -> list[str]:
        """The terms that do not hold (empty: promote), in words."""
        values = {
            "agreement": summary.agreement,
            "latency": summary.latency_ratio,
            "compared": float(summary.compared),
            "failures": float(summary.failures),
        }
        failed = []
        for metric, op, limit in self.terms:
            value = values[metric]
            ok = (
                value is not None
                and {
                    ">=": value >= limit,
                    "<=": value <= limit,
                    ">": value > limit,
                    "<": value < limit,
                }[op]
            )
            if not ok:
                shown = "unknown" if value is None else f"{value:.4g}"
                failed.append(f"{metric} {shown} is not {op} {limit:g}")
        return failed


@dataclass
class Shadow:
    """One shadow on the broker: its manifest, where it was published, its targets."""

    manifest: Manifest
    topics: list[str] = field(default_factory=list)
    group: str | None = None
    devices: list[str] = field(default_factory=list)

    @property
    def rollout(self) -> str:
        """The shadow's id, ``NAME-vVERSION``."""
        return f"{self.manifest.name}-v{self.manifest.version}"


@dataclass
class FleetSummary:
    """Every target's report of one shadow, and the fleet-wide figures."""

    shadow: Shadow
    reports: dict[str, ShadowReport]
    missing: list[str]
    compared: int = 0
    agreed: int = 0
    failures: int = 0
    dropped: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    latency_ratio: float | None = None
    accuracy: dict[str, float | None] = field(default_factory=dict)

    @property
    def agreement(self) -> float | None:
        """Fleet-wide share of compared inputs with the same top-1 label."""
        return self.agreed / self.compared if self.compared else None

    @property
    def finished(self) -> bool:
        """Every target reported, and each has ended its comparison."""
        return not self.missing and all(r.state in _FINAL for r in self.reports.values())

    @property
    def failed(self) -> list[str]:
        """Targets whose candidate failed (download, health check, inputs)."""
        return [d for d, r in self.reports.items() if r.state == "failed"]


def refusals(condition: Condition | None, summary: FleetSummary) -> list[str]:
    """Why ``summary`` may not be promoted (empty: promote), for ``--promote-if`` and ``--if``.

    The terms of ``condition`` that do not hold, then: a target whose candidate failed (its
    health check, or too many inputs) and a target that never reported. A failed candidate
    is refused whatever its agreement on the inputs it did compare.
    """
    reasons = condition.check(summary) if condition is not None else []
    if summary.failed:
        reasons.append(f"the candidate failed on {', '.join(summary.failed)}")
    if summary.missing:
        reasons.append(f"no report from {', '.join(summary.missing)}")
    return reasons


def device_ratio(report: ShadowReport) -> float | None:
    """A device's candidate p50 latency over its active model's (None until both known)."""
    cand, act = report.candidate_latency.p50_ms, report.active_latency.p50_ms
    return cand / act if cand is not None and act else None


# -- starting ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowPlan:
    """Where to run a candidate in shadow, on what share of inputs, for how long."""

    devices: tuple[str, ...] = ()
    group: str | None = None
    sample: float = 0.2
    until: str | None = None
    expires_in: float = DEFAULT_EXPIRY_S
    force: bool = False

    def check(self) -> ShadowSpec:
        """The signed terms; FleetError for contradictory or out-of-range options."""
        PushPlan(devices=self.devices, group=self.group).check()
        if not 0.0 < self.sample <= 1.0:
            raise FleetError(f"--sample {self.sample}: give a share above 0 and at most 1")
        max_inputs, seconds = parse_until(self.until)
        until = int(time.time() + seconds) if seconds is not None else None
        return ShadowSpec(sample=self.sample, max_inputs=max_inputs, until=until)


def start_shadow(fleet: Fleet, model: ModelFiles, plan: ShadowPlan) -> Shadow:
    """Sign ``model`` as a shadow candidate and publish it (chunks, then the manifest).

    Raises:
        FleetError: Bad options, no signing key, unknown targets.
    """
    spec = plan.check()
    if fleet.signing_key is None:
        raise FleetError("no signing key: pass --fleet DIR (fleet.toml names it) or --key FILE")
    fleet.observe()
    check_targets(fleet, PushPlan(devices=plan.devices, group=plan.group, force=plan.force))
    targets = list(plan.devices) if plan.devices else group_members(fleet, plan.group or "")
    version = next_version(fleet, targets, None)
    template = model.template.model_copy(update={"shadow": spec})
    publish_chunks(fleet, model.blobs, template)
    signed_for = Targets(groups=[plan.group]) if plan.group else Targets(devices=targets)
    manifest, envelope = sign_for(
        template, fleet.signing_key, version=version, targets=signed_for, expires_in=plan.expires_in
    )
    t = fleet.topics
    topics = [t.shadow_group(plan.group)] if plan.group else [t.shadow_device(d) for d in targets]
    for topic in topics:
        publish_desired(fleet, topic, envelope)
    return Shadow(manifest, topics, plan.group, targets)


# -- reading the broker ------------------------------------------------------------------


def read_state(fleet: Fleet) -> tuple[list[Shadow], dict[str, ShadowReport]]:
    """The shadows retained on the broker and every device's retained report."""
    fleet.observe()
    t = fleet.topics
    fleet.conn.subscribe(*t.all_shadow_manifests(), t.all_shadow_reports())
    shadows: dict[str, Shadow] = {}
    reports: dict[str, ShadowReport] = {}
    for msg in fleet.conn.drain_retained():
        _take(fleet, msg, shadows, reports)
    for shadow in shadows.values():
        if shadow.group is not None:
            shadow.devices = sorted(set(shadow.devices) | set(fleet.view.members(shadow.group)))
    return sorted(shadows.values(), key=lambda s: s.rollout), reports


def _take(
    fleet: Fleet, msg: Message, shadows: dict[str, Shadow], reports: dict[str, ShadowReport]
) -> None:
    try:
        parsed = fleet.topics.parse(msg.topic)
    except TopicError:
        return
    if parsed.kind not in {SHADOW_DEVICE, SHADOW_GROUP, SHADOW_REPORT}:
        fleet.handle(msg, live=False)
        return
    if not msg.payload:
        return
    try:
        if parsed.kind == SHADOW_REPORT:
            report = decode(ShadowReport, msg.payload, max_bytes=MAX_REPORT_BYTES)
            if report.device_id == parsed.device_id:
                reports[report.device_id] = report
            return
        manifest = _manifest_of(msg.payload)
    except (DecodeError, ValueError):
        return  # the host's own topics: nothing else writes them (ACL)
    if manifest.shadow is None:
        return
    shadow = shadows.setdefault(f"{manifest.name}-v{manifest.version}", Shadow(manifest))
    shadow.topics.append(msg.topic)
    if parsed.group is not None:
        shadow.group = parsed.group
    if parsed.device_id is not None:
        shadow.devices.append(parsed.device_id)


def _manifest_of(envelope: bytes) -> Manifest:
    try:
        payload = base64.b64decode(decode_envelope(envelope).payload, validate=True)
    except binascii.Error as exc:
        raise DecodeError(f"shadow manifest payload: {exc}") from exc
    return Manifest.model_validate_json(payload)


def find_shadow(shadows: list[Shadow], rollout: str | None) -> Shadow:
    """The shadow named ``rollout``, or the only one.

    Raises:
        FleetError: None, not found, or several and no name.
    """
    names = ", ".join(s.rollout for s in shadows) or "none"
    if rollout is None:
        if len(shadows) == 1:
            return shadows[0]
        if not shadows:
            raise FleetError("no shadow is running (start one with `edgefleet push --shadow`)")
        raise FleetError(f"several shadows are running ({names}): name one")
    for shadow in shadows:
        if shadow.rollout == rollout:
            return shadow
    raise FleetError(f"no shadow {rollout!r} on the broker; running: {names}")


def summarize(
    shadow: Shadow, reports: dict[str, ShadowReport], truth: dict[str, str] | None = None
) -> FleetSummary:
    """Fleet-wide figures of one shadow from its targets' reports.

    ``truth`` (input file name -> true label, e.g. a labelled folder): both models'
    accuracy over the inputs each report lists in ``samples`` (the latest of each device).
    """
    m = shadow.manifest
    mine = {
        d: r
        for d, r in reports.items()
        if d in shadow.devices and (r.name, r.version) == (m.name, m.version)
    }
    summary = FleetSummary(shadow, mine, [d for d in shadow.devices if d not in mine])
    ratios = []
    right, total = {"active": 0, "candidate": 0}, 0
    for report in mine.values():
        summary.compared += report.compared
        summary.agreed += report.agreed
        summary.failures += report.failures
        summary.dropped += report.dropped
        for active, row in report.confusion.items():
            merged = summary.confusion.setdefault(active, {})
            for cand, n in row.items():
                merged[cand] = merged.get(cand, 0) + n
        if (ratio := device_ratio(report)) is not None:
            ratios.append(ratio)
        for source, active, cand in report.samples if truth is not None else ():
            label = truth.get(Path(source).name) if truth is not None else None
            if label is not None:
                total += 1
                right["active"] += active == label
                right["candidate"] += cand == label
    summary.latency_ratio = max(ratios) if ratios else None  # the slowest device decides
    if truth is not None:
        summary.accuracy = {k: (v / total if total else None) for k, v in right.items()}
    return summary


def wait_summary(
    fleet: Fleet, shadow: Shadow, *, timeout: float, until_finished: bool = True
) -> FleetSummary:
    """Follow the reports of ``shadow`` until every target finished (or ``timeout``)."""
    t = fleet.topics
    fleet.conn.subscribe(t.all_shadow_reports())
    shadows: dict[str, Shadow] = {}
    reports: dict[str, ShadowReport] = {}
    deadline = time.monotonic() + timeout
    summary = summarize(shadow, reports)
    while time.monotonic() < deadline:
        msg = fleet.conn.next_message(min(0.5, max(0.0, deadline - time.monotonic())))
        if msg is not None:
            _take(fleet, msg, shadows, reports)
            summary = summarize(shadow, reports)
        if until_finished and summary.finished:
            break
    return summary


# -- ending ------------------------------------------------------------------------------


def stop_shadow(fleet: Fleet, shadow: Shadow, *, clear_chunks: bool = True) -> None:
    """Clear the shadow's retained manifests: devices end the comparison and report it.

    ``clear_chunks``: also clear its retained chunks unless a push still wants them.
    """
    for topic in shadow.topics:
        publish_desired(fleet, topic, b"")
    if not clear_chunks:
        return
    wanted = fleet.registry.desired_shas()
    infos = [
        fleet.conn.publish(fleet.topics.chunk(v.sha256, i), b"", retain=True)
        for v in shadow.manifest.variants
        if v.sha256 not in wanted
        for i in range(v.chunk_count)
    ]
    fleet.conn.wait_published(infos)


def promote(fleet: Fleet, shadow: Shadow, plan: PushPlan) -> RolloutResult:
    """Roll the candidate out as an ordinary signed push to the shadow's targets.

    ``plan`` carries wait/canary/max-failures; its targets are the shadow's. The shadow
    is ended once the rollout was not aborted.

    Raises:
        FleetError: This host does not have the model's bytes (another state dir).
    """
    blobs: dict[str, bytes] = {}
    for variant in shadow.manifest.variants:
        data = fleet.registry.model_bytes(variant.sha256)
        if data is None:
            raise FleetError(
                f"this host's state dir has no copy of {shadow.rollout} ({variant.sha256[:12]}):"
                " promote from the host that started the shadow (same --state-dir), or push"
                " the .tflite with `edgefleet push`"
            )
        blobs[variant.accelerator] = data
    template = shadow.manifest.model_copy(update={"shadow": None, "key_id": ""})
    group = validate_id(shadow.group, what="group name") if shadow.group else None
    rollout = PushPlan(
        devices=() if group else tuple(shadow.devices),
        group=group,
        wait=plan.wait,
        canary=plan.canary,
        max_failures=plan.max_failures,
        expires_in=plan.expires_in,
        force=True,  # the shadow's own targets
    )
    result = push(fleet, ModelFiles(shadow.manifest.name, blobs, template), rollout)
    if not result.aborted:
        stop_shadow(fleet, shadow, clear_chunks=False)  # the push wants them
    return result
