"""Every external command the tests start is listed in tests/tools.txt, which `make tools` installs.

A test that needs a command nothing installs passes on a developer's machine and fails on a
fresh one (shellcheck did). This scans the test sources for the commands they start.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# On every Debian/Ubuntu machine that can run `make test` at all.
BASE_SYSTEM = {"sh", "bash", "env", "tar", "git", "make", "kill", "true", "false"}
_STARTS = re.compile(
    r"(?:subprocess\.(?:run|Popen|check_call|check_output)|Popen)\(\s*\[\s*\"([A-Za-z][\w.+-]*)\""
)
_WHICH = re.compile(r"which\(\s*\"([A-Za-z][\w.+-]*)\"")


def listed_tools() -> dict[str, str]:
    tools = {}
    for line in (TESTS / "tools.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            command, package, *_ = line.split()
            tools[command] = package
    return tools


def started_commands() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in TESTS.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in _STARTS.findall(text) + _WHICH.findall(text):
            found.setdefault(name, set()).add(path.relative_to(TESTS).as_posix())
    return found


def test_every_started_command_is_installed_by_make_tools():
    listed = listed_tools()
    missing = {
        name: sorted(where)
        for name, where in started_commands().items()
        if name not in listed and name not in BASE_SYSTEM and not name.startswith("edgefleet")
    }
    assert not missing, f"add these to tests/tools.txt with their Debian package: {missing}"


def test_the_scan_sees_the_commands_it_must_see():
    started = started_commands()
    assert "mosquitto" in started
    assert "shellcheck" in started


def test_tools_file_names_a_package_for_each_command():
    tools = listed_tools()
    assert tools["mosquitto"] == "mosquitto"
    assert tools["shellcheck"] == "shellcheck"
