"""Shadow deployments with real agents over a real Mosquitto (issue #22, "Done when").

Two agents run the tiny MNIST model; a candidate that is the same network with two labels
swapped runs in shadow on every input. The report's disagreement must match the true share
(the inputs the active model gives one of the two labels), auto-promotion must refuse it,
and the active predictions must be exactly what they are without a shadow. An agreeing
candidate (same network, another name, other bytes) is then promoted automatically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fleet_helpers import AgentFleet, wait_online
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.cli.shadow import auto_promote
from edgefleet.host.datasets import load_mnist
from edgefleet.host.fleet import PushPlan, close_fleet, load_model, push
from edgefleet.host.fleet._shadow import (
    Condition,
    ShadowPlan,
    find_shadow,
    read_state,
    start_shadow,
    summarize,
    wait_summary,
)
from edgefleet.host.quantize import describe, embed_model_info
from support.agent import (
    MNIST_LABELS,
    MNIST_PREPROCESS,
    AgentProcess,
    FakeHost,
    Signer,
    bare_predictions,
    mnist_eval_pngs,
    shared_mnist_model,
    write_agent_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUP = "shadowed"
DEVICES = ("sh-a", "sh-b")
SWAP = ("1", "7")  # the candidate calls every 1 a 7 and every 7 a 1
PER_DEVICE = 60
BATCH = 6
CONDITION = "agreement>=0.97,latency<=4x"  # latency: both run the same network on 2 busy cores


def _candidate(bundle, directory: Path, *, name: str, labels: tuple[str, ...]) -> Path:
    """The bundle's network with other metadata (name, label order): other bytes, other sha."""
    info = describe(bundle.data, name=name, mode="int8", labels=labels, preprocess=MNIST_PREPROCESS)
    path = directory / f"{name}.tflite"
    path.write_bytes(embed_model_info(bundle.data, info))
    return path


def _feed(fake: FakeHost, watch: dict[str, Path], start: int) -> tuple[dict[str, str], list]:
    """PER_DEVICE real MNIST digits into each device's folder, BATCH at a time (as a scanner
    would deliver them, so that the candidate's queue never overflows); their records."""
    sources: dict[str, str] = {}
    for first in range(0, PER_DEVICE, BATCH):
        batch: dict[str, str] = {}
        for n, (device, folder) in enumerate(watch.items()):
            at = start + n * PER_DEVICE + first
            batch.update(dict.fromkeys(mnist_eval_pngs(folder, BATCH, start=at), device))
        _wait_records(fake, batch)
        sources.update(batch)
    return sources, _wait_records(fake, sources)


def _wait_records(fake: FakeHost, sources: dict[str, str], timeout: float = 60.0) -> list:
    def done(host: FakeHost) -> list | None:
        mine = [r for r in host.records.values() if r.source in sources]
        return mine if {r.source for r in mine} == set(sources) else None

    return fake.wait(done, timeout)


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory):
    return shared_mnist_model(tmp_path_factory)


def test_a_swapped_candidate_is_measured_and_refused_an_agreeing_one_promoted(
    broker, prefix, tmp_path, mnist_bundle
):
    agents = AgentFleet(tmp_path / "agents", broker.url, prefix, Signer(tmp_path / "keys"))
    watch = {d: tmp_path / "inbox" / d for d in DEVICES}
    for device in DEVICES:
        watch[device].mkdir(parents=True)
        agents.configs[device] = write_agent_config(
            tmp_path / "agents" / device,
            device_id=device,
            broker_url=broker.url,
            prefix=prefix,
            keys=[agents.signer.public_path],
            groups=[GROUP],
            watch_dir=watch[device],
        )
        agents.agents[device] = AgentProcess(agents.configs[device])
    fake = FakeHost(broker.url, prefix)  # stores and acks the predictions
    fleet = agents.host(tmp_path / "host-state")
    try:
        wait_online(fleet, list(DEVICES))
        result = push(fleet, load_model(mnist_bundle.path), PushPlan(group=GROUP, wait=60))
        assert result.exit_code == 0, agents.logs()

        # -- a candidate with two labels swapped, on every input ----------------------------
        swapped = [
            SWAP[1] if x == SWAP[0] else SWAP[0] if x == SWAP[1] else x for x in MNIST_LABELS
        ]
        bad = _candidate(mnist_bundle, tmp_path, name="mnist_swapped", labels=tuple(swapped))
        cli = [
            "--broker",
            broker.url,
            "--prefix",
            prefix,
            "--state-dir",
            str(tmp_path / "host-state"),
        ]
        out = CliRunner().invoke(
            app,
            [
                *("push", str(bad), "--group", GROUP, "--shadow", "--sample", "1"),
                *("--until", f"{PER_DEVICE}-inputs", "--key", str(agents.key_file), *cli),
            ],
        )
        assert out.exit_code == 0, out.output
        assert "shadow mnist_swapped-v2 (int8) on group shadowed, sample 100%" in out.output
        shadow = find_shadow(read_state(fleet)[0], "mnist_swapped-v2")
        key = str(agents.key_file)
        assert sorted(shadow.devices) == sorted(DEVICES)
        _wait_running(fleet, shadow)
        sources, records = _feed(fake, watch, start=0)
        summary = wait_summary(fleet, shadow, timeout=60)
        assert summary.finished, (summary.reports, agents.logs())
        assert summary.compared == len(sources), summary.reports

        _check_swapped(summary, sources, records, mnist_bundle)
        _check_cli_report(cli, tmp_path, records, summary)

        # Promotion refuses it (on the command line, then the auto-promotion rule); every
        # device keeps the active model.
        out = CliRunner().invoke(
            app, ["shadow", "promote", "mnist_swapped-v2", "--if", CONDITION, "--key", key, *cli]
        )
        assert out.exit_code == 1, out.output
        assert "not promoted" in out.output
        assert "agreement 0.7" in out.output or "agreement 0.8" in out.output
        assert Condition.parse(CONDITION).check(summary)
        code = auto_promote(fleet, shadow, Condition.parse(CONDITION), 20, 0, None)
        assert code == 1
        out = CliRunner().invoke(app, ["shadow", "stop", *cli])
        assert out.exit_code == 0, out.output
        assert read_state(fleet)[0] == []
        fleet.pump(1.0)
        assert {fleet.view.statuses[d].model_name for d in DEVICES} == {"mnist_tiny"}

        # -- an agreeing candidate: promoted automatically -------------------------------
        _promote_agreeing(fleet, fake, watch, mnist_bundle, tmp_path, agents=agents)
    finally:
        close_fleet(fleet)
        fake.close()
        agents.stop_all()


def _check_cli_report(cli: list[str], tmp_path: Path, records: list, summary) -> None:
    """`shadow report --json --truth DIR` says what the summary says, plus both accuracies."""
    truth = load_mnist("eval").y
    for r in records:  # a labelled folder: DIR/<label>/<file name>
        folder = tmp_path / "truth" / str(truth[int(r.source[6:11])])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / r.source).touch()
    out = CliRunner().invoke(
        app, ["shadow", "report", "--json", "--truth", str(tmp_path / "truth"), *cli]
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["rollout"] == "mnist_swapped-v2"
    assert doc["fleet"]["agreement"] == summary.agreement
    assert set(doc["reports"]) == set(DEVICES)
    right = sum(r.label == str(truth[int(r.source[6:11])]) for r in records) / len(records)
    assert doc["fleet"]["accuracy"]["active"] == pytest.approx(right)
    assert doc["fleet"]["accuracy"]["candidate"] < right  # the swap costs it the 1s and 7s
    text = CliRunner().invoke(app, ["shadow", "report", *cli]).output
    assert "confusion (rows: active label, columns: candidate label)" in text


def _check_swapped(summary, sources, records, mnist_bundle) -> None:
    # Disagreement: within 2 points of the true share (active label is 1 or 7).
    true_share = sum(r.label in SWAP for r in records) / len(records)
    assert 0.05 < true_share < 0.6  # the check means something
    assert summary.agreement is not None
    assert abs((1 - summary.agreement) - true_share) <= 0.02
    for a, b in (SWAP, SWAP[::-1]):  # the confusion matrix names the swap
        assert summary.confusion[a] == {b: sum(r.label == a for r in records)}
    for label, row in summary.confusion.items():
        if label not in SWAP:
            assert row == {label: row[label]}
    report = summary.reports[DEVICES[0]]
    assert report.active_latency.p50_ms
    assert report.candidate_latency.p50_ms
    assert report.active_name == "mnist_tiny"

    # The active stream is unchanged: one record per input, the bare model's labels.
    assert len(records) == len(sources)  # nothing lost, nothing duplicated
    assert all(r.model_name == "mnist_tiny" and r.error is None for r in records)
    order = sorted(records, key=lambda r: r.source)
    images = np.stack([_digit(r.source) for r in order])
    reference = bare_predictions(mnist_bundle.path, images)
    assert [r.label for r in order] == [MNIST_LABELS[i] for i in reference]


def _promote_agreeing(fleet, fake, watch, mnist_bundle, tmp_path, *, agents) -> None:
    good = load_model(_candidate(mnist_bundle, tmp_path, name="mnist_tiny_b", labels=MNIST_LABELS))
    shadow = start_shadow(
        fleet, good, ShadowPlan(group=GROUP, sample=1.0, until=f"{PER_DEVICE}-inputs")
    )
    _wait_running(fleet, shadow)
    _feed(fake, watch, start=2 * PER_DEVICE)
    code = auto_promote(fleet, shadow, Condition.parse(CONDITION), 60, 0, None)
    assert code == 0, agents.logs()
    fleet.pump(1.5)
    assert {fleet.view.statuses[d].model_name for d in DEVICES} == {"mnist_tiny_b"}
    shadows, reports = read_state(fleet)
    assert shadows == []  # promotion ended the shadow
    assert {reports[d].state for d in DEVICES} == {"done"}  # the final summary stays


def _wait_running(fleet, shadow, timeout: float = 60.0) -> None:
    """Until every target downloaded, checked and loaded the candidate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = wait_summary(fleet, shadow, timeout=0.5, until_finished=False)
        states = {d: r.state for d, r in summary.reports.items()}
        if not summary.missing and set(states.values()) == {"running"}:
            return
        assert "failed" not in states.values(), summary.reports
    raise TimeoutError(f"the shadow never ran everywhere: {summarize(shadow, {}).missing}")


def _digit(name: str) -> np.ndarray:
    """The digit image a record is about (the agent moved it out of the inbox)."""
    index = int(name.removeprefix("digit-").removesuffix(".png"))
    return load_mnist("eval").x[index]
