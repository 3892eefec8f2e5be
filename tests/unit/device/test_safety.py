"""The agent's safety logic without processes: failure windows, restart counting, journals,
manifest bounds (chunks, outputs, labels), revert of a model that failed while serving."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.device.config import SafetyConfig, parse_config
from edgefleet.device.download import Download
from edgefleet.device.errors import InferenceError, ModelLoadError
from edgefleet.device.inference import NON_FINITE, Classifier
from edgefleet.device.safety import (
    FailureWindow,
    Guard,
    InFlightJournal,
    RestartLog,
    last_known_good,
)
from edgefleet.device.store import Pointer, StateStore
from edgefleet.device.updater import Publish, Updater, UpdaterSettings
from edgefleet.shared.chunks import MAX_CHUNKS, chunk_count, split_model
from edgefleet.shared.errors import TooManyChunksError, TooManyOutputsError
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    Targets,
    key_id_for,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.messages import PredictionRecord, Reported, UpdateState, encode
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id_for(KEY.public_key()): KEY.public_key()}
TOPICS = Topics("t")


def _manifest(
    data: bytes,
    version: int,
    *,
    chunk_size: int = 100,
    size: int | None = None,
    outputs: tuple[int, ...] = (1, 3),
    labels: int = 3,
) -> tuple[Manifest, bytes]:
    variant = ModelVariant.for_bytes(data, accelerator="cpu", chunk_size=chunk_size)
    if size is not None:  # a signed lie about the size: only the numbers matter here
        variant = ModelVariant(
            accelerator="cpu",
            sha256=variant.sha256,
            size=size,
            chunk_size=chunk_size,
            chunk_count=chunk_count(size, chunk_size),
        )
    now = int(time.time())
    m = Manifest(
        name="m",
        version=version,
        created_at=now - 10,
        expires_at=now + 3600,
        targets=Targets(devices=["d1"]),
        variants=[variant],
        mode="int8",
        input=TensorSpec(shape=(1, 2), dtype="int8", scale=0.1),
        output=TensorSpec(shape=outputs, dtype="int8", scale=0.1),
        preprocess=PreprocessSpec(height=1, width=2),
        labels=[str(i) for i in range(labels)],
    )
    return m, sign_manifest(m, KEY)


# -- the failure window -----------------------------------------------------------------


def test_a_model_fails_after_n_of_the_last_m_inputs():
    window = FailureWindow(3, 10)
    assert not window.record(ok=False, reason="nan 1")
    assert not any(window.record(ok=True) for _ in range(5))
    assert not window.record(ok=False, reason="nan 2")
    assert window.record(ok=False, reason="invoke 3")
    assert "3 of the last 8 inputs failed" in window.summary()
    assert "invoke 3" in window.summary()


def test_old_failures_leave_the_window():
    window = FailureWindow(3, 4)
    for _ in range(20):  # one failure in four never makes three in the last four
        assert not window.record(ok=False)
        assert not any(window.record(ok=True) for _ in range(3))


def test_the_window_is_never_shorter_than_the_threshold():
    window = FailureWindow(5, 2)
    assert not any(window.record(ok=False) for _ in range(4))
    assert window.record(ok=False)


# -- restart counting -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_unclean_exits_within_the_window_start_safe_mode(tmp_path: Path):
    clock = Clock()
    log = lambda: RestartLog(tmp_path / "restarts.json", threshold=3, window_s=600, clock=clock)  # noqa: E731
    first = log().begin()
    assert (first.unclean, first.safe_mode) == (0, False)  # a first start is not a crash
    for expected in (1, 2):
        clock.now += 10
        info = log().begin()  # the previous run never cleared its marker: it crashed
        assert (info.unclean, info.safe_mode) == (expected, False)
    clock.now += 10
    assert log().begin().safe_mode
    clock.now += 10
    assert log().begin().safe_mode  # still crashing: still safe mode


def test_an_orderly_exit_is_not_counted_and_old_crashes_expire(tmp_path: Path):
    clock = Clock()
    path = tmp_path / "restarts.json"
    for _ in range(3):
        RestartLog(path, clock=clock).begin()
        clock.now += 1
    restarts = RestartLog(path, clock=clock)
    assert restarts.begin().unclean == 3
    restarts.clean_exit("a" * 64)
    after_clean = RestartLog(path, clock=clock).begin()
    assert (after_clean.unclean, after_clean.safe_mode) == (0, False)
    assert after_clean.known_good == "a" * 64
    clock.now += 601  # the three crashes are out of the window now
    info = RestartLog(path, clock=clock).begin()
    assert (info.unclean, info.safe_mode) == (1, False)


def test_a_damaged_restart_file_starts_counting_afresh(tmp_path: Path):
    path = tmp_path / "restarts.json"
    path.write_bytes(b"\x00{not json")
    info = RestartLog(path).begin()
    assert (info.unclean, info.safe_mode) == (0, False)
    assert json.loads(path.read_bytes())["running"] is True


def test_a_calm_window_forgets_the_crashes_and_trusts_the_model(tmp_path: Path):
    clock = Clock()
    path = tmp_path / "restarts.json"
    for _ in range(2):
        RestartLog(path, clock=clock).begin()
    restarts = RestartLog(path, clock=clock)
    assert restarts.begin().unclean == 2
    restarts.calm("b" * 64)
    saved = json.loads(path.read_bytes())
    assert (saved["unclean"], saved["known_good"], saved["running"]) == ([], "b" * 64, True)


@pytest.mark.parametrize(
    ("active", "previous", "known_good", "expected"),
    [
        ("new", "old", None, "old"),  # no evidence: the newest change goes
        ("new", "old", "old", "old"),
        ("new", "old", "new", "new"),  # the active model ran fine: keep it
        ("new", "old", "gone", "old"),  # the known-good file is no longer stored
        ("only", None, None, "only"),  # nothing to go back to
        (None, None, None, None),
    ],
)
def test_last_known_good(active, previous, known_good, expected):
    assert last_known_good(active, previous, known_good) == expected


def test_the_journal_names_the_files_in_flight(tmp_path: Path):
    journal = InFlightJournal(tmp_path / "inflight.txt")
    assert journal.left_over() == []
    journal.add("a.png")
    journal.add("b.npy")
    journal.add("b.npy")
    assert InFlightJournal(tmp_path / "inflight.txt").left_over() == ["a.png", "b.npy"]
    journal.clear()
    journal.add("c.png")
    assert InFlightJournal(tmp_path / "inflight.txt").left_over() == ["c.png"]
    journal.clear()
    journal.close()
    assert InFlightJournal(tmp_path / "inflight.txt").left_over() == []
    (tmp_path / "inflight.txt").write_text("../../etc/passwd\nok.png\n..\n")
    assert InFlightJournal(tmp_path / "inflight.txt").left_over() == ["ok.png"]


def test_safety_settings_are_validated(tmp_path: Path):
    config = parse_config(
        'device_id = "d"\nstate_dir = "s"\n[safety]\nmodel_failures = 2\ncrash_restarts = 5\n',
        base=tmp_path,
    )
    assert (config.safety.model_failures, config.safety.crash_restarts) == (2, 5)
    assert config.safety.max_chunks == MAX_CHUNKS
    with pytest.raises(Exception, match="max_chunks"):
        parse_config(
            f'device_id = "d"\nstate_dir = "s"\n[safety]\nmax_chunks = {MAX_CHUNKS + 1}\n',
            base=tmp_path,
        )


# -- manifest bounds --------------------------------------------------------------------


def _verify(envelope: bytes, **limits: int) -> Manifest:
    return verify_manifest(
        envelope,
        trusted_keys=KEYS,
        device_id="d1",
        groups=[],
        current_version=0,
        now=time.time(),
        **limits,
    )


def test_a_manifest_of_more_than_max_chunks_is_refused_before_any_download():
    # The attack: size=100000, chunk_size=1 -> 100000 chunks (the reassembler's bound is 65536).
    _, envelope = _manifest(b"x", 1, chunk_size=1, size=100_000)
    with pytest.raises(TooManyChunksError, match="100000 chunks") as err:
        _verify(envelope)
    assert err.value.reason == "too_many_chunks"
    with pytest.raises(TooManyChunksError, match="at most 10 chunks"):
        _verify(_manifest(b"x" * 300, 1, chunk_size=20)[1], max_chunks=10)


def test_tiny_chunks_are_refused_but_a_one_chunk_file_is_fine():
    with pytest.raises(TooManyChunksError, match="at least 1024 bytes"):
        _verify(_manifest(b"x" * 3000, 1, chunk_size=512)[1], min_chunk_size=1024)
    assert _verify(_manifest(b"x" * 300, 1, chunk_size=300)[1], min_chunk_size=1024)


def test_too_many_outputs_or_labels_are_refused():
    _, envelope = _manifest(b"x" * 300, 1, outputs=(1, 3_000_000))
    with pytest.raises(TooManyOutputsError, match="3000000 output values") as err:
        _verify(envelope, max_outputs=100_000)
    assert err.value.reason == "too_many_outputs"
    with pytest.raises(TooManyOutputsError, match="500 labels"):
        _verify(_manifest(b"x" * 300, 1, labels=500)[1], max_labels=100)
    assert _verify(_manifest(b"x" * 300, 1)[1], max_outputs=3, max_labels=3)


def test_new_reasons_are_valid_reports():
    for reason in ("too_many_chunks", "too_many_outputs"):
        Reported(device_id="d", state=UpdateState.REJECTED, reason=reason)
    for reason in ("failed_on_inputs", "crash_loop"):
        Reported(device_id="d", state=UpdateState.FAILED, step="serving", reason=reason)


def test_a_download_of_too_many_chunks_writes_nothing(tmp_path: Path):
    manifest, envelope = _manifest(b"x", 1, chunk_size=1, size=100_000)
    with pytest.raises(ValueError, match="exceed the limit of 65536"):
        Download.start(
            manifest,
            manifest.variants[0],
            envelope,
            "e" * 64,
            directory=tmp_path / "dl",
            now=0.0,
        )
    assert not (tmp_path / "dl").exists()


# -- the updater: refusal before download, revert after failing on inputs ----------------


class Harness:
    def __init__(self, root: Path, **settings):
        self.activated: list[int] = []
        self.updater = Updater(
            settings=UpdaterSettings(
                device_id="d1",
                groups=[],
                topics=TOPICS,
                trusted_keys=KEYS,
                **settings,
            ),
            store=StateStore(root),
            health_check=lambda _p, _m: None,
            on_activate=lambda _p, m: self.activated.append(m.version),
        )

    def deliver(self, data: bytes, version: int) -> list:
        actions = self.updater.on_desired(_manifest(data, version)[1])
        for raw in split_model(data, chunk_size=100):
            actions += self.updater.on_chunk(raw)
        return actions


def reports(actions) -> list[Reported]:
    return [
        Reported.model_validate_json(a.payload)
        for a in actions
        if isinstance(a, Publish) and a.topic == TOPICS.reported("d1")
    ]


def test_the_updater_rejects_a_chunk_bomb_without_creating_a_download(tmp_path: Path):
    h = Harness(tmp_path, max_chunks=MAX_CHUNKS)
    (report,) = reports(h.updater.on_desired(_manifest(b"x", 1, chunk_size=1, size=100_000)[1]))
    assert (report.state, report.reason, report.version) == (
        UpdateState.REJECTED,
        "too_many_chunks",
        1,
    )
    assert "push it with a larger chunk_size" in (report.message or "")
    assert not any((tmp_path / "downloads").iterdir())
    (report,) = reports(h.updater.on_desired(_manifest(b"y" * 300, 2, outputs=(1, 10**6))[1]))
    assert report.reason == "too_many_outputs"


def test_a_model_that_failed_while_serving_is_reverted_and_not_installed_again(tmp_path: Path):
    h = Harness(tmp_path)
    h.deliver(b"a" * 300, 1)
    h.deliver(b"b" * 300, 2)
    store = h.updater.store
    assert store.active().version == 2
    (report,) = reports(h.updater.serving_failed("failed_on_inputs", "3 of the last 3 failed"))
    assert (report.state, report.step, report.reason) == (
        UpdateState.FAILED,
        "serving",
        "failed_on_inputs",
    )
    assert (report.version, report.active_version) == (2, 1)
    assert "v1 serves again" in (report.message or "")
    assert store.active().version == 1
    assert store.previous() is None  # the failed model is no fallback
    bad = store.bad_models()[hashlib.sha256(b"b" * 300).hexdigest()]
    assert (bad["step"], bad["reason"], bad["version"]) == ("serving", "failed_on_inputs", 2)
    assert store.floor()[0] == 2  # anti-rollback is not lowered
    # the retained manifest after a restart: the same failure, not "rollback", no download
    h2 = Harness(tmp_path)
    h2.updater.start()
    (again,) = reports(h2.updater.on_desired(_manifest(b"b" * 300, 2)[1]))
    assert (again.state, again.reason) == (UpdateState.FAILED, "failed_on_inputs")
    assert h2.activated == []
    # a good model pushed afterwards lands
    actions = h2.deliver(b"c" * 300, 3)
    assert reports(actions)[-1].state == UpdateState.ACTIVE
    assert store.active().version == 3
    assert store.previous().version == 1


def test_with_no_previous_model_the_failed_one_is_deactivated(tmp_path: Path):
    h = Harness(tmp_path)
    h.deliver(b"a" * 300, 1)
    (report,) = reports(h.updater.serving_failed("failed_on_inputs", "NaN"))
    assert report.active_version is None
    assert "no model is active now" in (report.message or "")
    assert h.updater.store.active() is None
    assert h.updater.serving_failed("failed_on_inputs", "again") == []


def test_safe_mode_reverts_to_the_last_known_good_model_and_quarantines(tmp_path: Path):
    h = Harness(tmp_path / "state")
    h.deliver(b"a" * 300, 1)
    h.deliver(b"b" * 300, 2)
    inbox = tmp_path / "in"

    class Watcher:
        directory = inbox
        moved: list[tuple[Path, str | None]] = []  # noqa: RUF012

        def done(self, path: Path, *, error: str | None = None) -> None:
            self.moved.append((path, error))

    inbox.mkdir()
    (inbox / "poison.npy").write_bytes(b"x")
    config = SafetyConfig(crash_restarts=2)
    guard = Guard(tmp_path / "state", config)
    guard.journal.add("poison.npy")
    for _ in range(2):  # two runs die without an orderly exit
        guard = Guard(tmp_path / "state", config)
    assert guard.safe_mode
    watcher = Watcher()
    guard.enter_safe_mode(h.updater.store, h.updater, watcher)  # type: ignore[arg-type]
    assert h.updater.store.active().version == 1
    (held,) = reports(h.updater.start())  # reported at start instead of "active"
    assert (held.step, held.reason, held.version) == ("serving", "crash_loop", 2)
    assert [(p.name, "quarantined in safe mode" in (e or "")) for p, e in watcher.moved] == [
        ("poison.npy", True)
    ]


# -- the classifier ---------------------------------------------------------------------


class FakeModel:
    def __init__(self, outputs: tuple[int, ...], result=None, error: Exception | None = None):
        self.input_spec = TensorSpec(shape=(1, 2, 2, 1), dtype="float32")
        self.output_spec = TensorSpec(shape=outputs, dtype="float32")
        self.result = result
        self.error = error
        self.accelerator = "cpu"

    def run(self, _x):
        if self.error:
            raise self.error
        return self.result


def _classifier(model: FakeModel, **kw) -> Classifier:
    spec = PreprocessSpec(height=2, width=2, channels=1)
    return Classifier(model, name="m", version=1, labels=["a", "b"], preprocess_spec=spec, **kw)


def test_a_model_with_too_many_outputs_is_refused_without_building_labels():
    with pytest.raises(ModelLoadError, match="3000000 output values"):
        _classifier(FakeModel((1, 3_000_000)), max_outputs=100_000)
    c = _classifier(FakeModel((1, 50_000), np.arange(50_000, dtype=np.float32)[None]))
    assert len(c.labels) == 2  # the names given, no 50000 strings
    p = c.classify(np.zeros((2, 2), np.uint8))
    assert p.topk[0] == ("49999", 49999.0)
    assert [lbl for lbl, _ in p.topk] == ["49999", "49998", "49997"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_give_a_record_that_says_so(bad):
    c = _classifier(FakeModel((1, 2), np.array([[0.5, bad]], dtype=np.float32)))
    p = c.classify(np.zeros((2, 2), np.uint8))
    assert (p.label, p.score, p.topk, p.error) == ("", 0.0, [], NON_FINITE)
    record = PredictionRecord(
        device_id="d", boot_id="b", seq=1, label=p.label, score=p.score, latency_ms=0.1,
        model_name="m", model_version=1, ts=1.0, error=p.error,
    )  # fmt: skip
    assert b'"error":"non_finite"' in encode(record)


def test_an_invoke_failure_is_an_inference_error_not_a_load_error():
    c = _classifier(FakeModel((1, 2), error=ModelLoadError("inference failed: gather index")))
    with pytest.raises(InferenceError, match="gather index"):
        c.classify(np.zeros((2, 2), np.uint8))


def test_pointer_round_trip_for_revert(tmp_path: Path):
    store = StateStore(tmp_path)
    assert store.revert() is None  # nothing stored: nothing active, no error
    sha = hashlib.sha256(b"m").hexdigest()
    store.stage_model(sha, b"m")
    store.activate(Pointer(sha, "m", 1, {}))
    store.activate(Pointer("f" * 64, "m", 2, {}))  # its file is missing
    assert store.previous().version == 1
    assert store.revert().version == 1
    assert store.active().version == 1
