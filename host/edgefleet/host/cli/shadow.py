"""`edgefleet push --shadow`, `edgefleet shadow report|promote|stop` (docs/fleet.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.host.cli._options import (
    Broker,
    FleetDir,
    KeyFile,
    Prefix,
    StateDir,
    example,
    fail,
    on_fleet,
    open_or_fail,
)
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.host.fleet import Fleet, ModelFiles
    from edgefleet.host.fleet._shadow import Condition, FleetSummary, Shadow

app = typer.Typer(help="Shadow deployments: compare a candidate beside the active model.")

Rollout = Annotated[
    str | None, typer.Argument(help="The shadow, NAME-vVERSION (default: the only one).")
]
Truth = Annotated[
    Path | None,
    typer.Option(
        "--truth",
        help="A labelled folder (DIR/<label>/<file>): both models' accuracy on the inputs "
        "whose file names it holds.",
    ),
]
PromoteIf = Annotated[
    str | None,
    typer.Option(
        "--promote-if",
        help='Promote when every term holds, e.g. "agreement>=0.97,latency<=1.2x" '
        "(also compared>=N, failures<=N).",
    ),
]
Wait = Annotated[
    float | None, typer.Option("--wait", help="Follow the rollout up to SECONDS per wave.")
]
Canary = Annotated[int, typer.Option(help="Promote: update N group devices first.")]
MaxFailures = Annotated[
    float | None, typer.Option(help="Promote: abort once more than P percent of targets fail.")
]


def _open(
    broker: str | None,
    fleet: Path | None,
    prefix: str | None,
    state_dir: Path | None,
    key: Path | None = None,
    *,
    need_key: bool = False,
) -> Fleet:
    return open_or_fail(
        broker=broker,
        fleet=fleet,
        prefix=prefix,
        state_dir=state_dir,
        key_file=key,
        need_key=need_key,
    )


def read_truth(directory: Path | None) -> dict[str, str] | None:
    """File name -> label from a labelled folder ``DIR/<label>/<file>``."""
    if directory is None:
        return None
    if not directory.is_dir():
        raise fail(f"--truth {directory}: not a directory; lay inputs out as DIR/<label>/<file>")
    return {f.name: d.name for d in directory.iterdir() if d.is_dir() for f in d.iterdir()}


# -- printing ----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(p50: float | None, p95: float | None) -> str:
    return "-" if p50 is None else f"{p50:.2f}/{p95 or 0:.2f} ms"


def describe(shadow: Shadow) -> str:
    """``NAME-vN (mode) on group G, sample 20%, until ...``."""
    spec = shadow.manifest.shadow
    where = f"group {shadow.group}" if shadow.group else f"{len(shadow.devices)} device(s)"
    until = ""
    if spec is not None and spec.max_inputs:
        until = f", until {spec.max_inputs} inputs"
    elif spec is not None and spec.until:
        until = f", until unix time {spec.until}"
    sample = f"{100 * spec.sample:g}%" if spec is not None else "?"
    return f"shadow {shadow.rollout} ({shadow.manifest.mode}) on {where}, sample {sample}{until}"


def summary_lines(summary: FleetSummary) -> list[str]:
    """The report as printed: one line per device, the fleet, accuracy, confusion matrix."""
    from edgefleet.host.fleet._shadow import device_ratio

    lines = [describe(summary.shadow)]
    lines.append(
        f"  {'DEVICE':<16} {'STATE':<12} {'COMPARED':>8} {'AGREE':>7} {'DROPPED':>7} "
        f"{'FAILED':>6}  {'ACTIVE p50/p95':<17} {'CANDIDATE p50/p95':<17} RATIO"
    )
    for device, r in sorted(summary.reports.items()):
        ratio = device_ratio(r)
        lines.append(
            f"  {device:<16} {r.state:<12} {r.compared:>8} {_pct(r.agreement):>7} "
            f"{r.dropped:>7} {r.failures:>6}  "
            f"{_ms(r.active_latency.p50_ms, r.active_latency.p95_ms):<17} "
            f"{_ms(r.candidate_latency.p50_ms, r.candidate_latency.p95_ms):<17} "
            f"{'-' if ratio is None else f'{ratio:.2f}x'}"
        )
        if r.reason:
            lines.append(f"  {'':<16} {r.reason}")
    lines += [f"  {device:<16} no report yet" for device in summary.missing]
    ratio = summary.latency_ratio
    lines.append(
        f"  fleet: {summary.compared} compared, agreement {_pct(summary.agreement)}, latency "
        f"ratio {'-' if ratio is None else f'{ratio:.2f}x'} (slowest device), "
        f"{summary.failures} candidate failure(s), {summary.dropped} dropped"
    )
    if summary.accuracy:
        lines.append(
            f"  accuracy on labelled inputs: active {_pct(summary.accuracy.get('active'))}, "
            f"candidate {_pct(summary.accuracy.get('candidate'))}"
        )
    if summary.confusion:
        columns = sorted({c for row in summary.confusion.values() for c in row})
        width = max(8, *(len(c) for c in columns), *(len(r) for r in summary.confusion))
        lines.append("  confusion (rows: active label, columns: candidate label):")
        lines.append("  " + " " * width + "".join(f" {c:>{width}}" for c in columns))
        for active in sorted(summary.confusion):
            row = summary.confusion[active]
            cells = "".join(f" {row.get(c, 0):>{width}}" for c in columns)
            lines.append(f"  {active:<{width}}{cells}")
    return lines


def summary_json(summary: FleetSummary) -> dict[str, Any]:
    """The report as ``--json`` prints it."""
    shadow = summary.shadow
    return {
        "rollout": shadow.rollout,
        "name": shadow.manifest.name,
        "version": shadow.manifest.version,
        "mode": shadow.manifest.mode,
        "group": shadow.group,
        "devices": shadow.devices,
        "shadow": shadow.manifest.shadow.model_dump() if shadow.manifest.shadow else None,
        "fleet": {
            "compared": summary.compared,
            "agreed": summary.agreed,
            "agreement": summary.agreement,
            "latency_ratio": summary.latency_ratio,
            "failures": summary.failures,
            "dropped": summary.dropped,
            "confusion": summary.confusion,
            "accuracy": summary.accuracy or None,
            "missing": summary.missing,
        },
        "reports": {d: json.loads(r.model_dump_json()) for d, r in summary.reports.items()},
    }


# -- push --shadow ------------------------------------------------------------------------


def shadow_push(  # noqa: PLR0917 - the options of `edgefleet push --shadow`
    files: ModelFiles,
    devices: tuple[str, ...],
    group: str | None,
    sample: float,
    until: str | None,
    promote_if: str | None,
    wait: float | None,
    canary: int,
    max_failures: float | None,
    conn: tuple[str | None, Path | None, str | None, Path | None, Path | None],
    *,
    force: bool = False,
) -> int:
    """Publish a shadow; with ``--promote-if``, follow it and promote if the terms hold."""
    from edgefleet.host.fleet._shadow import Condition, ShadowPlan, start_shadow

    try:
        plan = ShadowPlan(devices=devices, group=group, sample=sample, until=until, force=force)
        plan.check()
        condition = Condition.parse(promote_if) if promote_if else None
    except EdgefleetError as exc:
        raise fail(exc) from exc
    if condition is not None and wait is None:
        raise fail("--promote-if needs --wait SECONDS: how long to follow the shadow")

    def job(fl: Fleet) -> int:
        shadow = start_shadow(fl, files, plan)
        typer.echo(f"{describe(shadow)}: published to {len(shadow.devices)} device(s)")
        if condition is None:
            typer.echo(f"follow it with `edgefleet shadow report {shadow.rollout}`")
            return 0
        return auto_promote(fl, shadow, condition, wait or 0.0, canary, max_failures)

    broker, fleet, prefix, state_dir, key = conn
    return on_fleet(_open(broker, fleet, prefix, state_dir, key, need_key=True), job)


def auto_promote(  # noqa: PLR0917 - the options of push --shadow --promote-if
    fl: Fleet,
    shadow: Shadow,
    condition: Condition,
    wait: float,
    canary: int,
    max_failures: float | None,
) -> int:
    """Follow the shadow until every target ended it (or ``wait``), then judge and promote."""
    from edgefleet.host.cli.push import print_result
    from edgefleet.host.fleet import PushPlan
    from edgefleet.host.fleet._shadow import promote, refusals, wait_summary

    summary = wait_summary(fl, shadow, timeout=wait)
    for line in summary_lines(summary):
        typer.echo(line)
    reasons = refusals(condition, summary)
    if reasons:
        typer.echo(f"not promoted ({condition.text}): {'; '.join(reasons)}", err=True)
        return 1
    typer.echo(f"promoting {shadow.rollout}: {condition.text} holds")
    plan = PushPlan(wait=wait, canary=canary, max_failures=max_failures)
    result = promote(fl, shadow, plan)
    print_result(result)
    return result.exit_code


# -- edgefleet shadow ...  -------------------------------------------------------------------


@app.command(
    epilog=example(
        "edgefleet shadow report --fleet fleet",
        "edgefleet shadow report gpr_convnet-v7 --json",
        "edgefleet shadow report gpr_convnet-v7 --truth labelled/",
    )
)
def report(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    rollout: Rollout = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    truth: Truth = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Per device and fleet-wide: agreement, confusion matrix, latency of both models."""
    from edgefleet.host.fleet._shadow import find_shadow, read_state, summarize

    labels = read_truth(truth)

    def job(fl: Fleet) -> int:
        shadows, reports = read_state(fl)
        summary = summarize(find_shadow(shadows, rollout), reports, labels)
        if as_json:
            typer.echo(json.dumps(summary_json(summary), indent=2, sort_keys=True))
        else:
            for line in summary_lines(summary):
                typer.echo(line)
        return 0

    raise typer.Exit(on_fleet(_open(broker, fleet, prefix, state_dir), job))


@app.command(
    "promote",
    epilog=example(
        "edgefleet shadow promote gpr_convnet-v7 --wait 120",
        'edgefleet shadow promote gpr_convnet-v7 --if "agreement>=0.97,latency<=1.2x" '
        "--canary 1 --wait 300",
    ),
)
def promote_cmd(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    rollout: Annotated[str, typer.Argument(help="The shadow, NAME-vVERSION.")],
    condition: Annotated[
        str | None,
        typer.Option(
            "--if",
            help="Promote only if these terms hold now, every target reported and none failed.",
        ),
    ] = None,
    wait: Wait = None,
    canary: Canary = 0,
    max_failures: MaxFailures = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote even a candidate that failed on a device (its health check or "
            "its inputs); the rollout's own health checks still apply.",
        ),
    ] = False,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
    key: KeyFile = None,
) -> None:
    """Roll the candidate out to the shadow's devices as a normal signed push, then end it.

    A candidate that failed on a device is refused unless ``--force``. With ``--if``: only
    if every term holds now, every target reported and no target's candidate failed.
    """
    from edgefleet.host.cli.push import print_result
    from edgefleet.host.fleet import PushPlan
    from edgefleet.host.fleet._shadow import (
        Condition,
        find_shadow,
        promote,
        read_state,
        refusals,
        summarize,
    )

    try:
        terms = Condition.parse(condition) if condition else None
        PushPlan(group="x", wait=wait, canary=canary, max_failures=max_failures).check()
    except EdgefleetError as exc:
        raise fail(exc) from exc

    def job(fl: Fleet) -> int:
        shadows, reports = read_state(fl)
        shadow = find_shadow(shadows, rollout)
        summary = summarize(shadow, reports)
        if terms is not None:
            reasons = refusals(terms, summary)
            if reasons:
                typer.echo(f"not promoted ({terms.text}): {'; '.join(reasons)}", err=True)
                return 1
        elif summary.failed and not force:
            typer.echo(
                f"not promoted: the candidate failed on {', '.join(summary.failed)} "
                "(`edgefleet shadow report` says why); --force promotes it anyway",
                err=True,
            )
            return 1
        plan = PushPlan(wait=wait, canary=canary, max_failures=max_failures)
        result = promote(fl, shadow, plan)
        print_result(result)
        return result.exit_code

    raise typer.Exit(on_fleet(_open(broker, fleet, prefix, state_dir, key, need_key=True), job))


@app.command(
    epilog=example("edgefleet shadow stop", "edgefleet shadow stop gpr_convnet-v7 --fleet fleet")
)
def stop(
    rollout: Rollout = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """End a shadow: devices stop comparing and keep their final report; nothing activates."""
    from edgefleet.host.fleet._shadow import find_shadow, read_state, stop_shadow

    def job(fl: Fleet) -> int:
        shadows, _reports = read_state(fl)
        shadow = find_shadow(shadows, rollout)
        stop_shadow(fl, shadow)
        typer.echo(f"{shadow.rollout}: shadow ended on {len(shadow.devices)} device(s)")
        return 0

    raise typer.Exit(on_fleet(_open(broker, fleet, prefix, state_dir), job))
