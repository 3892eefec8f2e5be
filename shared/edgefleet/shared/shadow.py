"""Shadow deployments on the wire: the signed shadow terms and the device's retained summary.

A shadow manifest is an ordinary signed manifest whose ``shadow`` field is set
(:class:`ShadowSpec`): a device runs that candidate beside its active model on a sampled
share of its real inputs and never activates it (docs/fleet.md, "Shadow deployments").
It travels on its own retained topics (``{p}/devices/{id}/shadow``,
``{p}/groups/{group}/shadow``); each device answers on ``{p}/devices/{id}/shadow/report``
with a retained, bounded :class:`ShadowReport`.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_CONFUSION_LABELS: Final = 64  # rows and columns of the confusion matrix a device keeps
MAX_SAMPLES: Final = 256  # (source, active, candidate) triples in a report, the latest

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
