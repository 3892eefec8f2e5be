"""A GPR scan's metadata on the device: a sidecar beside it or a PNG text chunk, read safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from edgefleet.device.inputs import PNG_METADATA_KEY, load_metadata
from edgefleet.device.sources import FolderWatcher
from edgefleet.shared.errors import InputError
from edgefleet.shared.gpr import ScanMetadata, render_png

META = {"sample_interval_ns": 0.05, "trace_spacing_m": 0.02, "antenna_mhz": 400}


def _scan(tmp_path: Path, name: str = "line7.npy") -> Path:
    path = tmp_path / name
    np.save(path, np.zeros((200, 512), dtype=np.float32))
    return path


def test_a_sidecar_beside_the_scan_is_its_metadata(tmp_path: Path):
    scan = _scan(tmp_path)
    assert load_metadata(scan) is None  # none: the model estimates (and says so)
    (tmp_path / "line7.json").write_text(json.dumps(META))
    assert load_metadata(scan) == ScanMetadata(
        sample_interval_ns=0.05, trace_spacing_m=0.02, antenna_mhz=400
    )


def test_a_png_carries_its_metadata_in_a_text_chunk(tmp_path: Path):
    pixels = render_png(np.random.default_rng(0).normal(size=(50, 300)))
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_METADATA_KEY, json.dumps(META))
    path = tmp_path / "line8.png"
    Image.fromarray(pixels).save(path, pnginfo=info)
    assert load_metadata(path) == ScanMetadata(**META)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    assert load_metadata(tmp_path / "plain.png") is None


def test_bad_metadata_is_a_clear_input_error_naming_the_file(tmp_path: Path):
    scan = _scan(tmp_path)
    sidecar = tmp_path / "line7.json"
    sidecar.write_text('{"antenna_mhz": "four hundred"}')
    with pytest.raises(InputError, match=r"line7\.json.*antenna_mhz"):
        load_metadata(scan)
    sidecar.write_text("{" * 5000)
    with pytest.raises(InputError, match="bytes"):
        load_metadata(scan)


def test_a_sidecar_that_is_a_link_is_refused_unread(tmp_path: Path):
    scan = _scan(tmp_path)
    secret = tmp_path / "elsewhere.txt"
    secret.write_text(json.dumps(META))
    (tmp_path / "line7.json").symlink_to(secret)
    with pytest.raises(InputError, match="symbolic link"):
        load_metadata(scan)


@pytest.mark.parametrize("error", [None, "the model refused it"])
def test_the_sidecar_moves_with_its_scan(tmp_path: Path, error: str | None):
    scan = _scan(tmp_path)
    (tmp_path / "line7.json").write_text(json.dumps(META))
    watcher = FolderWatcher(tmp_path)
    watcher.done(scan, error=error)
    where = tmp_path / ("rejected" if error else "processed")
    assert (where / "line7.npy").exists()
    assert json.loads((where / "line7.json").read_text()) == META
    assert not (tmp_path / "line7.json").exists()
    assert watcher.poll() == []  # a sidecar alone is never taken as an input
