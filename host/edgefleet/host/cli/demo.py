"""`edgefleet demo`: a throwaway fleet on this machine, from quantization to live predictions."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TextIO

import typer

MODES_HELP = (
    "Quantization modes besides float32 (repeatable): float16, dynamic, int8, 16x8, qat or "
    "all. Default: all for gpr; float16, dynamic, int8 for mnist (which trains first)."
)


def _console(fd: int) -> TextIO:
    # A private copy of the terminal: the demo sends fds 1 and 2 to a log file while
    # TensorFlow converts models, and its own lines must still reach the user.
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8")


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Hide what C++ libraries write to fds 1 and 2; show it if the block raises."""
    with tempfile.TemporaryFile() as log:
        saved = (os.dup(1), os.dup(2))
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    for target, fd in zip((1, 2), saved, strict=True):
        os.dup2(fd, target)
        os.close(fd)


def demo(  # noqa: PLR0917 - typer maps each parameter to a CLI option
    devices: Annotated[int, typer.Option(min=1, max=50, help="Agent processes to start.")] = 2,
    dataset: Annotated[
        str | None,
        typer.Option(help="gpr or mnist. Default: gpr when its model is bundled, else mnist."),
    ] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", "-m", help=MODES_HELP)] = None,
    deploy_mode: Annotated[str, typer.Option(help="The mode pushed to the devices.")] = "int8",
    train: Annotated[
        bool, typer.Option("--train", help="Train the GPR model here instead of the bundled one.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.")] = None,
    scans: Annotated[int, typer.Option(min=1, help="Held-out inputs fed to the devices.")] = 60,
    broker: Annotated[
        str | None, typer.Option(help="Use this mqtt://HOST:PORT broker instead of a local one.")
    ] = None,
    local_broker: Annotated[
        str, typer.Option(help="auto (mosquitto if installed, else amqtt), mosquitto or amqtt.")
    ] = "auto",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="Run mosquitto with the fleet's own config: mutual TLS and ACL."
        ),
    ] = False,
    min_accuracy: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="On-device accuracy to reach.")
    ] = None,
    timeout: Annotated[float, typer.Option(min=5, help="Seconds allowed per waiting step.")] = 90,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep everything in this folder (default: a temp dir).")
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Keep the temp dir (fleet, agent logs, quantize.log, models) after the demo; "
            "the summary names it. A demo stopped by an error keeps it too.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    dashboard: Annotated[
        bool, typer.Option("--dashboard", help="Then serve the web dashboard until Ctrl-C.")
    ] = False,
    dashboard_listen: Annotated[
        str, typer.Option(help="HOST:PORT of that dashboard (loopback: read-only, no login).")
    ] = "127.0.0.1:8080",
    shadow: Annotated[
        bool,
        typer.Option("--shadow", help="Also run another build (QAT/float32) in shadow; report."),
    ] = False,
) -> None:
    """Quantize a model, push it over MQTT to N local agents, classify held-out scans live."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _quiet_fds():  # TensorFlow prints CUDA and CPU-feature notes to fd 2 on import
        from edgefleet.host.demo import DemoOptions, format_summary, run_demo
    from edgefleet.host.errors import HostError, ModelLoadError

    if local_broker not in {"auto", "mosquitto", "amqtt"}:
        typer.echo("error: --local-broker is auto, mosquitto or amqtt", err=True)
        raise typer.Exit(code=2)
    out = _console(1)
    progress = _console(2) if as_json else out
    options = DemoOptions(
        devices=devices,
        dataset=dataset,
        modes=tuple(m for item in mode for m in item.split(",") if m) if mode else None,
        deploy_mode=deploy_mode,
        train=train,
        epochs=epochs,
        scans=scans,
        broker=broker,
        broker_kind=local_broker,  # type: ignore[arg-type]
        tls=tls,
        min_accuracy=min_accuracy,
        workdir=workdir,
        keep=keep,
        timeout_s=timeout,
        dashboard=dashboard_listen if dashboard else None,
        shadow=shadow,
    )
    try:
        summary = run_demo(options, say=lambda line: print(line, file=progress, flush=True))
    except KeyboardInterrupt:
        print("interrupted: agents and broker stopped, files removed", file=sys.stderr)
        raise typer.Exit(code=130) from None
    except (HostError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(code=1) from exc
    print(json.dumps(summary.as_dict(), indent=2) if as_json else format_summary(summary), file=out)
    out.flush()
    if not summary.ok:
        raise typer.Exit(code=1)
