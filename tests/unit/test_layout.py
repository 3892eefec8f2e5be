"""The repository keeps the shape a newcomer relies on (README "Where things live")."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "host" / "edgefleet" / "host"
PACKAGES = [ROOT / d / "edgefleet" / d for d in ("shared", "device", "host")]
MAX_LINES = 500
CLI_FILES = {"device/edgefleet/device/cli.py", "device/edgefleet/device/_cli_app.py"}


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in pkg.rglob("*.py")]


def test_no_symlinks_are_tracked():
    listing = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert listing, "git ls-files printed nothing: not a checkout?"
    assert [line for line in listing.splitlines() if line.startswith("120000")] == []


def test_the_namespace_has_no_init_anywhere():
    for d in ("shared", "device", "host"):
        assert not (ROOT / d / "edgefleet" / "__init__.py").exists()
    assert not (ROOT / "edgefleet").exists()


def test_host_top_level_holds_at_most_six_modules():
    modules = sorted(p.name for p in HOST.glob("*.py"))
    assert len(modules) <= 6, modules


@pytest.mark.parametrize("sub", ["cli", "quantize", "training", "datasets", "fleet", "provision"])
def test_each_host_subpackage_exists(sub):
    assert (HOST / sub / "__init__.py").is_file()


def test_library_subpackages_name_their_public_api():
    for init in HOST.glob("*/__init__.py"):
        if init.parent.name == "cli":
            continue
        tree = ast.parse(init.read_text())
        names = [
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        ]
        assert "__all__" in names, f"{init.relative_to(ROOT)} has no __all__"


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_lazy_imports_only_in_the_cli():
    offenders = []
    for p in _sources():
        rel = p.relative_to(ROOT).as_posix()
        if "/cli/" in rel or rel in CLI_FILES:
            continue
        offenders += [
            f"{rel}:{n}"
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if "PLC0415" in line
        ]
    assert offenders == [], "import at the top of the module (lazy imports belong to the CLI)"
