"""What the board says about itself: resident memory and SoC temperature (Linux /proc, /sys)."""

from __future__ import annotations

from pathlib import Path

_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
_STATUS = Path("/proc/self/status")


def rss_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not available."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_temp_c(path: Path = _THERMAL) -> float | None:
    """SoC temperature in degrees Celsius where the board exposes it (Raspberry Pi does)."""
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None
