"""The agent's wheels for a device bundle, and a wheelhouse of their dependencies.

A bundle carries the ``edgefleet-shared`` and ``edgefleet-device`` wheels of the host's own
version, so a device runs exactly the agent its host was built with. Where they come from:

- an editable install from a checkout (``make dev``): ``pip wheel`` builds them from the
  checkout's ``shared/`` and ``device/`` folders;
- an install from wheels (``pip install edgefleet-host``): the installed files are packed
  back into a wheel from the distribution's RECORD, METADATA and entry points.

Their third-party dependencies (LiteRT, numpy, paho-mqtt, ...) come from the package index on
the device, or from a wheelhouse that :func:`fill_wheelhouse` downloads on the host for the
device's platform (default: Raspberry Pi OS Bookworm 64-bit, aarch64 with CPython 3.11).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.requirements import InvalidRequirement, Requirement

from edgefleet.host import __version__
from edgefleet.host.errors import ProvisionError

AGENT_DISTRIBUTIONS = ("edgefleet-shared", "edgefleet-device")
# glibc 2.36 is Bookworm's. pip matches --platform tags literally, so fill_wheelhouse adds the
# older manylinux tags a glibc 2.36 system also runs (see expand_platforms).
DEVICE_PLATFORMS = ("manylinux_2_36_aarch64", "linux_aarch64")
DEVICE_PYTHON = "3.11"
# Installer bookkeeping in an installed .dist-info that does not belong in a wheel.
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws", "RECORD.p7s"}
# Built wheels by (source folder, fingerprint of its files): provisioning many devices in one
# process builds each wheel once, and a changed checkout is rebuilt.
_BUILT: dict[tuple[str, str], tuple[str, bytes]] = {}


def agent_wheels(out_dir: Path) -> list[Path]:
    """Write the edgefleet-shared and edgefleet-device wheels of this host's version.

    Args:
        out_dir: Folder for the wheels (created if missing).

    Returns:
        The two wheel paths, shared first.

    Raises:
        ProvisionError: a distribution is missing, of another version, or cannot be built.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_agent_wheel(name, out_dir) for name in AGENT_DISTRIBUTIONS]


def _agent_wheel(name: str, out_dir: Path) -> Path:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError as exc:
        raise ProvisionError(
            f"{name} is not installed next to edgefleet-host, so the bundle cannot carry the "
            "agent: install edgefleet-host with its dependencies (pip install edgefleet-host)"
        ) from exc
    if dist.version != __version__:
        raise ProvisionError(
            f"{name} {dist.version} is installed but edgefleet-host is {__version__}: install "
            f"the matching version (pip install '{name}=={__version__}')"
        )
    source = editable_source(dist)
    return build_wheel(source, out_dir) if source else repack_wheel(dist, out_dir)


def editable_source(dist: metadata.Distribution) -> Path | None:
    """The checkout folder of an editable install (PEP 660 ``direct_url.json``), else None."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(info["url"])
    source = Path(unquote(url.path))
    if url.scheme != "file" or not (source / "pyproject.toml").is_file():
        raise ProvisionError(
            f"{dist.metadata['Name']} was installed in editable mode from {info['url']}, which "
            "holds no pyproject.toml any more: reinstall it (make dev, or pip install -e DIR)"
        )
    return source


def build_wheel(source: Path, out_dir: Path) -> Path:
    """Build the wheel of the project in ``source`` with pip into ``out_dir``."""
    key = (str(source.resolve()), _fingerprint(source))
    if key not in _BUILT:
        _BUILT[key] = _pip_wheel(source)
    name, data = _BUILT[key]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_bytes(data)
    return path


def _pip_wheel(source: Path) -> tuple[str, bytes]:
    # Without build isolation pip needs no index; the dev environment has hatchling.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
        _run_pip(
            ["wheel", "--no-deps", *isolation, "-w", tmp, str(source)],
            what=f"building the wheel of {source}",
            advice="check that the checkout is complete; without hatchling in this environment "
            "pip fetches it from the index (pip install hatchling avoids that)",
        )
        (wheel,) = Path(tmp).glob("*.whl")
        return wheel.name, wheel.read_bytes()


def _fingerprint(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and not _is_build_debris(rel):
            stat = path.stat()
            digest.update(f"{rel.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _is_build_debris(rel: Path) -> bool:
    return any(
        part in {"__pycache__", "build", "dist"} or part.endswith(".egg-info") for part in rel.parts
    )


def repack_wheel(dist: metadata.Distribution, out_dir: Path) -> Path:
    """Pack an installed (non-editable) distribution back into a wheel in ``out_dir``.

    The wheel holds the distribution's package files and its .dist-info (METADATA, WHEEL,
    entry_points.txt, licenses) with a new RECORD; console scripts and bytecode, which pip
    makes at install time, are left out.
    """
    files = [f for f in dist.files or () if _belongs_in_wheel(f.parts)]
    info_dirs = {f.parts[0] for f in files if f.parts[0].endswith(".dist-info")}
    if len(info_dirs) != 1 or not any(f.name == "METADATA" for f in files):
        raise ProvisionError(
            f"the installed {dist.metadata['Name']} has no usable RECORD/METADATA: reinstall it "
            f"(pip install --force-reinstall {dist.metadata['Name']}=={dist.version})"
        )
    (info_dir,) = info_dirs
    tag = _wheel_tag(dist.read_text("WHEEL") or "")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{dist.version}-{tag}.whl"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    # The .dist-info goes last, as wheel builders do, so a reader finds the code first.
    ordered = sorted(files, key=lambda f: (f.parts[0] == info_dir, str(f)))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in ordered:
            data = Path(str(dist.locate_file(entry))).read_bytes()
            arcname = "/".join(entry.parts)
            zf.writestr(arcname, data)
            writer.writerow([arcname, _record_hash(data), len(data)])
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        zf.writestr(f"{info_dir}/RECORD", record.getvalue())
    return path


def _belongs_in_wheel(parts: tuple[str, ...]) -> bool:
    if parts[0] == ".." or "__pycache__" in parts or parts[-1].endswith(".pyc"):
        return False  # scripts outside site-packages and bytecode: made by the installer
    return not (parts[0].endswith(".dist-info") and parts[-1] in _INSTALL_ONLY)


def _wheel_tag(wheel_file: str) -> str:
    tags = HeaderParser().parsestr(wheel_file).get_all("Tag") or ["py3-none-any"]
    return str(tags[0])


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def fill_wheelhouse(
    directory: Path,
    *,
    platforms: Sequence[str] = DEVICE_PLATFORMS,
    python_version: str = DEVICE_PYTHON,
    extras: Sequence[str] = ("litert",),
) -> list[Path]:
    """Download the agent's dependencies as wheels for the device's platform.

    The requirements are the Requires-Dist lines of the agent wheels (with ``extras``), their
    markers evaluated for the target; pip resolves the rest of the tree.

    Args:
        directory: The wheelhouse (created if missing; wheels already there are kept).
        platforms: pip platform tags of the device, most specific first.
        python_version: The device's Python, e.g. "3.11".
        extras: edgefleet-device extras: ("litert",), or ("legacy",) for tflite-runtime.

    Returns:
        Every wheel in the wheelhouse afterwards.

    Raises:
        ProvisionError: pip is missing, or a package has no wheel for the platform.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-agent-") as tmp:
        wheels = agent_wheels(Path(tmp))
        requirements = agent_requirements(
            wheels, extras=extras, python_version=python_version, machine=_machine(platforms)
        )
    platform_args = [arg for p in expand_platforms(platforms) for arg in ("--platform", p)]
    _run_pip(
        [
            "download",
            "--only-binary=:all:",
            *platform_args,
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "-d",
            str(directory),
            *requirements,
        ],
        what=f"downloading wheels for {', '.join(platforms)} / CPython {python_version}",
        advice="check the network (a proxy needs PIP_INDEX_URL or HTTPS_PROXY); a package with "
        "no wheel for the device can be built on a device (pip wheel PACKAGE) and put into "
        f"{directory}",
    )
    return sorted(directory.glob("*.whl"))


def agent_requirements(
    wheels: Iterable[Path], *, extras: Sequence[str], python_version: str, machine: str
) -> list[str]:
    """Third-party Requires-Dist of the agent wheels that apply on the target (sorted)."""
    own = {re.sub(r"[-_.]+", "-", n) for n in AGENT_DISTRIBUTIONS}
    environment = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "platform_machine": machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    wanted: set[str] = set()
    for wheel in wheels:
        for line in _requires_dist(wheel):
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                raise ProvisionError(f"{wheel.name}: bad Requires-Dist {line!r}: {exc}") from exc
            if re.sub(r"[-_.]+", "-", req.name).lower() in own:
                continue  # the bundle carries these
            if req.marker is None or any(
                req.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras)
            ):
                req.marker = None
                wanted.add(str(req))
    return sorted(wanted)


def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(zf.read(name).decode())
    return [str(v) for v in headers.get_all("Requires-Dist") or []]


def expand_platforms(platforms: Sequence[str]) -> list[str]:
    """Add the older manylinux tags each ``manylinux_2_Y_ARCH`` tag's glibc also runs.

    manylinux_2_36_aarch64 -> manylinux_2_36_aarch64, manylinux_2_35_aarch64, ...,
    manylinux_2_17_aarch64, manylinux2014_aarch64; other tags stay as they are.
    """
    expanded: list[str] = []
    for tag in platforms:
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if match is None:
            expanded.append(tag)
            continue
        minor, arch = int(match[1]), match[2]
        expanded += [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
        expanded.append(f"manylinux2014_{arch}")
    return list(dict.fromkeys(expanded))


def _machine(platforms: Sequence[str]) -> str:
    """The machine of a platform tag: manylinux_2_36_aarch64 -> aarch64."""
    if not platforms:
        raise ProvisionError("name at least one platform tag, e.g. manylinux_2_36_aarch64")
    match = re.fullmatch(r"(?:many|musl)?linux(?:\d+|_\d+_\d+)?_(\w+)", platforms[0])
    if match is None:
        raise ProvisionError(
            f"platform tag {platforms[0]!r} is not a Linux tag such as manylinux_2_36_aarch64 "
            "or linux_armv7l (devices run Linux)"
        )
    return match[1]


def _run_pip(args: list[str], *, what: str, advice: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 and "No module named pip" in done.stderr:
        # Not checked up front: importlib's find_spec("pip") trips setuptools' distutils hack.
        raise ProvisionError(
            f"{what} needs pip, which this Python ({sys.executable}) lacks: "
            f"{sys.executable} -m ensurepip"
        )
    if done.returncode != 0:
        missing = re.search(r"No matching distribution found for (\S+)", done.stderr)
        culprit = f" (no wheel of {missing[1]})" if missing else ""
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise ProvisionError(f"pip failed {what}{culprit}: {advice}\npip said:\n{tail}")
