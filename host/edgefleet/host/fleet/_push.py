"""Push models over MQTT: sign the manifest, publish chunks once, roll out, watch, roll back.

Chunks are published once per model (retained, QoS 1) whatever the number of targets - the
broker fans them out - and stay retained while any target's latest manifest wants them, so
a device that was offline fetches the model on return without this host running. They are
cleared (empty retained payloads) once superseded. While a push waits, the host also answers
chunk re-requests (``Fleet.answer_chunk_request``). A group push records its wave plan before
the first wave (:mod:`._plans`). Rollout logic lives in ``edgefleet.host.fleet._rollout``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._checks import EXIT_BROKER_LOST, broker_loss, check_targets
from edgefleet.host.fleet._delta import (
    DeviceTransfer,
    as_delta,
    clear_content_chunks,
    delta_capable,
    plan_transfers,
    publish_delta_chunks,
)
from edgefleet.host.fleet._pushes import (
    PushRecord,
    build_id,
    choose_version,
    device_target,
    group_target,
)
from edgefleet.host.fleet._rollout import (
    Phase,
    Progress,
    Verdict,
    classify,
    judge_wave,
    plan_waves,
    summary_exit_code,
)
from edgefleet.shared.chunks import DEFAULT_CHUNK_SIZE, split_model
from edgefleet.shared.errors import EdgefleetError
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, sign_manifest
from edgefleet.shared.tflite_model import read_model_info
from edgefleet.shared.topics import validate_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.host.fleet._fleet import Fleet


DEFAULT_EXPIRY_S = 365 * 24 * 3600
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFiles:
    """A model's variants: accelerator -> file bytes, and the metadata read from the CPU one."""

    name: str
    blobs: dict[str, bytes]
    template: Manifest


def load_model(
    path: Path, *, name: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> ModelFiles:
    """Read a ``.tflite`` written by ``edgefleet quantize`` (and ``*_edgetpu.tflite`` beside it).

    Raises:
        FleetError: Missing file, or no embedded edgefleet metadata.
    """
    try:
        data = path.read_bytes()
        info = read_model_info(data)
    except OSError as exc:
        raise FleetError(f"cannot read model {path}: {exc}") from exc
    except EdgefleetError as exc:
        raise FleetError(f"{path} is not a usable TFLite model: {exc}") from exc
    if info is None:
        raise FleetError(
            f"{path} has no edgefleet metadata (name, labels, preprocessing): make it with "
            "`edgefleet quantize`, which embeds them, or, for a model made by another tool, "
            "give them to push: --labels FILE --input-scale S --input-zero-point Z"
        )
    blobs = {"cpu": data}
    tpu = path.with_name(f"{path.stem}_edgetpu.tflite")
    if tpu.is_file():
        blobs["edgetpu"] = tpu.read_bytes()
    variants = [
        ModelVariant.for_bytes(b, accelerator=a, chunk_size=chunk_size)  # type: ignore[arg-type]
        for a, b in blobs.items()
    ]
    model_name = name or info.name
    template = Manifest(
        name=validate_id(model_name, what="model name"),
        version=1,
        created_at=0,
        expires_at=1,
        targets=Targets(),
        variants=variants,
        mode=info.mode,
        input=info.input,
        output=info.output,
        preprocess=info.preprocess,
        labels=list(info.labels),
    )
    return ModelFiles(model_name, blobs, template)


def sign_for(
    template: Manifest,
    key: Ed25519PrivateKey,
    *,
    version: int,
    targets: Targets,
    expires_in: float = DEFAULT_EXPIRY_S,
) -> tuple[Manifest, bytes]:
    """Stamp version, targets and validity on a manifest template and sign it."""
    now = int(time.time())
    manifest = template.model_copy(
        update={
            "version": version,
            "targets": targets,
            "created_at": now,
            "expires_at": now + int(expires_in),
            "key_id": "",
        }
    )
    manifest = Manifest.model_validate(manifest.model_dump())
    return manifest, sign_manifest(manifest, key)


def publish_chunks(fleet: Fleet, blobs: dict[str, bytes], manifest: Manifest) -> int:
    """Publish every chunk of every variant once, retained, and wait for the broker's acks."""
    if manifest.v == 2:  # noqa: PLR2004 - v2: every chunk on its content topic
        return publish_delta_chunks(fleet, blobs, manifest)[1]
    infos = []
    for variant in manifest.variants:
        data = blobs[variant.accelerator]
        fleet.registry.keep_model(variant.sha256, data)
        for i, chunk in enumerate(split_model(data, chunk_size=variant.chunk_size)):
            infos.append(
                fleet.conn.publish(fleet.topics.chunk(variant.sha256, i), chunk, retain=True)
            )
    fleet.conn.wait_published(infos)
    return len(infos)


def clear_superseded_chunks(fleet: Fleet, before: list[PushRecord]) -> list[str]:
    """Clear the retained chunks of models no target desires any more."""
    still = fleet.registry.desired_shas()
    infos, cleared = [], []
    for record in before:
        for variant in record.manifest.variants:
            if variant.sha256 in still or variant.sha256 in cleared:
                continue
            cleared.append(variant.sha256)
            if variant.chunks is not None:  # v2: chunks by content, some shared
                infos += clear_content_chunks(fleet, variant, still)
                continue
            infos += [
                fleet.conn.publish(fleet.topics.chunk(variant.sha256, i), b"", retain=True)
                for i in range(variant.chunk_count)
            ]
    fleet.conn.wait_published(infos)
    return cleared


def publish_desired(fleet: Fleet, topic: str, envelope: bytes) -> None:
    """Publish a signed manifest (or b"" to clear) as the retained desired state."""
    fleet.conn.wait_published([fleet.conn.publish(topic, envelope, retain=True)])


@dataclass(frozen=True)
class PushPlan:
    """What to push where and how carefully."""

    devices: tuple[str, ...] = ()
    group: str | None = None
    version: int | None = None
    wait: float | None = None
    canary: int = 0
    max_failures: float | None = None
    expires_in: float = DEFAULT_EXPIRY_S
    force: bool = False
    full: bool = False  # send whole files even to devices that hold chunks of them

    def check(self) -> None:
        """Raise FleetError for contradictory options."""
        if bool(self.devices) == bool(self.group):
            raise FleetError("give either --device ID (one or more) or --group NAME")
        if (self.canary or self.max_failures is not None) and self.wait is None:
            raise FleetError("--canary and --max-failures need --wait SECONDS to judge each wave")
        if self.max_failures is not None and not 0 <= self.max_failures <= 100:  # noqa: PLR2004
            raise FleetError("--max-failures is a percentage between 0 and 100")
        for d in self.devices:
            validate_id(d)
        if self.group:
            validate_id(self.group, what="group name")


@dataclass
class RolloutResult:
    """How a push or rollback ended."""

    name: str
    version: int
    targets: list[str]
    progress: list[Progress]
    aborted: str | None = None
    waited: bool = False
    build: str = ""
    returned_to: str | None = None
    broker_lost: str | None = None
    transfers: list[DeviceTransfer] = field(default_factory=list)  # delta pushes (v2)
    bytes_published: int = 0
    # Delta pushes: device -> (bytes, chunks) sent again on its requests while waiting.
    resent: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name vN (mode sha)``: how a pushed build is named in every message."""
        return (
            f"{self.name} v{self.version} ({self.build})"
            if self.build
            else (f"{self.name} v{self.version}")
        )

    @property
    def exit_code(self) -> int:
        """0 only if every target is active (or, without waiting, nothing was aborted).

        3 (``EXIT_BROKER_LOST``) when the connection to the broker was lost while waiting
        and not every target is active: the outcome is unknown, not a device failure.
        """
        if self.broker_lost and summary_exit_code(self.progress) != 0:
            return EXIT_BROKER_LOST
        if self.aborted:
            return 1
        if not self.waited:
            return 0
        return summary_exit_code(self.progress)


@dataclass
class _Rollout:
    fleet: Fleet
    version: int
    shas: frozenset[str]
    targets: list[str]
    started_at: float = field(default_factory=time.time)
    lost: str | None = None

    def progress(self, devices: list[str] | None = None) -> list[Progress]:
        view = self.fleet.view
        return [
            classify(
                d,
                view.reports.get(d),
                version=self.version,
                shas=self.shas,
                started_at=self.started_at,
                live=d in view.live,
                online=s.online if (s := view.statuses.get(d)) else None,
            )
            for d in (devices if devices is not None else self.targets)
        ]

    def wait(
        self, wave: list[str], *, canary: bool, deadline: float, max_failures: float | None
    ) -> Verdict:
        """Pump messages until the wave is judged (or time runs out)."""
        while True:
            everyone = self.progress()
            if self.fleet.on_progress is not None:
                self.fleet.on_progress(everyone)
            verdict = judge_wave(
                self.progress(wave),
                everyone,
                canary=canary,
                total=len(self.targets),
                max_failures=max_failures,
            )
            if verdict != Verdict.WAIT or time.monotonic() >= deadline:
                return verdict
            self.fleet.pump(min(0.5, deadline - time.monotonic()))
            self.note_broker()

    def note_broker(self) -> None:
        """Remember, in words, that the broker connection dropped while we waited."""
        lost = broker_loss(self.fleet.conn)
        if lost is not None and self.lost is None:
            self.lost = lost
            log.warning("warning: %s", lost)


def next_version(fleet: Fleet, targets: list[str], requested: int | None) -> int:
    """The version to sign: the registry's record first, device claims within a bound.

    See :func:`edgefleet.host.fleet._pushes.choose_version`; ignored claims are logged.

    Raises:
        FleetError: ``requested`` is out of range or not above a version a target runs.
    """
    signed = fleet.registry.max_version()
    choice = choose_version(signed, fleet.view.claimed_versions(targets), requested)
    for line in choice.warnings(signed):
        log.warning("warning: %s", line)
    return choice.version


def group_members(fleet: Fleet, group: str) -> list[str]:
    """The group's targets; says so when membership is only what devices claim."""
    if not fleet.view.provisioned:
        log.warning(
            "warning: no fleet directory (--fleet DIR): the members of group %r are what "
            "devices claim in their status, UNVERIFIED; pass --fleet to use provisioning",
            group,
        )
    return fleet.view.members(group)


def push(fleet: Fleet, model: ModelFiles, plan: PushPlan) -> RolloutResult:
    """Push ``model`` as described by ``plan`` (see ``edgefleet push --help``).

    Raises:
        FleetError: Bad options, no signing key, broker trouble.
    """
    plan.check()
    if fleet.signing_key is None:
        raise FleetError("no signing key: pass --fleet DIR (fleet.toml names it) or --key FILE")
    fleet.observe()
    check_targets(fleet, plan)
    targets = list(plan.devices) if plan.devices else group_members(fleet, plan.group or "")
    version = next_version(fleet, targets, plan.version)
    return _roll_out(fleet, model.template, model.blobs, plan, targets, version, kind="push")


def _roll_out(  # noqa: PLR0917 - private orchestration shared by push and rollback
    fleet: Fleet,
    template: Manifest,
    blobs: dict[str, bytes],
    plan: PushPlan,
    targets: list[str],
    version: int,
    *,
    kind: str,
) -> RolloutResult:
    assert fleet.signing_key is not None  # noqa: S101 - checked by callers
    before = fleet.registry.latest_pushes()
    shas = frozenset(v.sha256 for v in template.variants)
    rollout = _Rollout(fleet, version, shas, targets)
    result = RolloutResult(
        template.name, version, targets, [], waited=plan.wait is not None, build=build_id(template)
    )
    if delta_capable(fleet, targets):  # v2: chunk lists; each device gets what it lacks
        template = as_delta(template, blobs)
    if template.v == 2:  # noqa: PLR2004
        result.transfers, wanted = plan_transfers(fleet, template, targets, full=plan.full)
        result.bytes_published, _ = publish_delta_chunks(fleet, blobs, template, wanted)
        for t in result.transfers:
            fleet.registry.record_transfer(t.device_id, template.name, version, t)
    else:
        result.bytes_published = sum(len(b) for b in blobs.values())
        publish_chunks(fleet, blobs, template)
    waves = (
        plan_waves(
            targets, online=fleet.view.online(), canary=plan.canary, max_failures=plan.max_failures
        )
        if plan.group
        else []
    )
    if plan.group:
        fleet.registry.record_plan(
            group_target(plan.group),
            version,
            canary=plan.canary,
            max_failures=plan.max_failures,
            waves=waves,
        )
    for n, wave in enumerate(waves):
        manifest, envelope = sign_for(
            template,
            fleet.signing_key,
            version=version,
            targets=Targets(devices=wave),
            expires_in=plan.expires_in,
        )
        for device in wave:
            publish_desired(fleet, fleet.topics.desired_device(device), envelope)
            fleet.registry.record_push(
                target=device_target(device), manifest=manifest, envelope=envelope, kind="canary"
            )
        deadline = time.monotonic() + (plan.wait or 0.0)
        verdict = rollout.wait(
            wave,
            canary=n == 0 and plan.canary > 0,
            deadline=deadline,
            max_failures=plan.max_failures,
        )
        if verdict != Verdict.CONTINUE:
            result.aborted = _abort_reason(
                rollout.progress(wave), canary=n == 0 and plan.canary > 0
            )
            fleet.registry.record_aborted(group_target(plan.group or ""), version, result.aborted)
            result.progress = rollout.progress()
            result.broker_lost = rollout.lost
            result.resent = _resent(fleet, template.name, version) if result.transfers else {}
            return result
    _publish_final(fleet, template, plan, version, targets, waves, kind=kind)
    clear_superseded_chunks(fleet, before)
    if plan.wait is not None:
        verdict = rollout.wait(
            targets,
            canary=False,
            deadline=time.monotonic() + plan.wait,
            max_failures=plan.max_failures,
        )
        if verdict == Verdict.ABORT and plan.group:
            # Devices that have not fetched the manifest yet (offline, slow) stay where they are.
            publish_desired(fleet, fleet.topics.desired_group(plan.group), b"")
            fleet.registry.record_cleared(group_target(plan.group))  # never re-asserted
            result.aborted = _abort_reason(rollout.progress(), canary=False)
            fleet.registry.record_aborted(group_target(plan.group), version, result.aborted)
    result.progress = rollout.progress()
    result.broker_lost = rollout.lost
    result.resent = _resent(fleet, template.name, version) if result.transfers else {}
    return result


def _resent(fleet: Fleet, name: str, version: int) -> dict[str, tuple[int, int]]:
    """Device -> (bytes, chunks) the host sent again on its requests (``Fleet`` records them)."""
    records = fleet.registry.transfer_records(name=name, version=version)
    return {t.device_id: (t.resent_bytes, t.resent_chunks) for t in records if t.resent_chunks}


def _abort_reason(wave: list[Progress], *, canary: bool) -> str:
    bad = [p for p in wave if p.phase.bad]
    who = ", ".join(f"{p.device_id} ({p.describe()})" for p in bad) or "none failed"
    if canary:
        if bad:
            return f"canary failed: {who}; the rest of the group was not updated"
        slow = [p.device_id for p in wave if p.phase != Phase.ACTIVE]
        return f"canary not active in time: {', '.join(slow)}; the rest was not updated"
    return f"failure limit exceeded: {who}; later waves were not started"


def _publish_final(  # noqa: PLR0917 - private helper of _roll_out
    fleet: Fleet,
    template: Manifest,
    plan: PushPlan,
    version: int,
    targets: list[str],
    waves: list[list[str]],
    *,
    kind: str,
) -> None:
    """The group topic after the waves (or each listed device's topic)."""
    assert fleet.signing_key is not None  # noqa: S101
    if plan.group:
        manifest, envelope = sign_for(
            template,
            fleet.signing_key,
            version=version,
            targets=Targets(groups=[plan.group]),
            expires_in=plan.expires_in,
        )
        publish_desired(fleet, fleet.topics.desired_group(plan.group), envelope)
        fleet.registry.record_push(
            target=group_target(plan.group),
            manifest=manifest,
            envelope=envelope,
            kind=kind,
            members=tuple(targets),
        )
        # The group manifest now covers the wave devices: one source of truth per device.
        for device in (d for wave in waves for d in wave):
            publish_desired(fleet, fleet.topics.desired_device(device), b"")
            fleet.registry.record_cleared(device_target(device))
        return
    manifest, envelope = sign_for(
        template,
        fleet.signing_key,
        version=version,
        targets=Targets(devices=list(plan.devices)),
        expires_in=plan.expires_in,
    )
    for device in plan.devices:
        publish_desired(fleet, fleet.topics.desired_device(device), envelope)
        fleet.registry.record_push(
            target=device_target(device), manifest=manifest, envelope=envelope, kind=kind
        )
