"""The antenna-frequency input plane (``GprOptions.frequency_plane``, recipe v3).

The common scale measures a scan in wavelengths and periods, which hides absolute size; the
plane hands the model the antenna frequency from the sidecar. It must be the same on host
and device (one function), sit after the image channels, be 0 exactly when the metadata has
no antenna frequency, and leave the image channels as they were.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.shared import gpr
from edgefleet.shared.preprocess import (
    frequency_plane_value,
    preprocess,
    preprocess_windows,
    to_input_tensor,
)
from edgefleet.shared.spec import GprOptions, PreprocessSpec, TensorSpec
from support.gpr_lines import META, WINDOWED, long_line

PLANE = WINDOWED.model_copy(update={"frequency_plane": True})
SPEC = PreprocessSpec(schema_version=3, kind="gpr", height=64, width=32, channels=3, gpr=PLANE)
WITHOUT = SPEC.model_copy(update={"gpr": WINDOWED})


@pytest.mark.parametrize(
    ("mhz", "value"),
    [
        (250.0, 0.1),
        (1600.0, 1.0),
        (math.sqrt(250.0 * 1600.0), 0.55),  # the band's log middle
        (100.0, 0.1),  # below the band: clipped, still not "missing"
        (5000.0, 1.0),
    ],
)
def test_the_plane_value_by_hand(mhz, value):
    meta = gpr.ScanMetadata(sample_interval_ns=0.1, antenna_mhz=mhz)
    assert frequency_plane_value(meta) == pytest.approx(value)


def test_no_antenna_frequency_is_zero():
    assert frequency_plane_value(None) == 0.0
    assert frequency_plane_value(gpr.ScanMetadata(sample_interval_ns=0.1)) == 0.0


def test_the_plane_is_the_last_channel_and_leaves_the_image_channels_alone():
    scan = long_line(traces=50)
    x = preprocess(scan, SPEC, META)
    assert x.shape == (64, 32, 4)
    assert SPEC.input_channels == 4
    assert WITHOUT.input_channels == 3
    np.testing.assert_array_equal(x[:, :, :3], preprocess(scan, WITHOUT, META))
    assert np.all(x[:, :, 3] == np.float32(frequency_plane_value(META)))
    assert 0.1 < frequency_plane_value(META) < 1.0
    assert np.all(preprocess(scan, SPEC, None)[:, :, 3] == 0.0)


def test_every_window_of_a_long_line_carries_the_plane():
    windows = preprocess_windows(long_line(), SPEC, META)
    assert len(windows) > 1
    plain = preprocess_windows(long_line(), WITHOUT, META)
    for (centre, x), (same_centre, y) in zip(windows, plain, strict=True):
        assert centre == same_centre
        np.testing.assert_array_equal(x[:, :, :3], y)
        assert np.all(x[:, :, 3] == np.float32(frequency_plane_value(META)))


def test_the_plane_follows_the_spec_scale_and_quantizes_with_the_input():
    spec = SPEC.model_copy(update={"scale": "minus_one_one"})
    x = preprocess(long_line(traces=50), spec, META)
    assert np.allclose(x[:, :, 3], 2 * frequency_plane_value(META) - 1)
    tensor = TensorSpec(shape=(1, 64, 32, 4), dtype="int8", scale=1 / 255, zero_point=-128)
    q = to_input_tensor(preprocess(long_line(traces=50), SPEC, META), tensor)
    assert q.shape == (1, 64, 32, 4)
    assert np.all(q[0, :, :, 3] == round(frequency_plane_value(META) * 255) - 128)


def test_the_recipe_needs_the_common_scale_and_version_3():
    with pytest.raises(ValidationError, match=r"frequency_plane needs gpr\.resample"):
        GprOptions(frequency_plane=True)
    with pytest.raises(ValidationError, match="frequency_plane needs preprocess schema_version 3"):
        PreprocessSpec(
            schema_version=2,
            kind="gpr",
            height=64,
            width=32,
            channels=3,
            gpr=GprOptions(resample=True, frequency_plane=True),
        )


def test_the_field_is_written_only_when_on_and_round_trips():
    assert "frequency_plane" not in WITHOUT.model_dump_json()
    raw = SPEC.model_dump_json()
    assert raw == WITHOUT.model_dump_json().replace(
        '"empty_label":"none"}', '"empty_label":"none","frequency_plane":true}'
    )
    assert PreprocessSpec.model_validate_json(raw, strict=True) == SPEC


def test_the_note_says_when_the_model_was_not_told_the_frequency():
    no_antenna = gpr.ScanMetadata(sample_interval_ns=0.1, trace_spacing_m=0.01)
    note = gpr.metadata_note(PLANE, no_antenna)
    assert note is not None
    assert "antenna frequency" in note
    assert "the model was told it is unknown" in note
    assert "told" not in (gpr.metadata_note(WINDOWED, no_antenna) or "")
    assert gpr.metadata_note(PLANE, META) is None  # a whole sidecar: nothing to say
