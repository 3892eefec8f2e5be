"""Rollout decisions from hand-made device reports: classification, waves, canary, abort."""

from __future__ import annotations

import pytest

from edgefleet.host.fleet._rollout import (
    Phase,
    Progress,
    Verdict,
    classify,
    failure_limit_exceeded,
    judge_wave,
    plan_waves,
    summary_exit_code,
)
from edgefleet.shared.messages import Reported, UpdateState

SHA = "a" * 64
OLD_SHA = "b" * 64
T0 = 1_000_000.0


def rep(state: str, **fields) -> Reported:
    return Reported(device_id="d1", state=UpdateState(state), **fields)


def cls(report: Reported | None, *, live: bool = False) -> Progress:
    return classify("d1", report, version=5, shas=frozenset({SHA}), started_at=T0, live=live)


def test_no_report_is_pending():
    assert cls(None).phase == Phase.PENDING


def test_downloading_this_version_shows_its_fraction():
    p = cls(rep("downloading", version=5, sha256=SHA, progress=0.4, active_version=4))
    assert (p.phase, p.fraction) == (Phase.DOWNLOADING, 0.4)
    assert p.describe() == "downloading 40%"


def test_a_report_about_an_older_version_is_pending_not_failed():
    p = cls(rep("failed", version=4, sha256=OLD_SHA, step="health_check", reason="health_check"))
    assert p.phase == Phase.PENDING


def test_active_at_or_beyond_the_target_counts_as_active_whatever_the_state():
    # e.g. the device refused an equal-version group copy of a manifest it already runs
    p = cls(rep("rejected", reason="rollback", active_version=5, ts=T0 + 1))
    assert p.phase == Phase.ACTIVE
    assert cls(rep("active", version=6, sha256=OLD_SHA, active_version=6)).phase == Phase.ACTIVE


def test_a_versionless_rejection_counts_only_if_it_is_newer_than_the_rollout():
    old = rep("rejected", reason="bad_signature", active_version=4, ts=T0 - 3600)
    new = rep("rejected", reason="bad_signature", active_version=4, ts=T0 + 2)
    assert cls(old).phase == Phase.PENDING
    assert cls(old, live=True).phase == Phase.REJECTED
    rejected = cls(new)
    assert rejected.phase == Phase.REJECTED
    assert rejected.describe().startswith("rejected: bad_signature")


def test_offline_pending_device_says_it_gets_the_update_on_return():
    p = classify("d1", None, version=5, shas=frozenset(), started_at=T0, online=False)
    assert "offline" in p.describe()


def test_waves_start_with_online_canaries_and_double_with_max_failures():
    members = [f"d{i:02d}" for i in range(12)]
    online = set(members) - {"d00"}
    waves = plan_waves(members, online=online, canary=2, max_failures=10)
    assert waves[0] == ["d01", "d02"]
    assert [len(w) for w in waves] == [2, 4, 5]
    assert all("d00" not in w for w in waves)  # offline: left to the group topic


def test_without_options_there_are_no_waves():
    assert plan_waves(["a", "b"], online={"a", "b"}) == []
    assert plan_waves(["a", "b"], online={"a", "b"}, max_failures=50) == [["a"], ["b"]]


def P(device: str, phase: Phase) -> Progress:  # noqa: N802 - short helper
    return Progress(device, phase)


def test_canary_aborts_on_first_failure_and_continues_only_when_all_active():
    wave = [P("a", Phase.ACTIVE), P("b", Phase.DOWNLOADING)]
    assert judge_wave(wave, wave, canary=True, total=10, max_failures=None) == Verdict.WAIT
    wave[1] = P("b", Phase.REJECTED)
    assert judge_wave(wave, wave, canary=True, total=10, max_failures=None) == Verdict.ABORT
    wave[1] = P("b", Phase.ACTIVE)
    assert judge_wave(wave, wave, canary=True, total=10, max_failures=None) == Verdict.CONTINUE


@pytest.mark.parametrize(
    ("failed", "limit", "exceeded"), [(1, 10, False), (2, 10, True), (0, 0, False), (1, 0, True)]
)
def test_failure_limit_is_more_than_p_percent_of_all_targets(failed, limit, exceeded):
    progress = [P(f"f{i}", Phase.FAILED) for i in range(failed)]
    assert failure_limit_exceeded(progress, total=10, max_failures=limit) is exceeded


def test_a_plain_wave_continues_once_done_even_with_tolerated_failures():
    wave = [P("a", Phase.ACTIVE), P("b", Phase.FAILED)]
    assert judge_wave(wave, wave, canary=False, total=20, max_failures=10) == Verdict.CONTINUE
    assert judge_wave(wave, wave, canary=False, total=5, max_failures=10) == Verdict.ABORT


def test_exit_code_is_zero_only_when_every_target_is_active():
    assert summary_exit_code([P("a", Phase.ACTIVE)]) == 0
    assert summary_exit_code([P("a", Phase.ACTIVE), P("b", Phase.PENDING)]) == 1
    assert summary_exit_code([]) == 1
