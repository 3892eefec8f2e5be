"""The host side of shadows without a broker: --until, --promote-if, fleet-wide figures."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._shadow import Condition, Shadow, parse_until, refusals, summarize
from edgefleet.shared.shadow import LatencySummary, ShadowReport
from support.manifests import shadow_manifest


def _shadow() -> Shadow:
    manifest = shadow_manifest(version=7, sample=0.5)
    return Shadow(manifest, ["p/groups/g/shadow"], "g", ["d1", "d2", "d3"])


def _report(device: str, compared: int, agreed: int, act: float, cand: float, **kw) -> ShadowReport:
    return ShadowReport(
        device_id=device,
        name="cand",
        version=7,
        state=kw.pop("state", "running"),
        sample=0.5,
        compared=compared,
        agreed=agreed,
        active_latency=LatencySummary(p50_ms=act, p95_ms=act),
        candidate_latency=LatencySummary(p50_ms=cand, p95_ms=cand),
        ts=1.0,
        **kw,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500-inputs", (500, None)),
        ("2h", (None, 7200.0)),
        ("30m", (None, 1800.0)),
        ("90s", (None, 90.0)),
    ],
)
def test_until_takes_inputs_or_a_duration(text, expected):
    assert parse_until(text) == expected


@pytest.mark.parametrize("text", ["0-inputs", "2 hours", "500", "-1h"])
def test_until_says_what_it_expects(text):
    with pytest.raises(FleetError, match="500-inputs"):
        parse_until(text)


def test_promote_if_names_every_term_that_does_not_hold():
    shadow = _shadow()
    reports = {
        "d1": _report("d1", 100, 99, 2.0, 2.2, samples=[("x/s1.npy", "a", "a")]),
        "d2": _report("d2", 100, 95, 2.0, 3.0, samples=[("s2.npy", "b", "a")]),
        "d3": _report("d3", 5, 5, 1.0, 1.0, confusion={"a": {"a": 5}}),
        "other": _report("other", 1000, 0, 1.0, 1.0),  # not a target: ignored
    }
    summary = summarize(shadow, reports, truth={"s1.npy": "a", "s2.npy": "b"})
    assert summary.compared == 205
    assert summary.agreement == pytest.approx(199 / 205)
    assert summary.latency_ratio == pytest.approx(1.5)  # the slowest device decides
    assert summary.accuracy == {"active": 1.0, "candidate": 0.5}
    assert summary.confusion == {"a": {"a": 5}}
    assert Condition.parse("agreement>=97%,latency<=1.6x").check(summary) == []
    failed = Condition.parse("agreement>=0.98,latency<=1.2x,compared>=300").check(summary)
    assert failed == [
        "agreement 0.9707 is not >= 0.98",
        "latency 1.5 is not <= 1.2",
        "compared 205 is not >= 300",
    ]


def test_a_report_for_another_version_counts_as_missing():
    reports = {"d1": _report("d1", 10, 10, 1.0, 1.0).model_copy(update={"version": 6})}
    summary = summarize(_shadow(), reports)
    assert summary.missing == ["d1", "d2", "d3"]
    assert not summary.finished
    assert Condition.parse("agreement>=0.9").check(summary) == ["agreement unknown is not >= 0.9"]


@pytest.mark.parametrize("text", ["accuracy>=0.9", "agreement=0.9", "agreement>=high"])
def test_promote_if_refuses_what_it_cannot_read(text):
    with pytest.raises(FleetError, match="use terms like"):
        Condition.parse(text)


def test_shadow_options_without_shadow_are_refused(tmp_path):
    out = CliRunner().invoke(
        app, ["push", str(tmp_path / "m.tflite"), "--group", "g", "--sample", "0.5"]
    )
    assert out.exit_code != 0
    assert "add --shadow" in out.output


def test_a_failed_or_silent_target_is_refused_whatever_the_terms_say():
    reports = {
        "d1": _report("d1", 100, 100, 1.0, 1.0, state="done"),
        "d2": _report("d2", 0, 0, 1.0, 1.0, state="failed", reason="health check: bad"),
    }
    summary = summarize(_shadow(), reports)
    condition = Condition.parse("agreement>=0.97,latency<=1.2x")
    assert condition.check(summary) == []  # d1's figures alone hold ...
    assert refusals(condition, summary) == [  # ... but d2's candidate failed, d3 is silent
        "the candidate failed on d2",
        "no report from d3",
    ]
    reports["d2"] = _report("d2", 50, 50, 1.0, 1.0, state="done")
    reports["d3"] = _report("d3", 50, 49, 1.0, 1.0, state="done")
    assert refusals(condition, summarize(_shadow(), reports)) == []
