"""Rollout decisions as pure functions: where each device stands, wave planning, abort criteria.

No I/O here: ``edgefleet.host.fleet._push`` feeds in the devices' ``Reported`` messages and acts
on the answers, and unit tests feed in hand-made ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from edgefleet.shared.messages import Reported, UpdateState

# A device report with no version (a manifest refused before it could be trusted) counts for
# this rollout only if it is newer than the rollout's start, allowing this much clock skew.
CLOCK_SKEW_S = 5.0
_TERMINAL_FAIL = (UpdateState.REJECTED, UpdateState.FAILED)


class Phase(str, Enum):
    """Where one target device stands in a rollout: the protocol's update state, or pending.

    Every phase but the host-only one takes its value from the device's :class:`UpdateState`
    of the same name (:meth:`of` maps a reported state to its phase; a unit test checks that
    every state has one), so the host adds only what no device reports. The members are
    spelled out, not generated, so type checkers see them. ``idle`` has no phase: a device
    that is idle, or busy with another rollout, is pending for this one.
    """

    # Host-only: the device has not started on this rollout (never reported, idle, or still
    # on another version); it is never a state in a device's `reported` message.
    PENDING = "pending"
    # The protocol's update states (edgefleet.shared.messages.UpdateState), idle excepted.
    DOWNLOADING = UpdateState.DOWNLOADING.value
    VERIFYING = UpdateState.VERIFYING.value
    HEALTH_CHECK = UpdateState.HEALTH_CHECK.value
    ACTIVATING = UpdateState.ACTIVATING.value
    ACTIVE = UpdateState.ACTIVE.value
    REJECTED = UpdateState.REJECTED.value
    FAILED = UpdateState.FAILED.value

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, state: UpdateState) -> Phase:
        """The phase of a device reporting ``state`` about this rollout (idle: pending)."""
        return cls.PENDING if state is UpdateState.IDLE else cls(state.value)

    @property
    def done(self) -> bool:
        """True once the device will not move on its own (active, rejected or failed)."""
        return self in (Phase.ACTIVE, Phase.REJECTED, Phase.FAILED)

    @property
    def bad(self) -> bool:
        """True if the device refused or failed the update."""
        return self in (Phase.REJECTED, Phase.FAILED)


@dataclass(frozen=True)
class Progress:
    """One target device's position in a rollout, for display and decisions."""

    device_id: str
    phase: Phase
    fraction: float = 0.0
    reason: str | None = None
    message: str | None = None
    active_version: int | None = None
    online: bool | None = None

    def describe(self) -> str:
        """A short human line: ``downloading 40%``, ``rejected: bad_signature (...)``."""
        if self.phase == Phase.DOWNLOADING:
            text = f"downloading {self.fraction * 100:.0f}%"
        elif self.phase.bad:
            text = f"{self.phase}: {self.reason or 'unknown'}"
            if self.message:
                text += f" ({self.message[:120]})"
        elif self.phase == Phase.ACTIVE:
            text = f"active v{self.active_version}"
        else:
            text = str(self.phase)
        if self.online is False and not self.phase.done:
            text += " (offline: gets it on return)"
        return text


def classify(
    device_id: str,
    report: Reported | None,
    *,
    version: int,
    shas: frozenset[str],
    started_at: float,
    live: bool = False,
    online: bool | None = None,
) -> Progress:
    """Where ``device_id`` stands in the rollout of ``version`` given its latest report.

    Args:
        device_id: The target device.
        report: Its latest ``Reported`` (retained or live), or None if it never reported.
        version: The version being rolled out.
        shas: The variant hashes of that version.
        started_at: Unix time the rollout published its manifest.
        live: The report arrived after the rollout started (not a retained leftover).
        online: From the device's status, if known.

    Returns:
        A device at or beyond ``version`` counts as active whatever its state says (e.g. it
        refused a second, equal-version copy of the manifest as a "rollback").
    """
    base = Progress(device_id, Phase.PENDING, online=online)
    if report is None:
        return base
    active = report.active_version
    at_target = active is not None and active >= version
    if report.state == UpdateState.ACTIVE and report.version is not None:
        at_target = at_target or report.version >= version
    if at_target:
        return Progress(
            device_id, Phase.ACTIVE, 1.0, active_version=max(active or 0, version), online=online
        )
    if not _about_this_rollout(
        report, version=version, shas=shas, started_at=started_at, live=live
    ):
        return Progress(device_id, Phase.PENDING, active_version=active, online=online)
    phase = Phase.of(report.state)
    if phase == Phase.ACTIVE:  # active, but on something older than the target
        phase = Phase.PENDING
    return Progress(
        device_id, phase, report.progress, report.reason, report.message, active, online
    )


def _about_this_rollout(
    report: Reported, *, version: int, shas: frozenset[str], started_at: float, live: bool
) -> bool:
    if report.version is not None:
        return report.version == version or (
            report.sha256 is not None and report.sha256 in shas and report.version >= version
        )
    # A refusal of an untrusted manifest carries no version: judge it by when it happened.
    return report.state in _TERMINAL_FAIL and (
        live or (report.ts is not None and report.ts >= started_at - CLOCK_SKEW_S)
    )


def plan_waves(
    members: list[str], *, online: set[str], canary: int = 0, max_failures: float | None = None
) -> list[list[str]]:
    """Split a group's known members into waves published on device topics.

    The first wave holds ``canary`` online devices. With ``max_failures``, the remaining
    online devices follow in waves that double in size (1, 2, 4, ... after the canary), so
    an abort leaves most of the fleet untouched. Whatever is left (offline devices, and
    devices that join later) is covered by the group topic published after the last wave.
    """
    ready = sorted(d for d in members if d in online)
    waves: list[list[str]] = []
    if canary > 0:
        waves.append(ready[:canary])
        ready = ready[canary:]
    if max_failures is not None:
        size = 2 * len(waves[0]) if waves else 1
        while ready:
            waves.append(ready[:size])
            ready = ready[size:]
            size *= 2
    return [w for w in waves if w]


def failure_limit_exceeded(
    progress: list[Progress], *, total: int, max_failures: float | None
) -> bool:
    """True when more than ``max_failures`` percent of ``total`` targets rejected or failed."""
    if max_failures is None or total == 0:
        return False
    failed = sum(1 for p in progress if p.phase.bad)
    return failed * 100.0 > max_failures * total


class Verdict(str, Enum):
    """What to do after looking at one wave."""

    WAIT = "wait"
    CONTINUE = "continue"
    ABORT = "abort"


def judge_wave(
    wave: list[Progress],
    everyone: list[Progress],
    *,
    canary: bool,
    total: int,
    max_failures: float | None,
) -> Verdict:
    """Decide whether a wave may be followed by the next.

    A canary wave aborts on its first failure and continues only when all of it is active;
    any wave aborts once the failure limit over all targets is exceeded, and otherwise
    continues once every device in it is done.
    """
    if canary and any(p.phase.bad for p in wave):
        return Verdict.ABORT
    if failure_limit_exceeded(everyone, total=total, max_failures=max_failures):
        return Verdict.ABORT
    if canary:
        return Verdict.CONTINUE if all(p.phase == Phase.ACTIVE for p in wave) else Verdict.WAIT
    return Verdict.CONTINUE if all(p.phase.done for p in wave) else Verdict.WAIT


def summary_exit_code(progress: list[Progress]) -> int:
    """0 if every target is active, else 1."""
    return 0 if progress and all(p.phase == Phase.ACTIVE for p in progress) else 1


def percent(part: int, whole: int) -> float:
    """``part`` of ``whole`` in percent (0 for an empty whole)."""
    return 0.0 if whole == 0 else 100.0 * part / whole


def bar(fraction: float, width: int = 20) -> str:
    """A text progress bar ``[#####-----]``."""
    filled = min(width, max(0, math.floor(fraction * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"
