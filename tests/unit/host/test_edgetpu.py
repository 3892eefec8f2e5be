import os
import stat
import sys
from pathlib import Path

import pytest

from edgefleet.host.errors import EdgeTPUError
from edgefleet.host.quantize import _edgetpu as edgetpu

STANDIN = Path(__file__).with_name("standin_edgetpu_compiler.py")


@pytest.fixture
def standin_compiler(tmp_path, monkeypatch):
    """An executable wrapper that runs the stand-in with this interpreter."""
    exe = tmp_path / "edgetpu_compiler"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv(edgetpu.COMPILER_ENV, str(exe))
    return exe


def test_precheck_passes_full_int8(tiny_int8):
    check = edgetpu.precheck(tiny_int8)
    assert check.compatible, check
    assert all(v.edgetpu for v in check.ops)


def test_precheck_flags_float_model(tiny_float):
    check = edgetpu.precheck(tiny_float)
    assert not check.compatible
    assert check.cpu_ops[0].startswith("#0 ")
    assert any("float32" in r for r in check.ops[0].reasons)


def test_precheck_lists_float_edges_as_cpu(tiny_mixed):
    check = edgetpu.precheck(tiny_mixed)
    assert not check.compatible
    names = [entry.split()[1] for entry in check.cpu_ops]
    # QUANTIZE takes the float input; the compiler maps nothing from there on.
    assert names[0] == "QUANTIZE"
    assert names[-1] == "DEQUANTIZE"


def test_compile_with_standin(tmp_path, tiny_int8, standin_compiler):
    model = tmp_path / "m_int8.tflite"
    model.write_bytes(tiny_int8)
    out = tmp_path / "out"
    out.mkdir()
    result = edgetpu.compile_model(model, out)
    assert result.model == out / "m_int8_edgetpu.tflite"
    assert result.model.is_file()
    assert result.log.is_file()
    assert result.mapped_ops == result.total_ops == len(edgetpu.precheck(tiny_int8).ops)


def test_compile_fails_when_nothing_maps(tmp_path, tiny_float, standin_compiler):
    model = tmp_path / "f.tflite"
    model.write_bytes(tiny_float)
    with pytest.raises(EdgeTPUError, match="mapped no operation"):
        edgetpu.compile_model(model, tmp_path)
    assert not (tmp_path / "f_edgetpu.tflite").exists()


def test_compile_reports_nonzero_exit(tmp_path, standin_compiler):
    model = tmp_path / "junk.tflite"
    model.write_bytes(b"not a model at all")
    with pytest.raises(EdgeTPUError, match="exited 1"):
        edgetpu.compile_model(model, tmp_path)


def test_missing_compiler_says_how_to_install(tmp_path, monkeypatch, tiny_int8):
    monkeypatch.delenv(edgetpu.COMPILER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_int8)
    with pytest.raises(EdgeTPUError, match="apt"):
        edgetpu.compile_model(model, tmp_path)


def test_parse_real_style_output():
    out = """Edge TPU Compiler version 16.0.384591198
Total number of operations: 7

Operator                       Count      Status

FULLY_CONNECTED                2          Mapped to Edge TPU
CONV_2D                        2          Mapped to Edge TPU
SOFTMAX                        1          Operation is working on an unsupported data type
"""
    assert edgetpu.parse_compiler_output(out) == (4, 7)


def test_env_var_wins_over_path(monkeypatch, tmp_path):
    monkeypatch.setenv(edgetpu.COMPILER_ENV, os.fspath(tmp_path / "x"))
    assert edgetpu.find_compiler() == tmp_path / "x"
