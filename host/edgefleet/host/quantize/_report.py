"""The quantization report: ``report.json``, a printed table, and ``report.png``."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from edgefleet.shared.atomic import write_atomic

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.host.quantize._run import ModeResult, Report


def _baseline(report: Report) -> ModeResult:
    return next(r for r in report.results if r.mode == "float32")


def ratios(report: Report) -> list[dict[str, float | str]]:
    """Per mode: size ratio and speed-up against float32, accuracy change in points."""
    base = _baseline(report)
    return [
        {
            "mode": r.mode,
            "size_ratio": r.size_bytes / base.size_bytes,
            "speedup": base.latency_ms / r.latency_ms if r.latency_ms else 0.0,
            "latency_ratio": r.latency_ms / base.latency_ms if base.latency_ms else 0.0,
            "accuracy_delta_pp": (r.accuracy - base.accuracy) * 100.0,
        }
        for r in report.results
    ]


def to_json(report: Report) -> str:
    """The report as indented JSON; ratios are added to each result."""
    body = asdict(report)
    for result, extra in zip(body["results"], ratios(report), strict=True):
        result.update({k: v for k, v in extra.items() if k != "mode"})
    return json.dumps(body, indent=2) + "\n"


def table(report: Report) -> str:
    """A fixed-width table of every mode, with ratios to float32."""
    head = (
        f"{'mode':<8} {'size':>10} {'x f32':>6} {'accuracy':>9} {'Δ pp':>6} "
        f"{'latency':>10} {'speed-up':>8}  in/out"
    )
    title = (
        f"{report.model}: {report.eval_count} eval images from {report.eval_source}, "
        f"LiteRT {report.threads} thread(s), {report.machine}"
    )
    lines = [
        title,
        head,
        "-" * len(head),
    ]
    for r, x in zip(report.results, ratios(report), strict=True):
        lines.append(
            f"{r.mode:<8} {r.size_bytes / 1024:>8.1f}KB {x['size_ratio']:>6.3f} "
            f"{r.accuracy * 100:>8.2f}% {x['accuracy_delta_pp']:>+6.2f} "
            f"{r.latency_ms * 1000:>8.1f}us {x['speedup']:>7.2f}x  {r.input_dtype}/{r.output_dtype}"
        )
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


# Label positions tried around each point (points of offset), nearest first: modes that land
# on nearly the same spot get their labels stacked apart instead of printed over each other.
_LABEL_OFFSETS = [
    (dx, dy) for dy in (6, -14, 18, -26, 30, -38, 42, -50, 54, -62) for dx in (10, -10)
]
_MODE_COLOURS = {
    "float32": "#1f77b4",
    "float16": "#ff7f0e",
    "dynamic": "#2ca02c",
    "int8": "#d62728",
    "16x8": "#9467bd",
    "qat": "#8c564b",
}


def headline(report: Report) -> str:
    """int8 against float32 in one line: size, latency and accuracy ratios."""
    by_mode = {x["mode"]: x for x in ratios(report)}
    pick = "int8" if "int8" in by_mode else next((m for m in by_mode if m != "float32"), None)
    if pick is None:
        return "float32 only (no quantized mode)"
    x = by_mode[pick]
    return (
        f"{pick} vs float32: {x['size_ratio']:.2f}x the size, "
        f"{x['latency_ratio']:.2f}x the latency, {x['accuracy_delta_pp']:+.2f} pp accuracy"
    )


def figure(report: Report) -> Figure:
    """Latency (log) vs accuracy, one labelled point per mode, and a table of every figure."""
    # A bare Figure renders with Agg: no pyplot, no GUI backend, no global figure state.
    fig = Figure(figsize=(11, 4.8), dpi=120)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.07, 0.13, 0.5, 0.68))
    table_ax = fig.add_axes((0.6, 0.13, 0.39, 0.68))
    table_ax.axis("off")
    points = [(r.latency_ms * 1000, r.accuracy * 100) for r in report.results]
    for r, (x, y) in zip(report.results, points, strict=True):
        ax.scatter(x, y, s=45, color=_MODE_COLOURS.get(r.mode, "#555555"), zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _pad_limits(ax, points)
    ax.set_xlabel("latency per image (us, log scale; 1 thread)")
    ax.set_ylabel(f"top-1 accuracy on {report.eval_count} images (%)")
    ax.grid(visible=True, which="both", alpha=0.3)
    fig.suptitle(
        f"{report.model}: size, latency and accuracy of each mode\n{headline(report)}",
        fontsize=11,
    )
    _place_labels(ax, canvas, report, points)
    _table(table_ax, report)
    return fig


def _pad_limits(ax: Any, points: list[tuple[float, float]]) -> None:  # noqa: ANN401
    xs = [max(x, 1e-3) for x, _ in points]
    ys = [y for _, y in points]
    ax.set_xlim(min(xs) / 3.0, max(xs) * 3.0)
    span = max(max(ys) - min(ys), 2.0)
    ax.set_ylim(min(ys) - span * 0.6, max(ys) + span * 0.6)


def _place_labels(
    ax: Any,  # noqa: ANN401
    canvas: FigureCanvasAgg,
    report: Report,
    points: list[tuple[float, float]],
) -> None:
    """Annotate each point at the nearest offset whose label overlaps no earlier one."""
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    inside = ax.get_window_extent(renderer)
    # Markers count as taken too, so no label covers another mode's point.
    taken: list[Any] = [
        Bbox.from_bounds(px - 7, py - 7, 14, 14)
        for px, py in ax.transData.transform(np.asarray(points, dtype=float))
    ]
    for r, point in zip(report.results, points, strict=True):
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(
                r.mode,
                point,
                textcoords="offset points",
                xytext=(dx, dy),
                ha="left" if dx > 0 else "right",
                fontsize=9,
                color=_MODE_COLOURS.get(r.mode, "#333333"),
                arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6},
            )
            # The text alone: an annotation's own extent includes its leader line.
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer).expanded(1.05, 1.1)
            fits = box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
            if fits and box.y1 <= inside.y1 and not any(box.overlaps(t) for t in taken):
                taken.append(box)
                break
            label.remove()  # no free spot at all: the table beside the plot names every mode


def _table(ax: Any, report: Report) -> None:  # noqa: ANN401
    rows = [
        [
            r.mode,
            f"{r.size_bytes / 1024:.1f}",
            f"{x['size_ratio']:.2f}x",
            f"{r.accuracy * 100:.2f}",
            f"{x['accuracy_delta_pp']:+.2f}",
            f"{r.latency_ms * 1000:.1f}",
            f"{x['latency_ratio']:.2f}x",
        ]
        for r, x in zip(report.results, ratios(report), strict=True)
    ]
    cols = ["mode", "KiB", "x f32", "acc %", "Δ pp", "us", "x f32"]
    table = ax.table(cellText=rows, colLabels=cols, loc="upper center", cellLoc="right")
    table.auto_set_font_size(value=False)
    table.set_fontsize(9)
    table.scale(1.0, 1.5)
    for row, r in enumerate(report.results, start=1):
        table[row, 0].get_text().set_color(_MODE_COLOURS.get(r.mode, "#333333"))


def plot(report: Report, path: Path) -> None:
    """Write :func:`figure` as a PNG."""
    png = io.BytesIO()
    figure(report).savefig(png, format="png")
    write_atomic(path, png.getvalue())


def write(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.png`` into ``out_dir``."""
    json_path = out_dir / "report.json"
    write_atomic(json_path, to_json(report).encode())
    png_path = out_dir / "report.png"
    plot(report, png_path)
    return json_path, png_path
