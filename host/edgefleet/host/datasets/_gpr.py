"""Simulated GPR B-scans (gprMax FDTD): scan parameters, gprMax input files, the bundled set.

Each scan is a 2-D (TM) model of a soil half-space with an antenna pair stepping along the
surface over one of four targets (:data:`CLASSES`): a perfectly conducting ``metal`` pipe,
an air-filled PVC ``plastic`` pipe, a solid ``concrete`` duct, or ``none``. Every scan also
holds a few small stones as clutter. Soil, target, antenna frequency, trace spacing, number
of traces, time window and number of samples are drawn from ``numpy.random.default_rng``
seeded with the scan's own seed (``seed + index``), so any one scan can be rebuilt alone.

A scan is stored as ``<out>/<class>/<seed>.npy``: float32 ``(traces, samples)`` of the
received ``Ez`` field, resampled (band-limited) from the FDTD time step to ``samples``.
``manifest.jsonl`` holds one JSON object of parameters per finished scan. Running gprMax
itself lives in ``_gprmax`` (the optional ``gpr`` extra).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from edgefleet.host.datasets._mnist import Dataset
from edgefleet.host.errors import DatasetError
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.gpr import C0

if TYPE_CHECKING:
    from collections.abc import Iterable

CLASSES = ("metal", "plastic", "concrete", "none")
DX_MIN, DX_MAX = 0.005, 0.014  # FDTD cell size range, m (chosen per scan, see _cell_size)
CELLS_PER_WAVELENGTH = 4  # at twice the centre frequency (8 at fc), in the soil: coarse
CELLS_PER_RADIUS = 5  # the target is at least 10 cells across, so a pipe's air core is resolved
FREQ_BAND = (300e6, 600e6)  # Ricker centre frequency range, Hz: utility-locating antennas
RADIUS_RANGE = (0.04, 0.10)  # m: service pipes and conduits of 8-20 cm outer diameter
DEPTH_RANGE = (0.04, 0.14)  # m from the surface to the top of the target
OFFSET_WAVELENGTHS = 0.075  # Tx-Rx offset in free-space wavelengths: 7.5 cm at 300 MHz, 3.75 at 600
PML_CELLS = 8
SOIL_THICKNESS = 0.45  # m of soil above the bottom PML
AIR_THICKNESS = 0.06  # m of air between the surface and the top PML
MARGIN = 0.04  # m between the PML and the first/last antenna position
MANIFEST = "manifest.jsonl"

Split = Literal["train", "heldout", "eval"]


@dataclass(frozen=True)
class Stone:
    """A small circular stone (clutter) in the soil; coordinates in metres."""

    x: float
    y: float
    radius: float
    eps: float


class LineGeometry:
    """The domain of a B-scan along its survey line (both generators' scan parameters).

    The subclass supplies ``dx``, ``n_traces``, ``spacing``, ``offset`` and ``soil_top``.
    """

    dx: float
    n_traces: int
    spacing: float
    offset: float

    @property
    def soil_top(self) -> float:
        """Height of the soil surface above the domain's bottom edge."""
        raise NotImplementedError

    @property
    def width(self) -> float:
        """Domain width in metres: the survey line plus margins and PML."""
        pml = PML_CELLS * self.dx
        return (self.n_traces - 1) * self.spacing + self.offset + 2 * (pml + MARGIN)

    @property
    def x0(self) -> float:
        """Transmitter position of the first trace."""
        return PML_CELLS * self.dx + MARGIN

    @property
    def height_total(self) -> float:
        """Domain height: PML, soil, air, PML."""
        return self.soil_top + AIR_THICKNESS + PML_CELLS * self.dx


@dataclass(frozen=True)
class ScanParams(LineGeometry):
    """Everything that defines one simulated B-scan (the manifest row)."""

    seed: int
    label: str
    soil_eps: float
    soil_sigma: float
    freq_hz: float
    dx: float
    n_traces: int
    spacing: float
    offset: float
    height: float
    target_x: float
    target_depth: float
    target_radius: float
    target_eps: float
    target_sigma: float
    pipe_wall: float
    time_window: float
    n_samples: int
    stones: tuple[Stone, ...] = field(default_factory=tuple)

    @property
    def soil_top(self) -> float:
        """Height of the soil surface above the domain's bottom edge."""
        return PML_CELLS * self.dx + SOIL_THICKNESS


def _cell_size(soil_eps: float, freq: float, radius: float) -> float:
    # Coarsest cell that keeps CELLS_PER_WAVELENGTH at 2 x fc in this soil and
    # CELLS_PER_RADIUS across the target's radius: the cost of a scan is mostly
    # per-time-step overhead, and the time step grows with the cell. The radius is drawn for
    # every class (a `none` scan draws the target it does not place), so the cell says
    # nothing about the class.
    wavelength = C0 / math.sqrt(soil_eps) / (2.0 * freq)
    dx = min(max(min(wavelength / CELLS_PER_WAVELENGTH, radius / CELLS_PER_RADIUS), DX_MIN), DX_MAX)
    return math.floor(dx * 2000) / 2000  # 0.5 mm steps


def sample_params(scan_seed: int) -> ScanParams:
    """Draw the parameters of one scan from its own seed (the class is ``seed % 4``)."""
    rng = np.random.default_rng(scan_seed)
    # Wetness couples permittivity and conductivity loosely: dry sand (eps ~3, 0.1 mS/m)
    # to wet clay (eps ~25, ~50 mS/m), with scatter so neither fixes the other.
    wet = rng.uniform(0.0, 1.0)
    soil_eps = float(np.clip(3.0 + 22.0 * wet + rng.normal(0.0, 2.0), 3.0, 25.0))
    soil_sigma = float(10 ** np.clip(-4.0 + 2.7 * wet + rng.normal(0.0, 0.4), -4.0, -1.3))
    freq = float(rng.uniform(*FREQ_BAND))
    depth = float(rng.uniform(*DEPTH_RANGE))
    radius = float(rng.uniform(*RADIUS_RANGE))
    dx = _cell_size(soil_eps, freq, radius)
    n_traces = int(rng.integers(10, 18))
    spacing = float(rng.uniform(0.025, 0.045))
    # An antenna's size scales with its wavelength, and one radar keeps one Tx-Rx offset:
    # tying the offset to the frequency keeps the direct wave (the only amplitude reference
    # a PNG keeps) a function of the soil and the frequency, not of an unrelated draw.
    offset = OFFSET_WAVELENGTHS * C0 / freq
    length = (n_traces - 1) * spacing
    target_x = PML_CELLS * dx + MARGIN + offset / 2 + length * float(rng.uniform(0.2, 0.8))
    label = CLASSES[scan_seed % len(CLASSES)]
    # The window reaches a random depth below the target (drawn for every class, so the
    # window says nothing about whether a target is there).
    reach = max(depth + 2 * radius + 0.03, 0.16) + float(rng.uniform(0.0, 0.05))
    time_window = 2 * reach * math.sqrt(soil_eps) / C0 + 2.8 / freq
    # Band-limited to ~2.5 x the centre frequency: keep >= 5 samples per centre period.
    min_samples = math.ceil(5.0 * freq * time_window)
    n_samples = int(rng.integers(min(max(64, min_samples), 128), 129))
    n_samples = max(n_samples, min_samples)
    target_eps, target_sigma = _target_material(label, rng)
    return ScanParams(
        seed=scan_seed,
        label=label,
        soil_eps=round(soil_eps, 4),
        soil_sigma=float(f"{soil_sigma:.5g}"),
        freq_hz=round(freq),
        dx=dx,
        n_traces=n_traces,
        spacing=round(spacing, 5),
        offset=round(offset, 4),
        height=round(float(rng.uniform(0.0, 0.03)), 4),
        target_x=round(target_x, 4),
        target_depth=round(depth, 4),
        target_radius=round(radius, 4),
        target_eps=target_eps,
        target_sigma=target_sigma,
        # PVC conduit walls are 4-8 mm; at least one cell (the cell is <= radius / 5).
        pipe_wall=round(max(float(rng.uniform(0.004, 0.008)), dx), 4),
        time_window=float(f"{time_window:.5g}"),
        n_samples=n_samples,
        stones=_stones(rng, dx=dx, length=length, offset=offset, target=(target_x, depth, radius)),
    )


def _target_material(label: str, rng: np.random.Generator) -> tuple[float, float]:
    eps = float(rng.uniform(5.0, 9.0))  # concrete; drawn always to keep the stream aligned
    sigma = float(10 ** rng.uniform(-3.0, -1.5))
    if label == "concrete":
        return round(eps, 4), float(f"{sigma:.5g}")
    if label == "plastic":
        return 3.0, 0.0  # PVC wall
    return 0.0, 0.0


def _stones(
    rng: np.random.Generator,
    *,
    dx: float,
    length: float,
    offset: float,
    target: tuple[float, float, float],
) -> tuple[Stone, ...]:
    tx, tdepth, tradius = target
    soil_top = PML_CELLS * dx + SOIL_THICKNESS
    ty = soil_top - tdepth - tradius
    x_lo = PML_CELLS * dx + MARGIN / 2
    x_hi = x_lo + length + offset + MARGIN
    y_lo, y_hi = soil_top - 0.3, soil_top - 0.03
    wanted, stones = int(rng.integers(1, 5)), list[Stone]()
    for _ in range(4 * wanted):  # a few tries each: stones never touch the target
        radius = float(rng.uniform(0.01, 0.02))
        x, y = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi - radius))
        eps = float(rng.uniform(4.0, 9.0))
        if math.hypot(x - tx, y - ty) > tradius + radius + 0.02:
            stones.append(Stone(round(x, 4), round(y, 4), round(radius, 4), round(eps, 3)))
        if len(stones) == wanted:
            break
    return tuple(stones)


def input_file(params: ScanParams) -> str:
    """The gprMax input file (hash commands) that simulates ``params``."""
    p, soil_top = params, params.soil_top
    ant_y = soil_top + max(p.height, p.dx)
    lines = [
        f"#title: edgefleet GPR scan {p.seed} ({p.label})",
        "#domain_mode: TM",
        f"#domain: {p.width:.4f} {p.height_total:.4f} inf",
        f"#dx_dy_dz: {p.dx} {p.dx} {p.dx}",
        f"#time_window: {p.time_window:.6g}",
        f"#pml_cells: {PML_CELLS} {PML_CELLS} 0 {PML_CELLS} {PML_CELLS} 0",
        "#num_threads: 1",
        f"#material: {p.soil_eps} {p.soil_sigma} 1 0 soil",
        f"#box: 0 0 0 {p.width:.4f} {soil_top} inf soil",
        f"#waveform: ricker 1 {p.freq_hz:.6g} pulse",
        f"#hertzian_dipole: z {p.x0:.4f} {ant_y:.4f} inf pulse",
        f"#rx: {p.x0 + p.offset:.4f} {ant_y:.4f} inf",
        f"#src_steps: {p.spacing} 0 0",
        f"#rx_steps: {p.spacing} 0 0",
    ]
    for i, s in enumerate(p.stones):
        lines.append(f"#material: {s.eps} 0.001 1 0 stone{i}")
        lines.append(f"#cylinder: {s.x} {s.y} 0 {s.x} {s.y} inf {s.radius} stone{i}")
    lines.extend(_target_lines(p, soil_top))
    return "\n".join(lines) + "\n"


def _target_lines(p: ScanParams, soil_top: float) -> list[str]:
    x, y = p.target_x, soil_top - p.target_depth - p.target_radius
    cyl = f"#cylinder: {x} {y:.4f} 0 {x} {y:.4f} inf"
    if p.label == "metal":
        return [f"{cyl} {p.target_radius} pec"]
    if p.label == "plastic":
        inner = p.target_radius - p.pipe_wall
        return [
            f"#material: {p.target_eps} {p.target_sigma} 1 0 pvc",
            f"{cyl} {p.target_radius} pvc",
            f"{cyl} {inner:.4f} free_space",
        ]
    if p.label == "concrete":
        return [
            f"#material: {p.target_eps} {p.target_sigma} 1 0 concrete",
            f"{cyl} {p.target_radius} concrete",
        ]
    return []


def scan_path(out_dir: Path, params: ScanParams) -> Path:
    """Where scan ``params.seed`` is stored."""
    return out_dir / params.label / f"{params.seed:07d}.npy"


def write_manifest(out_dir: Path) -> Path:
    """Rewrite ``manifest.jsonl`` (atomically) from every finished scan in ``out_dir``."""
    seeds = sorted(int(p.stem) for p in out_dir.glob("*/*.npy") if not p.name.startswith("."))
    lines = [json.dumps(asdict(sample_params(s)), sort_keys=True) for s in seeds]
    path = out_dir / MANIFEST
    write_atomic(path, "".join(line + "\n" for line in lines).encode())
    return path


def default_dir() -> Path:
    """Where the bundled GPR data set lives inside the installed package."""
    return Path(str(resources.files("edgefleet.host.datasets") / "data" / "gpr"))


def load_gpr(split: Split = "train", directory: Path | None = None) -> Dataset:
    """Load the bundled simulated B-scans.

    Args:
        split: ``"train"``, or ``"heldout"`` (alias ``"eval"``): scans from a disjoint seed
            range (see docs/gpr.md).
        directory: the data set root (holding ``train/`` and ``heldout/``); bundled by default.

    Returns:
        A :class:`Dataset` whose ``x`` is a 1-D object array of float32 ``(traces, samples)``
        arrays (scans differ in size), ``y`` the class index into :data:`CLASSES`.

    Raises:
        DatasetError: the split folder is missing, empty or holds an unreadable scan.
    """
    if split not in {"train", "heldout", "eval"}:
        raise DatasetError(f"unknown GPR split {split!r}; use train or heldout (eval)")
    root = (directory or default_dir()) / ("heldout" if split == "eval" else split)
    files = sorted(root.glob("*/*.npy"))
    files = [f for f in files if f.parent.name in CLASSES and not f.name.startswith(".")]
    if not files:
        raise DatasetError(
            f"no GPR scans under {root}; generate them with "
            f"`edgefleet gpr generate --out {root} --n 400 --seed <S> --set first`"
        )
    return Dataset(
        x=_object_array(_load_scan(f) for f in files),
        y=np.array([CLASSES.index(f.parent.name) for f in files], dtype=np.int64),
        labels=CLASSES,
    )


def _load_scan(path: Path) -> npt.NDArray[np.float32]:
    try:
        scan = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"GPR scan {path} is unreadable ({exc}); regenerate it") from exc
    if scan.ndim != 2 or scan.dtype != np.float32:  # noqa: PLR2004 - (traces, samples)
        raise DatasetError(f"GPR scan {path} has {scan.dtype} {scan.shape}; expected 2-D float32")
    out: npt.NDArray[np.float32] = scan
    return out


def _object_array(items: Iterable[npt.NDArray[np.float32]]) -> npt.NDArray[np.object_]:
    scans = list(items)
    out = np.empty(len(scans), dtype=object)
    for i, scan in enumerate(scans):
        out[i] = scan
    return out
