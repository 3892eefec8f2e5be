"""Clutter of the radar set: stones, and how a stone finer than the grid is simulated."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edgefleet.host.datasets._gpr import PML_CELLS, Stone

if TYPE_CHECKING:
    import numpy as np

    from edgefleet.host.datasets._radar import RadarScanParams

STONE_RADIUS = (0.01, 0.02)  # m
STONE_SIGMA = 0.001  # S/m


def stone_model_radius(radius: float, dx: float) -> float:
    """The radius a stone is simulated with: its own, or 1.2 cells where the cell is coarser."""
    return max(radius, 1.2 * dx)


def stone_model(stone: Stone, p: RadarScanParams) -> tuple[float, float, float]:
    """How a stone is simulated: radius, permittivity, conductivity.

    A stone narrower than 1.2 cells is not resolved by the grid (gprMax fills whole cells),
    so it is simulated as a 1.2-cell cylinder whose contrast with the soil around it is
    scaled by the ratio of the two cross-sections. A scatterer this small against the
    wavelength (ka < 0.5) scatters in proportion to its contrast times its area (the Born /
    Rayleigh regime), so the larger, weaker cylinder echoes like the stone. Growing the stone
    to the cell instead (the first version of this generator) made stones of up to 3.6 cm
    radius in the coarse cells (up to 3 cm) of low-frequency scans: in 2-D, rods of concrete-like
    material as wide as the smallest concrete ducts, in scans labelled ``none``.
    """
    radius = stone_model_radius(stone.radius, p.dx)
    fill = (stone.radius / radius) ** 2
    below_layer = stone.y < p.soil_top - p.layer_depth
    eps0, sigma0 = (p.layer_eps, p.layer_sigma) if below_layer else (p.soil_eps, p.soil_sigma)
    return (
        radius,
        eps0 + (stone.eps - eps0) * fill,
        sigma0 + (STONE_SIGMA - sigma0) * fill,
    )


def draw_stones(
    rng: np.random.Generator,
    *,
    dx: float,
    soil_top: float,
    span: tuple[float, float],
    target: tuple[float, float, float],
    deepest: float,
) -> tuple[Stone, ...]:
    """2-8 stones in the soil under the line, none touching the target (x, y, radius)."""
    tx, ty, tradius = target
    wanted, stones = int(rng.integers(2, 9)), list[Stone]()
    y_lo = soil_top - max(deepest + 0.1, 0.3)
    for _ in range(4 * wanted):  # stones never touch the target
        # Gravel and pebbles, 2-4 cm across: clutter well smaller than the smallest target
        # (8 cm). In 2-D every stone is a rod along the pipe axis, so a stone as wide as a
        # duct *is* a small duct of the duct's own material (see stone_model).
        radius = float(rng.uniform(*STONE_RADIUS))
        modelled = stone_model_radius(radius, dx)
        x = float(rng.uniform(span[0], span[0] + span[1]))
        y = float(rng.uniform(max(y_lo, PML_CELLS * dx + modelled), soil_top - 0.02 - modelled))
        eps = float(rng.uniform(4.0, 9.0))
        if math.hypot(x - tx, y - ty) > tradius + modelled + 0.02:
            stones.append(Stone(round(x, 4), round(y, 4), round(radius, 4), round(eps, 3)))
        if len(stones) == wanted:
            break
    return tuple(stones)
