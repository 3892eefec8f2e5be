"""The arm64 Debian 12 root filesystem of `make test-pi`: preflight, cache, mounts, chroot.

Used by tests/pi/pi_check.py (see there and docs/testing.md). Nothing here is collected by
pytest: the checks need root, binfmt and minutes of emulation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"  # Raspberry Pi OS Bookworm's base: Python 3.11.2, glibc 2.36
ARCH = "arm64"
VARIANT = "minbase"
MIRROR = "http://deb.debian.org/debian"
# What install-device.sh needs from apt; present in the image, so the install runs offline.
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "update-binfmts": "binfmt-support",
    "qemu-aarch64-static": "qemu-user-static",
    "chroot": "coreutils",
}

# /proc/cpuinfo of a Raspberry Pi 4 (Cortex-A72) and 5 (Cortex-A76), 64-bit kernel. LiteRT
# reads it at Interpreter(); the x86 host's crashes it with SIGSEGV under qemu-user.
_CORES = {
    "cortex-a72": (
        "fp asimd evtstrm crc32 cpuid",
        "0x0",
        "0xd08",
        "3",
        "c03111",
        "Raspberry Pi 4 Model B Rev 1.1",
    ),
    "cortex-a76": (
        (
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
            "lrcpc dcpop asimddp"
        ),
        "0x4",
        "0xd0b",
        "1",
        "d04170",
        "Raspberry Pi 5 Model B Rev 1.0",
    ),
}


class PiCheckError(RuntimeError):
    """A check failed or the environment cannot run the checks (message says which)."""


def cpuinfo(cpu: str) -> str:
    """A Pi-style aarch64 /proc/cpuinfo for the qemu CPU model ``cpu``."""
    features, variant, part, revision, board_rev, model = _CORES[cpu]
    cores = "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
        f"CPU part\t: {part}\nCPU revision\t: {revision}\n\n"
        for n in range(4)
    )
    return f"{cores}Revision\t: {board_rev}\nSerial\t\t: 10000000c0ffee42\nModel\t\t: {model}\n"


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/edgefleet``: outside the checkout, kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


def why_not_runnable() -> str | None:
    """None when this machine can run the checks (binfmt set up here), else the reason."""
    if os.geteuid() != 0:
        return "it needs root (mmdebstrap, chroot, mounts); run `sudo make test-pi`"
    missing = [f"{cmd} ({pkg})" for cmd, pkg in TOOLS.items() if not _which(cmd)]
    if missing:
        packages = " ".join(sorted(set(TOOLS.values()) - {"coreutils"}))
        return f"missing {', '.join(missing)}: apt-get install {packages}"
    if not BINFMT.is_dir():
        return f"the kernel has no binfmt_misc ({BINFMT} is missing)"
    if not os.path.ismount(BINFMT):
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        run(["update-binfmts", "--enable", "qemu-aarch64"])
    if not entry.exists() or "enabled" not in entry.read_text():
        return f"qemu-aarch64 is not registered in {BINFMT}: update-binfmts --enable qemu-aarch64"
    return None


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")


def run(
    argv: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure raises with its output."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=timeout, env=env
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise PiCheckError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{tail}")
    return proc


def rootfs_key() -> str:
    """Cache key: everything that decides what mmdebstrap makes."""
    spec = {"suite": SUITE, "arch": ARCH, "variant": VARIANT, "mirror": MIRROR}
    spec["packages"] = " ".join(sorted(PACKAGES))
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_rootfs(say: object) -> tuple[Path, bool]:
    """The cached root filesystem tarball, built first if missing; (path, was it built now)."""
    folder = cache_dir() / "pi-rootfs"
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"{SUITE}-{ARCH}-{rootfs_key()}.tar"
    if tarball.is_file():
        return tarball, False
    partial = tarball.with_name(tarball.name + ".partial")
    log = folder / "mmdebstrap.log"
    say(f"building the {SUITE} {ARCH} root filesystem with mmdebstrap (minutes; log: {log})")
    argv = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        f"--architectures={ARCH}",
        f"--include={','.join(PACKAGES)}",
        "--format=tar",
        SUITE,
        str(partial),
        MIRROR,
    ]
    with log.open("w") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        partial.unlink(missing_ok=True)
        tail = log.read_text()[-3000:]
        raise PiCheckError(f"mmdebstrap failed ({code}); end of {log}:\n{tail}")
    partial.rename(tarball)  # only a complete tarball is ever used
    return tarball, True


@dataclass
class Chroot:
    """An unpacked root filesystem with /proc, /sys, /dev and a Pi cpuinfo mounted."""

    root: Path
    cpu: str = "cortex-a72"

    def __post_init__(self) -> None:
        self.mounts: list[Path] = []

    @classmethod
    def unpack(cls, tarball: Path, root: Path) -> Chroot:
        root.mkdir(parents=True)
        run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], timeout=300)
        entry = (BINFMT / "qemu-aarch64").read_text().splitlines()
        interpreter = next(ln.split()[1] for ln in entry if ln.startswith("interpreter"))
        flags = next((ln.split(":")[1] for ln in entry if ln.startswith("flags")), "")
        if "F" not in flags:  # the kernel opens it at each exec: it must exist in the root
            inside = root / interpreter.lstrip("/")
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(interpreter, inside)
        return cls(root)

    def mount(self, cpu: str) -> None:
        """Mount the kernel file systems and the cpuinfo of ``cpu`` (the QEMU_CPU used)."""
        self.cpu = cpu
        info = self.root.parent / f"cpuinfo-{cpu}"
        info.write_text(cpuinfo(cpu))
        self._mount(["-t", "proc", "proc"], "proc")
        self._mount(["--bind", str(info)], "proc/cpuinfo")
        self._mount(["-t", "sysfs", "-o", "ro", "sysfs"], "sys")
        self._mount(["--rbind", "/dev"], "dev")
        run(["mount", "--make-rslave", str(self.root / "dev")])

    def switch_cpu(self, cpu: str) -> None:
        """Bind the cpuinfo of ``cpu`` instead (the other mounts stay; programs started
        from now on get QEMU_CPU=cpu)."""
        target = self.root / "proc/cpuinfo"
        run(["umount", str(target)])
        self.mounts.remove(target)
        self.cpu = cpu
        info = self.root.parent / f"cpuinfo-{cpu}"
        info.write_text(cpuinfo(cpu))
        self._mount(["--bind", str(info)], "proc/cpuinfo")

    def _mount(self, args: list[str], target: str) -> None:
        path = self.root / target
        run(["mount", *args, str(path)])
        self.mounts.append(path)

    def unmount(self) -> None:
        """Unmount everything this object mounted (innermost first)."""
        while self.mounts:
            path = self.mounts.pop()
            flag = ["-R"] if path.name == "dev" else []
            with contextlib.suppress(PiCheckError):
                run(["umount", *flag, str(path)])

    def still_mounted(self) -> list[str]:
        """Mount points under the root (must be none before the root is deleted)."""
        prefix = str(self.root.resolve()) + "/"
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        return [p for p in (line.split()[4] for line in lines) if p.startswith(prefix)]

    def env(self, **extra: str) -> dict[str, str]:
        base = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root", "QEMU_CPU": self.cpu}
        return base | extra

    def argv(self, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        """``argv`` run inside the root, as ``user`` (with its groups) if given."""
        if user is None:
            return ["chroot", str(self.root), *argv]
        drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        return ["chroot", str(self.root), *drop, *argv]

    def run(
        self, argv: Sequence[str], *, user: str | None = None, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(argv, user=user), timeout=timeout, env=self.env(**env))

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


def remove_tree(chroot: Chroot) -> None:
    """Delete the unpacked root, refusing while anything is mounted under it."""
    chroot.unmount()
    left = chroot.still_mounted()
    if left:
        raise PiCheckError(f"not deleting {chroot.root}: still mounted: {', '.join(left)}")
    shutil.rmtree(chroot.root)


def timed(start: float) -> str:
    return f"{time.monotonic() - start:6.1f}s"


def auxv_caps(chroot: Chroot) -> str:
    """AT_HWCAP/AT_HWCAP2 that qemu gives the guest: shows which CPU model is emulated."""
    # Set inside the root: the x86 `chroot` would print its own auxv first.
    out = chroot.run(["sh", "-c", "LD_SHOW_AUXV=1 /bin/true"]).stdout
    caps = (line.split() for line in out.splitlines() if line.startswith("AT_HWCAP"))
    return " ".join(f"{name.rstrip(':')}={value}" for name, value, *_ in caps)


def binfmt_interpreter() -> Iterator[str]:
    """The registered aarch64 interpreter and its flags (for the report)."""
    text = (BINFMT / "qemu-aarch64").read_text()
    for line in text.splitlines():
        if line.startswith(("interpreter", "flags")):
            yield line
