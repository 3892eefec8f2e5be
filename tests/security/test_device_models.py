"""Hostile models and manifests against a real agent on a real mosquitto (issue 16: 2, 7).

Real signed models, converted by the real TFLite converter, pushed to a real agent process:

* a signed manifest of 100000 chunks of 1 byte (the reassembler used to raise) and a model
  of 3 million outputs (3 million label strings) are refused at verification
  (``too_many_chunks``, ``too_many_outputs``) before any download;
* a model that passes its health check (all-zero input) but gives NaN on real inputs, and
  one whose invoke fails on real inputs (an out-of-range GATHER), count as failed after
  ``[safety] model_failures`` inputs: the agent reverts to the previous model, records the
  bad one (its retained manifest is not installed again) and reports ``failed`` /
  ``serving`` / ``failed_on_inputs``;
* an agent that keeps dying (three unclean exits within the window) starts in safe mode:
  last-known-good model, the file in flight quarantined in ``rejected/``, ``safe_mode`` in
  its status.

After each attack the agent is running, the old model serves the next valid input, a
restart leaves it running, and a good model pushed afterwards activates.
"""

# TensorFlow loads lazily, only in the model builders.
# ruff: noqa: PLC0415

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.shared.chunks import chunk_count
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, sign_manifest
from edgefleet.shared.messages import UpdateState
from support.agent import ModelBundle, interpreter_specs, mnist_eval_pngs, shared_mnist_model
from support.faults import Rig, ping, variant_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SAFETY = "\n[safety]\nmodel_failures = 3\nmodel_failure_window = 5\n"


# -- the hostile models (real TFLite, float32 in and out, MNIST's input) ------------------


def _convert(fn: Any, out: Path, name: str) -> ModelBundle:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    data = converter.convert()
    out.write_bytes(data)
    inp, outp = interpreter_specs(out)
    return ModelBundle(path=out, data=data, input=inp, output=outp, name=name)


def build_hostile_models(directory: Path) -> dict[str, ModelBundle]:
    """``nan``: sqrt(0.5 - max(x)), finite on zeros, NaN on any digit; ``gather``: an index
    of max(x) * 1000 into 10 values, fine on zeros, out of range on a digit; ``huge``: the
    input tiled to 3,000,368 outputs."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((784, 10)).astype("float32") * 0.01)
    ten = tf.constant(np.arange(10, dtype=np.float32))
    spec = [tf.TensorSpec([1, 28, 28, 1], tf.float32)]

    @tf.function(input_signature=spec)
    def nan(x: Any) -> Any:
        logits = tf.matmul(tf.reshape(x, [1, 784]), w)
        return tf.nn.softmax(logits) + tf.sqrt(0.5 - tf.reduce_max(x))

    @tf.function(input_signature=spec)
    def gather(x: Any) -> Any:
        logits = tf.matmul(tf.reshape(x, [1, 784]), w)
        index = tf.reshape(tf.cast(tf.reduce_max(x) * 1000.0, tf.int32), [1])
        return tf.nn.softmax(logits) + tf.gather(ten, index)

    @tf.function(input_signature=spec)
    def huge(x: Any) -> Any:
        return tf.tile(tf.reshape(x, [1, 784]), [1, 3827])

    directory.mkdir(parents=True, exist_ok=True)
    return {
        name: _convert(fn, directory / f"{name}.tflite", f"hostile_{name}")
        for name, fn in (("nan", nan), ("gather", gather), ("huge", huge))
    }


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelBundle]:
    return build_hostile_models(tmp_path_factory.mktemp("hostile"))


def make_rig(tmp_path: Path, broker: Any, prefix: str, **kw: Any) -> Rig:
    return Rig(tmp_path, broker.url, prefix, extra=kw.pop("extra", SAFETY), **kw)


def serving(rig: Rig, version: int) -> None:
    """The agent is up and its next valid input is classified by ``version``."""
    assert rig.agent.proc.poll() is None, rig.agent.log()[-3000:]
    record = ping(rig.host, rig.device_id, timeout=30)
    assert (record.model_version, record.error) == (version, None), record
    assert record.label in {str(i) for i in range(10)}


def restart(rig: Rig) -> int:
    """Stop the agent in order and start it again; return how many reports came before."""
    assert rig.agent.stop() == 0, rig.agent.log()[-3000:]
    with rig.host.lock:
        seen = len(rig.host.reports)
    rig.start()
    return seen


def report_after(rig: Rig, seen: int, **fields: Any) -> Any:
    """A report matching ``fields`` among those after the first ``seen``."""
    return rig.host.wait(
        lambda h: next(
            (
                r
                for r in h.reports[seen:]
                if r.device_id == rig.device_id
                and all(getattr(r, k) == v for k, v in fields.items())
            ),
            None,
        ),
        30,
    )


def bad_models(rig: Rig) -> dict[str, Any]:
    return json.loads((rig.state_dir / "bad_models.json").read_bytes())


# -- manifests and models refused at verification -----------------------------------------


def test_chunk_bomb_and_huge_output_models_are_refused_before_download(
    tmp_path, broker, prefix, mnist_bundle, hostile
):
    rig = make_rig(tmp_path, broker, prefix)
    try:
        rig.start()
        rig.push(mnist_bundle, 1)
        rig.wait_report(state=UpdateState.ACTIVE, version=1)

        # A signed manifest of 100000 chunks of one byte: used to pass, then crash the
        # reassembler (ValueError), again on every restart with the retained manifest.
        now = int(time.time())
        bomb = Manifest(
            name="bomb",
            version=2,
            created_at=now,
            expires_at=now + 3600,
            targets=Targets(devices=[rig.device_id]),
            variants=[
                ModelVariant(
                    accelerator="cpu",
                    sha256="ab" * 32,
                    size=100_000,
                    chunk_size=1,
                    chunk_count=chunk_count(100_000, 1),
                )
            ],
            mode="int8",
            input=mnist_bundle.input,
            output=mnist_bundle.output,
            preprocess=mnist_bundle.preprocess,
            labels=list(mnist_bundle.labels),
        )
        rig.host.push(sign_manifest(bomb, rig.signer.key), device=rig.device_id)
        report = rig.wait_report(state=UpdateState.REJECTED, version=2)
        assert report.reason == "too_many_chunks", report
        assert "100000 chunks" in (report.message or "")
        assert not (rig.state_dir / "downloads" / ("ab" * 32)).exists()
        serving(rig, 1)

        # A real model of 3,000,368 outputs: refused from its manifest, never downloaded.
        rig.push(hostile["huge"], 3)
        report = rig.wait_report(state=UpdateState.REJECTED, version=3)
        assert report.reason == "too_many_outputs", report
        assert not [r for r in rig.host.chunk_requests if r.sha256 == hostile["huge"].sha256]
        serving(rig, 1)

        seen = restart(rig)  # the retained manifest is refused again, without a crash
        again = report_after(rig, seen, state=UpdateState.REJECTED, version=3)
        assert again.reason == "too_many_outputs"
        serving(rig, 1)

        rig.push(variant_of(mnist_bundle, b"good-after-bombs"), 4)
        rig.wait_report(state=UpdateState.ACTIVE, version=4)
        serving(rig, 4)
    finally:
        rig.close()


# -- models that fail on real inputs ------------------------------------------------------


def test_a_model_giving_nan_on_real_inputs_is_reverted(
    tmp_path, broker, prefix, mnist_bundle, hostile
):
    rig = make_rig(tmp_path, broker, prefix)
    try:
        rig.start()
        rig.push(mnist_bundle, 1)
        rig.wait_report(state=UpdateState.ACTIVE, version=1)
        rig.push(hostile["nan"], 2)  # all-zero health check: finite, so it activates
        rig.wait_report(state=UpdateState.ACTIVE, version=2)

        # Each real input gives NaN: a record that says so (it used to raise in pydantic).
        for _ in range(3):
            record = ping(rig.host, rig.device_id, timeout=30)
            assert (record.model_version, record.error, record.label) == (2, "non_finite", "")
        report = rig.wait_report(state=UpdateState.FAILED, version=2)
        assert (report.step, report.reason, report.active_version) == (
            "serving",
            "failed_on_inputs",
            1,
        )
        assert "3 of the last 3 inputs failed" in (report.message or "")
        assert hostile["nan"].sha256 in bad_models(rig)
        serving(rig, 1)

        seen = restart(rig)  # the retained v2 manifest: the same failure, not installed again
        again = report_after(rig, seen, state=UpdateState.FAILED, version=2)
        assert again.reason == "failed_on_inputs"
        assert "failed at serving before" in (again.message or "")
        serving(rig, 1)

        rig.push(variant_of(mnist_bundle, b"good-after-nan"), 3)
        rig.wait_report(state=UpdateState.ACTIVE, version=3)
        serving(rig, 3)
    finally:
        rig.close()


def test_a_model_whose_invoke_fails_on_real_inputs_is_reverted(
    tmp_path, broker, prefix, mnist_bundle, hostile
):
    inbox = tmp_path / "inbox"
    rig = make_rig(tmp_path, broker, prefix, watch_dir=inbox)
    try:
        rig.start()
        rig.push(mnist_bundle, 1)
        rig.wait_report(state=UpdateState.ACTIVE, version=1)
        rig.push(hostile["gather"], 2)  # index 0 on zeros: it passes the health check
        rig.wait_report(state=UpdateState.ACTIVE, version=2)

        # Three digits in the watched folder: each invoke fails (GATHER out of range); the
        # files go to rejected/ with the reason, the model counts as failed.
        mnist_eval_pngs(inbox, 3)
        report = rig.wait_report(state=UpdateState.FAILED, version=2)
        assert (report.step, report.reason, report.active_version) == (
            "serving",
            "failed_on_inputs",
            1,
        )
        assert "gather index out of bounds" in (report.message or "").lower()
        notes = wait_until(
            lambda: sorted((inbox / "rejected").glob("*.error.txt")) or None, timeout=10
        )
        assert "gather" in notes[0].read_text().lower()

        # The next valid file is classified by v1 (the previous model serves again).
        truth = mnist_eval_pngs(inbox, 1, start=10)
        (name,) = truth
        record = rig.host.wait(
            lambda h: next((r for r in h.records.values() if r.source == name), None), 30
        )
        assert (record.model_version, record.error) == (1, None)
        serving(rig, 1)

        seen = restart(rig)
        again = report_after(rig, seen, state=UpdateState.FAILED, version=2)
        assert "failed at serving before" in (again.message or "")
        serving(rig, 1)
        rig.push(variant_of(mnist_bundle, b"good-after-gather"), 3)
        rig.wait_report(state=UpdateState.ACTIVE, version=3)
        serving(rig, 3)
    finally:
        rig.close()


def test_with_no_previous_model_a_failing_one_is_deactivated_and_the_agent_runs_on(
    tmp_path, broker, prefix, mnist_bundle, hostile
):
    rig = make_rig(tmp_path, broker, prefix)
    try:
        rig.start()
        rig.push(hostile["nan"], 1)
        rig.wait_report(state=UpdateState.ACTIVE, version=1)
        for _ in range(3):
            ping(rig.host, rig.device_id, timeout=30)
        report = rig.wait_report(state=UpdateState.FAILED, version=1)
        assert report.active_version is None
        assert not (rig.state_dir / "active.json").exists()
        wait_until(lambda: (s := rig.host.latest_status(rig.device_id)) and s.model_version is None)
        assert rig.agent.proc.poll() is None
        seen = restart(rig)
        again = report_after(rig, seen, state=UpdateState.FAILED, version=1)
        assert "failed at serving before" in (again.message or "")
        rig.push(variant_of(mnist_bundle, b"good-after-none"), 2)
        rig.wait_report(state=UpdateState.ACTIVE, version=2)
        serving(rig, 2)
    finally:
        rig.close()


# -- never crash-loop: safe mode ------------------------------------------------------------


def test_repeated_unclean_exits_start_safe_mode_with_the_last_known_good_model(
    tmp_path, broker, prefix, mnist_bundle
):
    inbox = tmp_path / "inbox"
    rig = make_rig(tmp_path, broker, prefix, watch_dir=inbox)
    try:
        rig.start()
        rig.push(mnist_bundle, 1)
        rig.wait_report(state=UpdateState.ACTIVE, version=1)
        restart(rig)  # an orderly stop while v1 served: v1 is known-good
        v2 = variant_of(mnist_bundle, b"crash-loop")
        rig.push(v2, 2)
        rig.wait_report(state=UpdateState.ACTIVE, version=2)
        rig.agent.kill()  # unclean exit 1

        # A file whose classification kills the agent (the fault point stands in for a
        # SIGSEGV in the interpreter, or the OOM killer): unclean exits 2 and 3.
        mnist_eval_pngs(inbox, 1)
        for _ in range(2):
            died = rig.start(fault="after_outbox_commit")
            assert died.wait_exit(timeout=60) == 137
        assert (inbox / "digit-00000.png").exists()  # still in the inbox: it would loop

        rig.start()  # the 4th start after 3 unclean exits: safe mode
        report = rig.wait_report(state=UpdateState.FAILED, version=2)
        assert (report.step, report.reason, report.active_version) == ("serving", "crash_loop", 1)
        status = wait_until(
            lambda: (s := rig.host.latest_status(rig.device_id)) and s.safe_mode and s, timeout=20
        )
        assert status.unclean_exits == 3
        notes = wait_until(lambda: sorted((inbox / "rejected").glob("*.error.txt")), timeout=10)
        assert "quarantined in safe mode" in notes[0].read_text()
        assert not (inbox / "digit-00000.png").exists()
        serving(rig, 1)

        rig.push(variant_of(mnist_bundle, b"good-after-safe-mode"), 3)  # still lands
        rig.wait_report(state=UpdateState.ACTIVE, version=3)
        serving(rig, 3)

        seen = restart(rig)  # an orderly stop ended the loop: a normal start
        report_after(rig, seen, state=UpdateState.ACTIVE, version=3)
        serving(rig, 3)
        last = rig.host.latest_status(rig.device_id)
        assert last is not None
        assert (last.safe_mode, last.unclean_exits) == (False, 0)
    finally:
        rig.close()
