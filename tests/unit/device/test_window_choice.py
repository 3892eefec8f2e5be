"""Which window of a long GPR line a Prediction reports (``gpr.line_windows``).

The rule (docs/protocol.md 5.4): among windows whose top label is not ``empty_label``, the
highest top score; if every window says ``empty_label``, the lowest ``empty_label`` score.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.device.inference import NON_FINITE, Classifier, Prediction, choose_window
from edgefleet.shared import gpr, gpr_windows
from edgefleet.shared.spec import GprOptions, PreprocessSpec, TensorSpec
from support.shadow import idle_shadow

LABELS = ["metal", "plastic", "concrete", "none"]
NONE = 3
SPEC = PreprocessSpec(
    schema_version=3,
    kind="gpr",
    height=64,
    width=32,
    channels=3,
    gpr=GprOptions(stack=True, resample=True, line_windows=True, empty_label="none"),
)
META = gpr.ScanMetadata(sample_interval_ns=0.1, trace_spacing_m=0.01, antenna_mhz=1000)
# 200 traces 1 cm apart at 1 GHz: windows of 60 traces, 6 of them (tests/unit/gpr)
CENTRES = gpr_windows.window_centres(200, 2.0 * 299_792_458.0 / 1e9 / 31 / 0.01, 32)


def _s(*scores: float) -> np.ndarray:
    return np.array(scores, dtype=np.float32)


def _line() -> np.ndarray:
    rng = np.random.default_rng(1)
    scan = rng.normal(0.0, 0.01, (200, 256))
    scan[:, 20:24] += [1.0, -2.0, 1.0, 0.2]  # a direct wave
    return scan


class ScriptedModel:
    """Gives the next row of ``scores`` per window (in line order) and keeps its inputs."""

    def __init__(self, scores: list[np.ndarray]) -> None:
        self.input_spec = TensorSpec(shape=(1, 64, 32, 3), dtype="float32")
        self.output_spec = TensorSpec(shape=(1, len(LABELS)), dtype="float32")
        self.accelerator = "cpu"
        self.scores = list(scores)
        self.inputs: list[np.ndarray] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x)
        return self.scores[len(self.inputs) - 1][np.newaxis]


def _classifier(model: ScriptedModel, spec: PreprocessSpec = SPEC) -> Classifier:
    return Classifier(model, name="gpr", version=3, labels=LABELS, preprocess_spec=spec)


def test_a_target_window_beats_more_confident_empty_windows():
    windows = [_s(0, 0, 0.01, 0.99), _s(0.1, 0.5, 0.1, 0.3), _s(0.45, 0, 0.2, 0.35), _s(0, 0, 0, 1)]
    assert choose_window(windows, NONE) == 1  # plastic 0.5 beats metal 0.45; "none" 0.99 loses
    assert choose_window([_s(0.3, 0, 0, 0.7), _s(0.6, 0, 0, 0.4), _s(0, 0.6, 0, 0.4)], NONE) == 1


def test_when_every_window_is_empty_the_least_sure_one_is_reported():
    windows = [_s(0.1, 0, 0, 0.9), _s(0.3, 0.1, 0, 0.6), _s(0.2, 0, 0, 0.8)]
    assert choose_window(windows, NONE) == 1
    assert choose_window([_s(0.4, 0, 0, 0.6), _s(0.4, 0, 0, 0.6)], NONE) == 0  # ties: the first


def test_ties_and_a_model_without_an_empty_label():
    # a tie between outputs goes to the first: concrete, not none, so a target window
    assert choose_window([_s(0.1, 0, 0, 0.9), _s(0, 0, 0.5, 0.5)], NONE) == 1
    assert choose_window([_s(0, 0.7, 0, 0), _s(0.7, 0, 0, 0)], NONE) == 0  # equal: the first
    assert choose_window([_s(0, 0, 0, 0.9), _s(0.6, 0, 0, 0.4)], None) == 0  # all targets
    with pytest.raises(ValueError, match="no windows"):
        choose_window([], NONE)


def test_the_classifier_runs_every_window_and_reports_the_chosen_one():
    scores = [_s(0, 0, 0, 1)] * len(CENTRES)
    scores[4] = _s(0.05, 0.15, 0.6, 0.2)  # concrete at the fifth window
    model = ScriptedModel(scores)
    p = _classifier(model).classify(_line(), META)
    assert len(model.inputs) == len(CENTRES) == 6
    assert model.inputs[0].shape == (1, 64, 32, 3)
    assert not all(np.array_equal(model.inputs[0], x) for x in model.inputs[1:])
    assert (p.label, p.error) == ("concrete", None)
    assert [lbl for lbl, _ in p.topk] == ["concrete", "none", "plastic"]
    assert [s for _, s in p.topk] == pytest.approx([0.6, 0.2, 0.15])
    centre = CENTRES[4]
    assert p.note == (
        f"line of 200 traces classified in 6 windows; the reported one is centred on trace"
        f" {centre:.0f} ({centre * 0.01:.2f} m from the first trace)"
    )
    assert p.latency_ms >= p.preprocess_ms


def test_the_window_note_follows_the_metadata_note():
    meta = gpr.ScanMetadata(sample_interval_ns=0.1, trace_spacing_m=0.01)  # no antenna
    model = ScriptedModel([_s(0.1, 0, 0, 0.9)] * gpr_windows.MAX_WINDOWS)
    p = _classifier(model).classify(_line(), meta)
    assert p.label == "none"
    assert p.note is not None
    metadata, windows = p.note.split("; line of ")
    assert metadata.startswith("no scan metadata for: antenna frequency")
    assert windows.startswith(f"200 traces classified in {len(model.inputs)} windows")
    assert len(model.inputs) > 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_score_in_any_window_is_an_error(bad):
    scores = [_s(0.9, 0, 0, 0.1)] * len(CENTRES)
    scores[2] = _s(0.5, bad, 0, 0)
    p = _classifier(ScriptedModel(scores)).classify(_line(), META)
    assert (p.label, p.score, p.topk, p.error) == ("", 0.0, [], NON_FINITE)


def test_without_line_windows_the_model_runs_once():
    spec = SPEC.model_copy(
        update={"schema_version": 2, "gpr": GprOptions(stack=True, resample=True)}
    )
    model = ScriptedModel([_s(0.1, 0.2, 0.3, 0.4)])
    p = _classifier(model, spec).classify(_line(), META)
    assert len(model.inputs) == 1
    assert (p.label, p.note) == ("none", None)


def test_the_shadow_candidate_gets_the_scans_metadata(tmp_path):
    shadow, run = idle_shadow(tmp_path, 1.0)
    shadow.offer(_line(), Prediction("metal", 0.9, [("metal", 0.9)], 1.0), "scan.npy", META)
    (item,) = run.queue
    assert item.meta == META  # classified by the candidate as the active model did
