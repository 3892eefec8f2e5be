"""The quantization report: ``report.json``, a printed table, and ``report.png``."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

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


def plot(report: Report, path: Path) -> None:
    """Size vs accuracy, one labelled point per mode; marker area grows with latency."""
    # A bare Figure renders with Agg: no pyplot, no GUI backend, no global figure state.
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    fastest = min(r.latency_ms for r in report.results) or 1e-9
    for r in report.results:
        area = 60 * min(r.latency_ms / fastest, 40)
        ax.scatter(r.size_bytes / 1024, r.accuracy * 100, s=area, alpha=0.6)
        ax.annotate(
            f"{r.mode}\n{r.latency_ms * 1000:.0f} us",
            (r.size_bytes / 1024, r.accuracy * 100),
            textcoords="offset points",
            xytext=(8, 6),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("model size (KB, log scale)")
    ax.set_ylabel(f"top-1 accuracy on {report.eval_count} images (%)")
    ax.set_title(f"{report.model}: size vs accuracy (marker area ~ latency, 1 thread)")
    ax.grid(visible=True, alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue())


def write(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.png`` into ``out_dir``."""
    json_path = out_dir / "report.json"
    write_atomic(json_path, to_json(report).encode())
    png_path = out_dir / "report.png"
    plot(report, png_path)
    return json_path, png_path
