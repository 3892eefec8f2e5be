"""Shadow deployments on the wire: the signed shadow terms and the device's retained summary.

A shadow manifest is an ordinary signed manifest whose ``shadow`` field is set
(:class:`ShadowSpec`): a device runs that candidate beside its active model on a sampled
share of its real inputs and never activates it (docs/fleet.md, "Shadow deployments").
It travels on its own retained topics (``{p}/devices/{id}/shadow``,
``{p}/groups/{group}/shadow``); each device answers on ``{p}/devices/{id}/shadow/report``
with a retained, bounded :class:`ShadowReport`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_CONFUSION_LABELS: Final = 64  # rows and columns of the confusion matrix a device keeps
MAX_SAMPLES: Final = 256  # (source, active, candidate) triples in a report, the latest
MAX_REPORT_BYTES: Final = 128 * 1024  # an encoded ShadowReport, at most (docs/protocol.md 1)

ShadowState = Literal["downloading", "health_check", "running", "done", "failed", "stopped"]
_Label = Annotated[str, StringConstraints(max_length=256)]


class ShadowSpec(BaseModel):
    """The signed terms of a shadow: how much to compare and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sample: float = Field(gt=0.0, le=1.0, description="Share of inputs the candidate also runs.")
    max_inputs: int | None = Field(
        default=None, ge=1, lt=2**63, description="Stop comparing after this many inputs."
    )
    until: int | None = Field(
        default=None, ge=0, lt=2**63, description="Stop comparing at this unix time."
    )


class LatencySummary(BaseModel):
    """p50 / p95 of a model's latency over the compared inputs (ms)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    p50_ms: float | None = None
    p95_ms: float | None = None


class ShadowReport(BaseModel):
    """One device's retained shadow summary (bounded: see the module constants)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    v: Literal[1] = 1
    device_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    name: str = Field(max_length=64, description="Candidate model name.")
    version: int = Field(ge=0, lt=2**63, description="Candidate version.")
    sha256: str = Field(default="", max_length=64, description="Candidate variant run.")
    active_name: str | None = Field(default=None, max_length=64)
    active_version: int | None = Field(default=None, ge=0, lt=2**63)
    state: ShadowState
    reason: str | None = Field(default=None, max_length=1024)
    sample: float = Field(ge=0.0, le=1.0)
    offered: int = Field(default=0, ge=0, description="Inputs sampled for the candidate.")
    compared: int = Field(default=0, ge=0, description="Inputs both models classified.")
    agreed: int = Field(default=0, ge=0, description="Of those, same top-1 label.")
    dropped: int = Field(default=0, ge=0, description="Sampled, dropped: the queue was full.")
    failures: int = Field(default=0, ge=0, description="Inputs the candidate failed on.")
    confusion: dict[_Label, dict[_Label, int]] = Field(
        default_factory=dict, description="active label -> candidate label -> count."
    )
    score_diff_mean: float | None = Field(
        default=None, description="Mean of candidate minus active top-1 score."
    )
    score_diff_abs_p95: float | None = Field(
        default=None, description="p95 of |candidate - active| top-1 score."
    )
    active_latency: LatencySummary = Field(default_factory=LatencySummary)
    candidate_latency: LatencySummary = Field(default_factory=LatencySummary)
    samples: list[tuple[_Label, _Label, _Label]] = Field(
        default_factory=list,
        max_length=MAX_SAMPLES,
        description="The latest (source, active label, candidate label).",
    )
    ts: float = Field(ge=0.0)

    @property
    def agreement(self) -> float | None:
        """Share of compared inputs with the same top-1 label (None before any)."""
        return self.agreed / self.compared if self.compared else None


def _size(report: ShadowReport) -> int:
    return len(report.model_dump_json().encode())


def _largest(fits: Callable[[int], bool], high: int) -> int:
    """The largest n in 0..high with ``fits(n)`` (``fits`` is monotone: true up to some n)."""
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def fit_report(report: ShadowReport, max_bytes: int = MAX_REPORT_BYTES) -> ShadowReport:
    """``report``, trimmed if needed so that its JSON encoding is at most ``max_bytes``.

    First the oldest ``samples`` go (the latest that fit are kept), then the confusion
    matrix keeps its most frequent cells (ties: in label order). The counts (``compared``,
    ``agreed``, ...) are never touched, so agreement stays exact; a trimmed matrix shows as
    cells that add up to less than ``compared``. With every sample and cell gone a report
    is a few KiB at most (bounded names, ``reason`` <= 1024 characters), so the result
    always fits ``MAX_REPORT_BYTES``.
    """
    if _size(report) <= max_bytes:
        return report

    def with_samples(n: int) -> ShadowReport:
        kept = report.samples[len(report.samples) - n :] if n else []
        return report.model_copy(update={"samples": kept})

    n = _largest(lambda k: _size(with_samples(k)) <= max_bytes, len(report.samples))
    trimmed = with_samples(n)
    if n or _size(trimmed) <= max_bytes:
        return trimmed
    cells = sorted(
        (
            (count, active, cand)
            for active, row in report.confusion.items()
            for cand, count in row.items()
        ),
        key=lambda cell: (-cell[0], cell[1], cell[2]),
    )

    def with_cells(k: int) -> ShadowReport:
        confusion: dict[str, dict[str, int]] = {}
        for count, active, cand in cells[:k]:
            confusion.setdefault(active, {})[cand] = count
        return trimmed.model_copy(update={"confusion": confusion})

    return with_cells(_largest(lambda k: _size(with_cells(k)) <= max_bytes, len(cells)))
