"""Issue #18 point 12: the demo's work dir (fleet, the logs it printed) kept on request or error."""

from __future__ import annotations

import tempfile

import pytest

from edgefleet.host.demo import DemoOptions, Summary, format_summary
from edgefleet.host.demo._run import _workdir
from edgefleet.host.errors import DemoError


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_a_finished_demo_removes_its_temp_dir_unless_keep():
    said: list[str] = []
    with _workdir(DemoOptions(), said.append) as removed:
        (removed / "agent.log").write_text("log")
    assert not removed.exists()
    with _workdir(DemoOptions(keep=True), said.append) as kept:
        (kept / "agent.log").write_text("log")
    assert (kept / "agent.log").read_text() == "log"
    assert said == []


def test_a_demo_stopped_by_an_error_keeps_its_logs_and_says_where():
    said: list[str] = []
    seen = []

    def fail_in(options: DemoOptions) -> None:
        with _workdir(options, said.append) as workdir:
            seen.append(workdir)
            (workdir / "agent.log").write_text("why it failed")
            raise DemoError("agents never came online")

    with pytest.raises(DemoError):
        fail_in(DemoOptions())
    [workdir] = seen
    assert (workdir / "agent.log").read_text() == "why it failed"
    assert said == [f"kept {workdir} for its logs (the demo failed); remove it when done"]


def test_ctrl_c_still_removes_everything():
    seen = []

    def interrupted() -> None:
        with _workdir(DemoOptions(), print) as workdir:
            seen.append(workdir)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert not seen[0].exists()


def test_the_summary_says_whether_the_files_were_kept(tmp_path):
    kept = format_summary(Summary(workdir=str(tmp_path), kept=True))
    assert f"files         kept in {tmp_path} (fleet, agent logs" in kept
    gone = format_summary(Summary(workdir=str(tmp_path)))
    assert f"files         {tmp_path} removed; --keep keeps it" in gone
