"""GPR B-scans as different radars record them: 250 MHz - 1.6 GHz, deep targets, clutter, noise.

The first generator (``_gpr``) draws one radar's settings: 300-600 MHz, 10-17 traces of
64-128 samples, targets 4-14 cm deep. A model trained on it alone scores far below its
held-out figure on scans from other antennas. This generator draws the radar too:

* the antenna's centre frequency, log-uniform over 250 MHz - 1.6 GHz (the utility-locating
  band, ground-coupled antennas from deep-looking 250 MHz to concrete-scanning 1.6 GHz);
* a survey line about two free-space wavelengths long, so a scan always shows the same
  number of wavelengths whatever the antenna (a 2.4 m line at 250 MHz, 0.37 m at 1.6 GHz);
* a time window of 10-14 centre periods after the direct wave, sampled at 256-1024 samples
  per trace (what radars record), and the number of traces;
* a target down to 0.5 m deep where the window reaches it (it always reaches 0.5 m at the
  low end of the band; a 1.6 GHz window reaches 0.2-0.3 m), in soil whose loss makes deep
  targets weak;
* clutter: 2-8 stones (gravel, 2-4 cm across), a second soil layer with a rough interface
  depth, a rough surface;
* receiver noise, white, relative to the direct wave's peak.

The targets: a metal pipe, an air-filled PVC pipe (4-8 mm wall) of 8-20 cm outer diameter,
or a hollow concrete pipe of 100-300 mm bore with a 1.6-5.8 cm wall (a solid concrete rod
the size of a conduit is no utility, and where its permittivity matches the soil's no radar
sees it); ``none`` scans hold clutter only.

**Splits.** ``train`` and ``heldout`` (in-distribution) draw every setting except the
held-out ones; ``ood`` holds out whole settings: the 700-1000 MHz antenna band (no training
scan is in it), targets deeper than 0.4 m (no training target is), finer trace spacing and
longer scans (32-40 traces against 16-20), more noise (-35 to -25 dB against -60 to -30 dB)
and more samples per trace (512-1024 against 256-512).

Physical metadata goes with every scan (:func:`metadata`, the sidecar format of
``edgefleet.shared.gpr``): the time window, the trace spacing and the antenna frequency.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgefleet.host.datasets._gpr import (
    CLASSES,
    MANIFEST,
    MARGIN,
    PML_CELLS,
    LineGeometry,
    Stone,
    default_dir,
    load_gpr,
)
from edgefleet.host.datasets._radar_clutter import draw_stones, stone_model
from edgefleet.host.errors import DatasetError
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.gpr import C0, ScanMetadata, parse_metadata

RadarSplit = Literal["train", "heldout", "ood", "native"]

FREQ_RANGE = (250e6, 1600e6)  # Hz
HELDOUT_BAND = (700e6, 1000e6)  # Hz: no train/heldout scan is in it; the ood split is
MAX_TRAIN_DEPTH = 0.40  # m: deeper targets appear only in the ood split
MAX_DEPTH = 0.55  # m to the top of the target
MIN_DEPTH = 0.04
RADIUS_RANGE = (0.04, 0.10)  # m: service pipes and conduits of 8-20 cm outer diameter
# Concrete pipes (drains, culverts, duct sleeves) are hollow: 100-300 mm bore, walls from
# about a twelfth of the bore plus 8 mm (ASTM C14-like) to a sixth plus 8 mm (C76-like).
CONCRETE_BORE_RADIUS = (0.05, 0.15)  # m
CONCRETE_WALL = (1 / 12, 1 / 6, 0.008)  # (min, max) fraction of the bore, plus a constant
LINE_WAVELENGTHS = 2.0  # survey line length in free-space wavelengths
WINDOW_PERIODS = (10.0, 14.0)  # time window after the direct wave, in centre periods
DX_MIN, DX_MAX = 0.004, 0.03  # FDTD cell size range, m
OFFSET_WAVELENGTHS = 0.075  # Tx-Rx offset in free-space wavelengths (as in _gpr)
SEED_SALT = 0x5EED  # the radar set's random stream differs from _gpr's for the same seed


@dataclass(frozen=True)
class Bump:
    """A bump (soil) or a dent (air) of the rough surface: a cylinder centred on it."""

    x: float
    radius: float
    dent: bool


@dataclass(frozen=True)
class RadarScanParams(LineGeometry):
    """Everything that defines one scan of the radar set (the manifest row)."""

    seed: int
    split: str
    label: str
    soil_eps: float
    soil_sigma: float
    layer_depth: float  # m below the surface where the second layer starts
    layer_eps: float
    layer_sigma: float
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
    noise_db: float
    soil_thickness: float
    stones: tuple[Stone, ...] = field(default_factory=tuple)
    bumps: tuple[Bump, ...] = field(default_factory=tuple)

    @property
    def soil_top(self) -> float:
        """Height of the soil surface above the domain's bottom edge."""
        return PML_CELLS * self.dx + self.soil_thickness

    @property
    def sample_interval_ns(self) -> float:
        return self.time_window / self.n_samples * 1e9

    @property
    def target_contrast(self) -> float:
        """|Normal-incidence reflection coefficient| of a concrete pipe's wall against its soil.

        NaN for the other classes. Below about 0.1 the wall has nearly the soil's own
        permittivity and barely echoes; the pipe's air bore echoes whatever the wall does.
        """
        if self.label != "concrete":
            return math.nan
        # The echo of the pipe's top, in the second layer when the top is below its interface.
        around = self.layer_eps if self.target_depth > self.layer_depth else self.soil_eps
        a, b = math.sqrt(around), math.sqrt(self.target_eps)
        return abs(a - b) / (a + b)


def _in_band(freq: float) -> bool:
    return HELDOUT_BAND[0] <= freq < HELDOUT_BAND[1]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _frequency(rng: np.random.Generator, *, held_band: bool) -> float:
    if held_band:
        return _log_uniform(rng, *HELDOUT_BAND)
    for _ in range(100):  # log-uniform over the band without the held-out part
        freq = _log_uniform(rng, *FREQ_RANGE)
        if not _in_band(freq):
            return freq
    return FREQ_RANGE[0]


def _concrete_pipe(scan_seed: int, draw: float) -> tuple[float, float]:
    """A concrete pipe's (outer radius, wall) from the scan's ``RADIUS_RANGE`` draw.

    The bore maps the radius draw linearly onto ``CONCRETE_BORE_RADIUS`` and the wall comes
    from a stream of its own, so the main stream (and every other class's scans) is untouched.
    """
    lo, hi = RADIUS_RANGE
    bore = CONCRETE_BORE_RADIUS[0] + (draw - lo) / (hi - lo) * (
        CONCRETE_BORE_RADIUS[1] - CONCRETE_BORE_RADIUS[0]
    )
    low, high, extra = CONCRETE_WALL
    share = float(np.random.default_rng([SEED_SALT, scan_seed, 2]).uniform(low, high))
    wall = 2 * bore * share + extra
    return round(bore + wall, 4), round(wall, 4)


def reach(freq: float, soil_eps: float, periods: float) -> float:
    """Depth (m) whose two-way time is ``periods`` centre periods in this soil."""
    return periods / freq * C0 / math.sqrt(soil_eps) / 2.0


def sample_radar_params(scan_seed: int, split: RadarSplit) -> RadarScanParams:  # noqa: PLR0915 - one draw after another, in the order the seed's stream gives them
    """Draw one scan of the radar set from its own seed (the class is ``seed % 4``)."""
    rng = np.random.default_rng([SEED_SALT, scan_seed])
    label = CLASSES[scan_seed % len(CLASSES)]
    ood = split == "ood"
    # In the ood split, half the scans are in the held-out band, half have deep targets.
    ood_kind = ("band", "deep")[(scan_seed // len(CLASSES)) % 2] if ood else ""
    wet = rng.uniform(0.0, 1.0)
    soil_eps = float(np.clip(3.0 + 22.0 * wet + rng.normal(0.0, 2.0), 3.0, 25.0))
    soil_sigma = float(10 ** np.clip(-4.0 + 2.7 * wet + rng.normal(0.0, 0.4), -4.0, -1.3))
    radius = float(rng.uniform(*RADIUS_RANGE))
    concrete_wall = 0.0
    if label == "concrete":
        radius, concrete_wall = _concrete_pipe(scan_seed, radius)
    periods = float(rng.uniform(*WINDOW_PERIODS))
    # The echo's bottom must fit the window with two periods to spare.
    if ood_kind == "deep":
        for _ in range(100):  # a frequency (outside the held-out band) whose window reaches
            freq = _frequency(rng, held_band=False)
            if reach(freq, soil_eps, periods - 2.0) - 2 * radius > MAX_TRAIN_DEPTH + 0.02:
                break
        else:
            freq, soil_eps = FREQ_RANGE[0], 3.0
        hi = min(MAX_DEPTH, reach(freq, soil_eps, periods - 2.0) - 2 * radius)
        depth = float(rng.uniform(MAX_TRAIN_DEPTH, max(hi, MAX_TRAIN_DEPTH + 0.01)))
    else:
        freq = _frequency(rng, held_band=ood_kind == "band")
        hi = min(MAX_TRAIN_DEPTH, reach(freq, soil_eps, periods - 2.0) - 2 * radius)
        depth = float(rng.uniform(MIN_DEPTH, max(hi, MIN_DEPTH + 0.01)))
    wavelength = C0 / freq
    line = LINE_WAVELENGTHS * wavelength
    n_traces = int(rng.integers(32, 41)) if ood else int(rng.integers(16, 21))
    spacing = line / (n_traces - 1)
    native = split == "native"
    if native:  # a whole survey line as a radar records it: 150-250 traces, 1-1.5 cm apart
        # (at least one cell: at 250 MHz the cell, and so the spacing, can be 3 cm)
        n_traces = int(rng.integers(150, 251))
        spacing = float(rng.uniform(0.01, 0.015))
        line = (n_traces - 1) * spacing
    lam_soil = C0 / math.sqrt(soil_eps) / (2.0 * freq)
    # A concrete pipe's wall is at least 1.5 cells thick, so its ring is simulated as one.
    fine = min(lam_soil / 4, radius / 3, concrete_wall / 1.5 if concrete_wall else math.inf)
    dx = min(max(fine, DX_MIN), DX_MAX)
    dx = math.floor(dx * 2000) / 2000
    # gprMax steps the antennas by whole cells (#src_steps is rounded to the nearest cell):
    # snap the spacing to what is simulated, so the sidecar states the true spacing and the
    # last trace stays out of the PML.
    spacing = max(1, round(spacing / dx)) * dx
    line = (n_traces - 1) * spacing
    offset = OFFSET_WAVELENGTHS * wavelength
    where = float(rng.uniform(0.2, 0.8) if native else rng.uniform(0.3, 0.7))
    target_x = PML_CELLS * dx + MARGIN + offset / 2 + line * where
    height = float(rng.uniform(0.0, 0.02))
    # The window: the antenna's air gap, then `periods` centre periods of soil.
    time_window = 2 * height / C0 + (periods + 1.5) / freq
    samples = (512, 1024) if ood or native else (256, 512)
    n_samples = int(rng.integers(samples[0], samples[1] + 1))
    noise_db = float(rng.uniform(-35.0, -25.0) if ood or native else rng.uniform(-60.0, -30.0))
    # Soil below the deepest reflector adds cells, not echoes (the bottom PML absorbs).
    soil_thickness = max(depth + 2 * radius + 0.15, 0.3)
    layer_depth = float(rng.uniform(0.1, 1.0)) * soil_thickness
    layer_eps = float(np.clip(soil_eps * rng.uniform(0.7, 1.4), 3.0, 30.0))
    layer_sigma = float(soil_sigma * 10 ** rng.uniform(-0.3, 0.3))
    target_eps = float(rng.uniform(5.0, 9.0))
    target_sigma = float(10 ** rng.uniform(-3.0, -1.5))
    if label != "concrete":
        target_eps, target_sigma = (3.0, 0.0) if label == "plastic" else (0.0, 0.0)
    wall = float(rng.uniform(0.004, 0.008))
    soil_top = PML_CELLS * dx + soil_thickness
    stones = draw_stones(
        rng,
        dx=dx,
        soil_top=soil_top,
        span=(PML_CELLS * dx + MARGIN / 2, line + offset + MARGIN),
        target=(target_x, soil_top - depth - radius, radius),
        deepest=depth + 2 * radius,
    )
    bumps = tuple(
        Bump(
            x=round(
                float(rng.uniform(PML_CELLS * dx, PML_CELLS * dx + line + offset + 2 * MARGIN)), 4
            ),
            radius=round(float(rng.uniform(1.2, 3.0)) * dx, 4),
            dent=bool(rng.integers(0, 2)),
        )
        for _ in range(int(rng.integers(0, 9)))
    )
    return RadarScanParams(
        seed=scan_seed,
        split=split,
        label=label,
        soil_eps=round(soil_eps, 4),
        soil_sigma=float(f"{soil_sigma:.5g}"),
        layer_depth=round(layer_depth, 4),
        layer_eps=round(layer_eps, 4),
        layer_sigma=float(f"{layer_sigma:.5g}"),
        freq_hz=round(freq),
        dx=dx,
        n_traces=n_traces,
        spacing=round(spacing, 5),
        offset=round(offset, 4),
        height=round(height, 4),
        target_x=round(target_x, 4),
        target_depth=round(depth, 4),
        target_radius=round(radius, 4),
        target_eps=round(target_eps, 4),
        target_sigma=float(f"{target_sigma:.5g}"),
        # PVC walls are 4-8 mm; a cell coarser than the wall leaves the pipe a plain air
        # hole (at those wavelengths a thin wall is invisible) instead of a thick PVC ring.
        # A concrete pipe's wall: the ring of concrete around its air-filled bore.
        pipe_wall=round(concrete_wall if label == "concrete" else wall if wall >= dx else 0.0, 4),
        time_window=float(f"{time_window:.5g}"),
        n_samples=n_samples,
        noise_db=round(noise_db, 2),
        soil_thickness=round(soil_thickness, 4),
        stones=stones,
        bumps=bumps,
    )


def radar_input_file(p: RadarScanParams) -> str:
    """The gprMax input file (hash commands) that simulates ``p``."""
    soil_top = p.soil_top
    ant_y = soil_top + max(p.height, p.dx)
    layer_top = soil_top - p.layer_depth
    lines = [
        f"#title: edgefleet radar-set GPR scan {p.seed} ({p.split}, {p.label})",
        "#domain_mode: TM",
        f"#domain: {p.width:.4f} {p.height_total:.4f} inf",
        f"#dx_dy_dz: {p.dx} {p.dx} {p.dx}",
        f"#time_window: {p.time_window:.6g}",
        f"#pml_cells: {PML_CELLS} {PML_CELLS} 0 {PML_CELLS} {PML_CELLS} 0",
        "#num_threads: 1",
        f"#material: {p.soil_eps} {p.soil_sigma} 1 0 soil",
        f"#material: {p.layer_eps} {p.layer_sigma} 1 0 layer",
        f"#box: 0 0 0 {p.width:.4f} {soil_top:.4f} inf soil",
        f"#box: 0 0 0 {p.width:.4f} {layer_top:.4f} inf layer",
    ]
    lines += [  # the rough surface: soil bumps and air dents
        f"#cylinder: {b.x} {soil_top:.4f} 0 {b.x} {soil_top:.4f} inf {b.radius} "
        + ("free_space" if b.dent else "soil")
        for b in p.bumps
    ]
    lines += [
        f"#waveform: ricker 1 {p.freq_hz:.6g} pulse",
        f"#hertzian_dipole: z {p.x0:.4f} {ant_y:.4f} inf pulse",
        f"#rx: {p.x0 + p.offset:.4f} {ant_y:.4f} inf",
        f"#src_steps: {p.spacing} 0 0",
        f"#rx_steps: {p.spacing} 0 0",
    ]
    for i, s in enumerate(p.stones):
        radius, eps, sigma = stone_model(s, p)
        lines.append(f"#material: {eps:.4f} {sigma:.5g} 1 0 stone{i}")
        lines.append(f"#cylinder: {s.x} {s.y} 0 {s.x} {s.y} inf {radius:.4f} stone{i}")
    x, y = p.target_x, soil_top - p.target_depth - p.target_radius
    cyl = f"#cylinder: {x} {y:.4f} 0 {x} {y:.4f} inf"
    if p.label == "metal":
        lines.append(f"{cyl} {p.target_radius} pec")
    elif p.label == "plastic":
        if p.pipe_wall > 0:
            lines += [
                f"#material: {p.target_eps} {p.target_sigma} 1 0 pvc",
                f"{cyl} {p.target_radius} pvc",
            ]
        lines.append(f"{cyl} {p.target_radius - p.pipe_wall:.4f} free_space")
    elif p.label == "concrete":
        lines += [
            f"#material: {p.target_eps} {p.target_sigma} 1 0 concrete",
            f"{cyl} {p.target_radius} concrete",
            f"{cyl} {p.target_radius - p.pipe_wall:.4f} free_space",
        ]
    return "\n".join(lines) + "\n"


def noise_sigma(scan: npt.NDArray[np.float64], p: RadarScanParams) -> float:
    """The receiver noise's per-sample sigma: ``p.noise_db`` below the scan's peak."""
    return float(np.max(np.abs(scan))) * 10 ** (p.noise_db / 20)


def add_noise(scan: npt.NDArray[np.float64], p: RadarScanParams) -> npt.NDArray[np.float64]:
    """Receiver noise: white, ``p.noise_db`` below the scan's peak (the direct wave)."""
    rng = np.random.default_rng([SEED_SALT, p.seed, 1])
    return scan + rng.normal(0.0, noise_sigma(scan, p), scan.shape)


def metadata(p: RadarScanParams) -> dict[str, float]:
    """The scan's sidecar (see ``edgefleet.shared.gpr.ScanMetadata``)."""
    return {
        "sample_interval_ns": round(p.sample_interval_ns, 6),
        "trace_spacing_m": round(p.spacing, 5),
        "antenna_mhz": round(p.freq_hz / 1e6, 3),
    }


def radar_scan_path(out_dir: Path, p: RadarScanParams) -> Path:
    """Where radar-set scan ``p.seed`` is stored (its sidecar: the same name, ``.json``)."""
    return out_dir / p.label / f"{p.seed:07d}.npy"


def write_radar_manifest(out_dir: Path, split: str) -> Path:
    """Rewrite ``manifest.jsonl`` (atomically) from every finished scan in ``out_dir``."""
    seeds = sorted(int(p.stem) for p in out_dir.glob("*/*.npy") if not p.name.startswith("."))
    rows = [asdict(sample_radar_params(s, split)) for s in seeds]  # type: ignore[arg-type]
    path = out_dir / MANIFEST
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return path


@dataclass(frozen=True)
class RadarDataset:
    """Scans with their metadata: ``x`` an object array of float32 ``(traces, samples)``."""

    x: npt.NDArray[np.object_]
    y: npt.NDArray[np.int64]
    meta: tuple[ScanMetadata, ...]
    freq_hz: npt.NDArray[np.float64]
    depth: npt.NDArray[np.float64]
    soil_eps: npt.NDArray[np.float64] | None = None
    contrast: npt.NDArray[np.float64] | None = None  # RadarScanParams.target_contrast
    labels: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.y)


def radar_dir() -> Path:
    """Where the bundled radar set lives inside the installed package."""
    return Path(str(resources.files("edgefleet.host.datasets") / "data" / "gpr_radars"))


def load_radar(split: RadarSplit, directory: Path | None = None) -> RadarDataset:
    """Load one split of the radar set: scans, labels, sidecar metadata, frequency, depth.

    Raises:
        DatasetError: the split folder is missing, empty, or a scan or sidecar is unreadable.
    """
    if split not in ("train", "heldout", "ood", "native"):
        raise DatasetError(f"unknown radar-set split {split!r}; use train, heldout, ood or native")
    root = (directory or radar_dir()) / split
    files = sorted(f for f in root.glob("*/*.npy") if f.parent.name in CLASSES)
    if not files:
        raise DatasetError(f"no radar-set scans under {root}; see docs/gpr.md to generate them")
    scans, metas, freqs, depths, soils, contrasts = [], [], [], [], [], []
    for f in files:
        try:
            scan = np.load(f, allow_pickle=False).astype(np.float32)
            meta = parse_metadata(f.with_suffix(".json").read_bytes())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"radar-set scan {f} is unreadable ({exc}); regenerate it") from exc
        params = sample_radar_params(int(f.stem), split)
        scans.append(scan)
        metas.append(meta)
        freqs.append(params.freq_hz)
        depths.append(params.target_depth)
        soils.append(params.soil_eps)
        contrasts.append(params.target_contrast)
    return RadarDataset(
        x=_objects(scans),
        y=np.array([CLASSES.index(f.parent.name) for f in files], dtype=np.int64),
        meta=tuple(metas),
        freq_hz=np.array(freqs, dtype=np.float64),
        depth=np.array(depths, dtype=np.float64),
        soil_eps=np.array(soils, dtype=np.float64),
        contrast=np.array(contrasts, dtype=np.float64),
    )


def first_generator_metadata(split: str, directory: Path | None = None) -> RadarDataset:
    """The first generator's scans (``load_gpr``) with metadata from their manifest."""
    ds = load_gpr(split, directory)  # type: ignore[arg-type]
    root = (directory or default_dir()) / ("heldout" if split == "eval" else split)
    rows = {}
    for line in (root / MANIFEST).read_text().splitlines():
        row = json.loads(line)
        rows[(row["label"], int(row["seed"]))] = row
    files = sorted(f for f in root.glob("*/*.npy") if f.parent.name in CLASSES)
    metas, freqs, depths, soils = [], [], [], []
    for f in files:
        row = rows.get((f.parent.name, int(f.stem)))
        if row is None:
            raise DatasetError(f"{f} is not in {root / MANIFEST}; rewrite the manifest")
        metas.append(
            ScanMetadata(
                sample_interval_ns=row["time_window"] / row["n_samples"] * 1e9,
                # gprMax stepped the antennas by whole cells: the spacing it simulated.
                trace_spacing_m=max(1, round(row["spacing"] / row["dx"])) * row["dx"],
                antenna_mhz=row["freq_hz"] / 1e6,
            )
        )
        freqs.append(row["freq_hz"])
        depths.append(row["target_depth"])
        soils.append(row["soil_eps"])
    return RadarDataset(
        x=_objects(list(ds.x)),
        y=ds.y,
        meta=tuple(metas),
        freq_hz=np.array(freqs, dtype=np.float64),
        depth=np.array(depths, dtype=np.float64),
        soil_eps=np.array(soils, dtype=np.float64),
    )


def _objects(scans: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.object_]:
    out = np.empty(len(scans), dtype=object)
    for i, scan in enumerate(scans):
        out[i] = scan
    return out
