"""Reading the prediction store out: CSV / JSON-lines export and the ``tail`` lines.

Times are ISO 8601 in UTC (``2026-11-28T11:21:12.345Z``), everywhere a person or a
spreadsheet reads them; JSON lines keep the record's own ``ts`` (Unix seconds) next to it.
The CSV has one ``topN_label``/``topN_score`` pair of columns per top-k rank, as many as the
longest top-k list exported. Each record names the build it came from (mode and short sha of
the model, from the host's push registry) when this host pushed that model version.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._store import csv_safe

if TYPE_CHECKING:
    from collections.abc import Iterator

    from edgefleet.host.fleet._store import PredictionStore
    from edgefleet.shared.messages import PredictionRecord

FORMATS = ("csv", "jsonl")
CSV_COLUMNS = (
    "time",
    "device_id",
    "boot_id",
    "seq",
    "label",
    "score",
    "model_name",
    "model_version",
    "build",
    "latency_ms",
    "source",
    "error",
)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds: ``2026-11-28T11:21:12.345Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str, *, now: float, what: str) -> float:
    """Parse ``--since``/``--until`` into Unix seconds.

    ISO 8601 (a date, or date and time; UTC unless it gives an offset), or a duration back
    from now (``90s``, ``15m``, ``2h``, ``7d``).

    Raises:
        FleetError: Neither form, with both forms as examples.
    """
    text = text.strip()
    if m := _RELATIVE.match(text):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise FleetError(
            f"{what} {text!r} is not a time: give ISO 8601 (2026-11-28, 2026-11-28T09:30, "
            "2026-11-28T09:30:00+01:00; UTC unless an offset is given) or a duration back "
            "from now (90s, 15m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@dataclass(frozen=True)
class Selection:
    """Which records to read: a device and a time window (Unix seconds, inclusive)."""

    device_id: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, record: PredictionRecord) -> bool:
        """True if ``record`` is inside the time window."""
        if self.since is not None and record.ts < self.since:
            return False
        return self.until is None or record.ts <= self.until

    def records(
        self, store: PredictionStore, *, after_id: int = 0
    ) -> Iterator[tuple[int, PredictionRecord]]:
        """(row id, record) of the selection, in arrival order."""
        for row_id, rec in store.iter_records(device_id=self.device_id, after_id=after_id):
            if self.matches(rec):
                yield row_id, rec


def format_for(fmt: str | None, out_name: str | None) -> str:
    """The export format: ``fmt`` if given, else from the output file's suffix, else CSV.

    Raises:
        FleetError: An unknown format.
    """
    if fmt is None:
        suffix = (out_name or "").rsplit(".", 1)[-1].lower() if out_name else ""
        fmt = "jsonl" if suffix in ("jsonl", "ndjson", "json") else "csv"
    if fmt not in FORMATS:
        raise FleetError(f"unknown export format {fmt!r}: use csv or jsonl")
    return fmt


def export(
    store: PredictionStore,
    out: IO[str],
    *,
    fmt: str,
    device_id: str | None = None,
    selection: Selection | None = None,
    builds: dict[tuple[str, int], str] | None = None,
) -> int:
    """Write the selected records as CSV (flat columns) or JSON lines; return the count.

    CSV text cells that start like a formula get a leading ``'`` (:func:`csv_safe`): device
    labels and sources are untrusted and must not run in a spreadsheet.

    Raises:
        FleetError: Unknown format.
    """
    if fmt not in FORMATS:
        raise FleetError(f"unknown export format {fmt!r}: use csv or jsonl")
    sel = selection or Selection(device_id=device_id)
    builds = builds or {}
    n = 0
    if fmt == "jsonl":
        for _id, rec in sel.records(store):
            row = rec.model_dump(mode="json")
            row["time"] = iso(rec.ts)
            row["build"] = builds.get((rec.model_name, rec.model_version))
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
        return n
    ranks = max((len(rec.topk) for _id, rec in sel.records(store)), default=0)
    writer = csv.writer(out)
    topk_heads = [f"top{i}_{part}" for i in range(1, ranks + 1) for part in ("label", "score")]
    writer.writerow([*CSV_COLUMNS, *topk_heads])
    for _id, rec in sel.records(store):
        cells: list[object] = [
            iso(rec.ts),
            rec.device_id,
            rec.boot_id,
            rec.seq,
            rec.label,
            rec.score,
            rec.model_name,
            rec.model_version,
            builds.get((rec.model_name, rec.model_version), ""),
            rec.latency_ms,
            rec.source,
            rec.error or "",
        ]
        for i in range(ranks):
            top = rec.topk[i] if i < len(rec.topk) else None
            cells += [top.label, f"{top.score:.4f}"] if top else ["", ""]
        writer.writerow([csv_safe(c) for c in cells])
        n += 1
    return n


TAIL_HEADER = (
    f"{'TIME (UTC)':<24} {'DEVICE':<16} {'SEQ':<5} {'LABEL':<10} SCORE  "
    "MODEL (BUILD), LATENCY, SOURCE"
)


def tail_line(rec: PredictionRecord, build: str | None) -> str:
    """One ``predictions tail`` line: date and time in UTC, device, seq, result, model."""
    model = f"{rec.model_name} v{rec.model_version}" + (f" ({build})" if build else "")
    result = rec.error or rec.label
    return (
        f"{iso(rec.ts)} {rec.device_id:<16} #{rec.seq:<4} {result:<10} {rec.score:.3f}  "
        f"{model} {rec.latency_ms:.1f}ms {rec.source}"
    )
