"""A long survey line classified window by window (``GprOptions.line_windows``, recipe v3).

The windows must cover the whole line half a window apart (docs/protocol.md 5.4), be cut on
the same common scale as the single window the model was trained on, and the classifier must
report the most target-like window, not the "strongest echo" one: on a synthetic line with a
hyperbola near one end and a bright flat surface bump elsewhere, the strongest echo is the
bump, and the hyperbola's window is the one a target detector (the fake model below, which
looks for an arrival-time minimum in the middle of its input) must be shown.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.device.inference import Classifier
from edgefleet.shared import gpr, gpr_windows
from edgefleet.shared.preprocess import preprocess, preprocess_windows
from edgefleet.shared.spec import (
    SPEC_VERSIONS,
    GprOptions,
    ModelInfo,
    PreprocessSpec,
    TensorSpec,
    check_spec_version,
)
from support.gpr_lines import APEX, C0, META, SINGLE, WINDOWED, long_line

SPEC = PreprocessSpec(schema_version=3, kind="gpr", height=64, width=32, channels=3, gpr=WINDOWED)
V2_JSON = (
    '{"schema_version":2,"kind":"gpr","height":64,"width":32,"channels":3,"scale":"unit",'
    '"invert":false,"gpr":{"time_zero":true,"background_removal":true,"gain":"exponential",'
    '"gain_factor":1.0,"stack":true,"resample":true,"periods":12.0,"line_wavelengths":2.0}}'
)


def target_score(x: np.ndarray) -> float:
    """A stand-in target detector: a strong echo that arrives first in the middle columns.

    Reads view 0 (echoes relative to the direct wave) below the shallow rows: in each
    column the row of the strongest echo; a hyperbola's apex in the middle of the window
    arrives at least a few rows before the echoes 8-9 columns to either side.
    """
    v0 = np.abs(2.0 * np.asarray(x, dtype=np.float64).reshape(64, 32, 3)[:, :, 0] - 1.0)[16:]
    rows, amp = v0.argmax(axis=0), v0.max(axis=0)
    c = v0.shape[1] // 2
    mid = rows[c - 1 : c + 1].mean()
    curved = min(rows[c - 9] - mid, rows[c + 8] - mid)
    strong = min(amp[c - 1], amp[c], amp[c - 9], amp[c + 8])
    return float(strong > 0.5) * float(strong) * float(np.clip(curved / 4.0, 0.0, 1.0))


class DetectorModel:
    """A model whose scores (metal, none) come from its input (``target_score``)."""

    def __init__(self) -> None:
        self.input_spec = TensorSpec(shape=(1, 64, 32, 3), dtype="float32")
        self.output_spec = TensorSpec(shape=(1, 2), dtype="float32")
        self.accelerator = "cpu"
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        metal = target_score(x)
        return np.array([[metal, 1.0 - metal]], dtype=np.float32)


# -- the window centres ---------------------------------------------------------------------


@given(
    n_traces=st.integers(1, 5000),
    step=st.floats(0.05, 40.0),
    columns=st.integers(2, 64),
    max_windows=st.integers(2, 80),
)
def test_the_windows_cover_the_line_half_a_window_apart(n_traces, step, columns, max_windows):
    centres = gpr_windows.window_centres(n_traces, step, columns, max_windows)
    window = (columns - 1) * step
    half = window / 2.0
    assert centres == sorted(centres)
    if n_traces - 1 <= window:  # no longer than a window: the one window, centred
        assert centres == [(n_traces - 1) / 2.0]
        return
    assert 2 <= len(centres) <= max_windows
    assert centres[0] == half  # each end of the line is a window's edge
    assert centres[-1] == n_traces - 1 - half
    gaps = np.diff(centres)
    assert np.allclose(gaps, gaps[0], rtol=1e-9)  # evenly spaced
    span = n_traces - 1 - window
    if len(centres) < max_windows:  # the cap not reached: at most half a window apart,
        assert gaps.max() <= half * (1 + 1e-9)  # and no more windows than that needs
        assert len(centres) == math.ceil(span / half - 1e-9) + 1
    else:  # capped: the same span, wider apart
        assert len(centres) == max_windows
        assert gaps[0] == pytest.approx(span / (max_windows - 1))


def test_window_centres_by_hand():
    assert gpr_windows.window_centres(20, 1.0, 32) == [9.5]  # 20 traces < a 31-trace window
    assert gpr_windows.window_centres(32, 1.0, 32) == [15.5]  # exactly one window
    # 212 traces, 2 traces a column: windows of 62 traces, centres 31 .. 180, <= 31 apart
    centres = gpr_windows.window_centres(212, 2.0, 32)
    assert len(centres) == 6
    assert centres[0] == 31.0
    assert centres[-1] == 180.0
    assert gpr_windows.window_centres(10_000, 1.0, 32) == pytest.approx(
        [15.5 + k * (9999 - 31) / 63 for k in range(64)]
    )  # 645 windows needed: capped at MAX_WINDOWS = 64
    assert len(gpr_windows.window_centres(10**9, 0.01, 32)) == gpr_windows.MAX_WINDOWS
    with pytest.raises(ValueError, match="2 windows"):
        gpr_windows.window_centres(100, 1.0, 32, max_windows=1)


# -- conditioning every window ---------------------------------------------------------------


def test_every_window_is_cut_like_the_single_one(monkeypatch):
    scan = long_line()
    traces = gpr.align_time_zero(gpr.as_traces(scan))
    windows = gpr_windows.common_scale_windows(traces, WINDOWED, META, (64, 32))
    step = 2.0 * C0 / 1e9 / 31 / 0.01  # 2 wavelengths at 1 GHz on 31 column gaps, 1 cm apart
    assert [c for c, _ in windows] == gpr_windows.window_centres(200, step, 32)
    assert len(windows) == 6
    assert all(w.shape == (32, 64) for _, w in windows)
    # common_scale on its strongest echo (the bump, about trace 144) ...
    assert gpr.common_scale(traces, WINDOWED, META, (64, 32)).shape == (32, 64)
    # ... cuts a window exactly as common_scale_windows does, wherever it is centred
    for centre, window in windows:
        monkeypatch.setattr(gpr, "_strongest_echo", lambda *_a, c=centre: c)
        assert gpr.common_scale(traces, WINDOWED, META, (64, 32)).tobytes() == window.tobytes()


def test_the_strongest_echo_is_the_bump_but_a_window_is_on_the_hyperbola():
    scan = long_line()
    inputs = preprocess_windows(scan, SPEC, META)
    centres = [c for c, _ in inputs]
    assert centres[0] is not None
    assert min(abs(c - APEX) for c in centres if c is not None) <= 1.0  # a window on the apex
    assert all(x.shape == (64, 32, 3) and x.dtype == np.float32 for _, x in inputs)
    assert all(x.min() >= 0.0 and x.max() <= 1.0 for _, x in inputs)
    # the single window (what the model saw before line_windows) is on the bump: no target
    assert target_score(preprocess(scan, SINGLE, META)) == 0.0
    scores = [target_score(x) for _, x in inputs]
    assert scores[0] > 0.5
    assert scores[1:] == [0.0] * (len(scores) - 1)


def test_the_classifier_reports_the_hyperbolas_window():
    model = DetectorModel()
    classifier = Classifier(
        model, name="gpr", version=3, labels=["metal", "none"], preprocess_spec=SPEC
    )
    p = classifier.classify(long_line(), META)
    assert model.calls == 6
    assert p.error is None
    assert p.label == "metal"
    assert p.score > 0.5
    assert [lbl for lbl, _ in p.topk] == ["metal", "none"]
    assert p.note == (
        "line of 200 traces classified in 6 windows; the reported one is centred on trace 30"
        " (0.30 m from the first trace)"
    )
    assert p.latency_ms >= p.preprocess_ms > 0.0
    # without line_windows the same model is shown the bump's window only: "none"
    single = Classifier(
        DetectorModel(), name="gpr", version=2, labels=["metal", "none"], preprocess_spec=SINGLE
    )
    assert single.classify(long_line(), META).label == "none"


def test_without_a_trace_spacing_the_whole_line_is_one_window_and_the_note_says_so():
    model = DetectorModel()
    classifier = Classifier(
        model, name="gpr", version=3, labels=["metal", "none"], preprocess_spec=SPEC
    )
    meta = gpr.ScanMetadata(sample_interval_ns=0.1, antenna_mhz=1000)
    p = classifier.classify(long_line(), meta)
    assert model.calls == 1
    assert p.note is not None
    assert p.note.startswith("no scan metadata for: trace spacing")
    assert "windows" not in p.note


def test_a_short_line_gives_exactly_the_single_window_input():
    scan = long_line(traces=50)  # 50 traces < a 60-trace window
    ((centre, x),) = preprocess_windows(scan, SPEC, META)
    assert centre == 24.5
    assert x.tobytes() == preprocess(scan, SPEC, META).tobytes()
    assert x.tobytes() == preprocess(scan, SINGLE, META).tobytes()


def test_specs_without_line_windows_give_exactly_preprocess():
    scan = long_line()
    for spec in (SINGLE, PreprocessSpec(kind="gpr", height=64, width=32, gpr=GprOptions())):
        ((centre, x),) = preprocess_windows(scan, spec, META)
        assert centre is None
        assert x.tobytes() == preprocess(scan, spec, META).tobytes()
    image = PreprocessSpec(height=4, width=4)
    ((centre, x),) = preprocess_windows(np.arange(64, dtype=np.uint8).reshape(8, 8), image)
    assert centre is None
    assert x.tobytes() == preprocess(np.arange(64, dtype=np.uint8).reshape(8, 8), image).tobytes()


def test_a_png_line_has_its_traces_as_columns():
    scan = long_line()
    png = gpr.render_png(scan)
    assert gpr_windows.trace_count(png) == gpr_windows.trace_count(scan) == 200
    assert len(preprocess_windows(png, SPEC, META)) == 6


# -- the recipe -------------------------------------------------------------------------------


def test_v2_recipes_are_written_as_before():
    assert PreprocessSpec.model_validate_json(V2_JSON).model_dump_json() == V2_JSON
    assert SINGLE.model_dump_json() == V2_JSON
    plain = PreprocessSpec(kind="gpr", height=8, width=8, gpr=GprOptions()).model_dump_json()
    assert "line_windows" not in plain
    assert "empty_label" not in plain


def test_a_v3_recipe_round_trips():
    raw = SPEC.model_dump_json()
    assert raw == V2_JSON.replace('"schema_version":2', '"schema_version":3').replace(
        '"line_wavelengths":2.0}',
        '"line_wavelengths":2.0,"line_windows":true,"empty_label":"none"}',
    )
    assert PreprocessSpec.model_validate_json(raw, strict=True) == SPEC
    assert SPEC_VERSIONS == (1, 2, 3)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"resample": True, "line_windows": True}, "empty_label"),
        ({"resample": True, "line_windows": True, "empty_label": ""}, "empty_label"),
        ({"line_windows": True, "empty_label": "none"}, "needs gpr.resample"),
    ],
)
def test_line_windows_needs_an_empty_label_and_the_common_scale(options, words):
    with pytest.raises(ValidationError, match=words):
        GprOptions(**options)


def test_line_windows_needs_schema_version_3_and_a_real_empty_label():
    with pytest.raises(ValidationError, match="schema_version 3"):
        PreprocessSpec(schema_version=2, kind="gpr", height=64, width=32, channels=3, gpr=WINDOWED)
    tensor = TensorSpec(shape=(1, 64, 32, 3), dtype="float32")
    info = {"name": "g", "mode": "int8", "preprocess": SPEC, "input": tensor, "output": tensor}
    ModelInfo(labels=("metal", "none"), **info)
    with pytest.raises(ValidationError, match="not one of the model's labels"):
        ModelInfo(labels=("metal", "empty"), **info)


def test_a_newer_recipe_is_refused_with_an_upgrade_message(monkeypatch):
    raw = SPEC.model_dump_json().replace('"schema_version":3', '"schema_version":4')
    with pytest.raises(ValidationError, match=r"schema_version 4 is not one this agent .*upgrade"):
        PreprocessSpec.model_validate_json(raw)
    # an agent that knows versions 1 and 2 only (the same check) says so for a v3 recipe
    monkeypatch.setattr("edgefleet.shared.spec.SPEC_VERSIONS", (1, 2))
    with pytest.raises(ValueError, match=r"schema_version 3 .*\(1, 2\): upgrade the agent"):
        check_spec_version(3)
    with pytest.raises(ValidationError, match="upgrade the agent"):
        PreprocessSpec.model_validate_json(SPEC.model_dump_json())
    assert check_spec_version(2) == 2


def test_the_protocol_documents_the_window_rule():
    protocol = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()
    assert "line_windows" in protocol
    assert f"{gpr_windows.MAX_WINDOWS} windows" in protocol
