"""``edgefleet demo``: a throwaway fleet on this machine - quantize, push over MQTT, classify live.

The steps are the real ones: ``init_fleet`` and ``provision_device`` make the CA, certificates,
signing key and device bundles; mosquitto runs the fleet's rendered config (mutual TLS, ACL);
N ``edgefleet-agent run`` processes start from their bundles; the model is quantized, signed
and pushed to the group with :func:`edgefleet.host.fleet._push.push`; held-out scans are dropped
into each agent's watched folder and the records come back through the :class:`Ingestor`
into a SQLite store. Everything lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.host.dashboard import serve_demo
from edgefleet.host.demo import _agents as demo_agents
from edgefleet.host.demo import _data as demo_data
from edgefleet.host.demo import _shadow as demo_shadow
from edgefleet.host.demo._brokers import (
    BrokerKind,
    EmbeddedBroker,
    LocalBroker,
    MosquittoProcess,
    find_mosquitto,
    free_port,
)
from edgefleet.host.demo._live import LiveRun
from edgefleet.host.demo._summary import DeviceSummary, ModeSummary, Summary, format_summary
from edgefleet.host.errors import DemoError
from edgefleet.host.fleet import (
    Fleet,
    PushPlan,
    connect,
    load_model,
    open_registry,
    push,
    settings_from,
)
from edgefleet.host.fleetdir import load_registry
from edgefleet.host.provision import init_fleet, load_signing_key, provision_device
from edgefleet.host.quantize import _run as quantize
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.errors import BrokerUrlError
from edgefleet.shared.topics import Topics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from edgefleet.host.demo._data import DemoData
    from edgefleet.host.fleet import Progress
    from edgefleet.host.fleetdir import FleetConfig
    from edgefleet.host.quantize import Report

GROUP = "demo"
__all__ = ["DemoError", "DemoOptions", "Summary", "format_summary", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    """What ``edgefleet demo`` was asked to do (see its ``--help``)."""

    devices: int = 2
    dataset: str | None = None
    modes: tuple[str, ...] | None = None
    deploy_mode: str = "int8"
    train: bool = False
    epochs: int | None = None
    scans: int = 60
    broker: str | None = None
    broker_kind: BrokerKind = "auto"
    tls: bool = False
    min_accuracy: float | None = None
    workdir: Path | None = None
    keep: bool = False
    timeout_s: float = 90.0
    feed_interval_s: float = 0.05
    dashboard: str | None = None  # HOST:PORT: serve the dashboard on the demo fleet until Ctrl-C
    shadow: bool = False  # then another build in shadow, and its report (demo/_shadow.py)


def run_demo(options: DemoOptions, *, say: Callable[[str], None] = print) -> Summary:
    """Run the whole demo and return its summary; clean up processes and files on any exit.

    Raises:
        DemoError: a step failed (broker, fleet, agents, push, ingestion).
        HostError: model, data set or quantization problems.
        KeyboardInterrupt: Ctrl-C or SIGTERM (after cleaning up).
    """
    started = time.monotonic()
    if options.devices < 1:
        raise DemoError("--devices must be at least 1")
    data = demo_data.pick(options.dataset, train=options.train)
    with _terminate_as_interrupt(), _workdir(options, say) as workdir:
        demo = _Demo(options, data, workdir, say, started)
        demo.summary.workdir = str(workdir)
        demo.summary.kept = options.keep or options.workdir is not None
        try:
            return demo.run()
        finally:
            demo.close()


@contextlib.contextmanager
def _workdir(options: DemoOptions, say: Callable[[str], None]) -> Iterator[Path]:
    """``--workdir`` as given, or a temp dir removed at the end unless ``--keep``.

    A demo that fails (not Ctrl-C) keeps its temp dir, so the logs it printed stay readable.
    """
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        yield options.workdir.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    keep = options.keep
    try:
        yield path
    except KeyboardInterrupt:
        raise
    except Exception:
        keep = True
        say(f"kept {path} for its logs (the demo failed); remove it when done")
        raise
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt, so every cleanup runs.

    SIGINT is set explicitly too: a process started from a non-interactive shell's
    background job inherits SIGINT ignored, and Ctrl-C must still stop the demo.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, interrupt) for s in caught}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def captured_output(log: Path) -> Iterator[None]:
    """Send fds 1 and 2 to ``log`` (TensorFlow's converter chatter) and restore them after."""
    saved = (os.dup(1), os.dup(2))
    try:  # redirected inside the try: a Ctrl-C right after the dup2 still restores them
        with log.open("ab") as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _given_broker(text: str) -> BrokerUrl:
    """The ``--broker`` URL, or a DemoError saying what is wrong with it."""
    try:
        return BrokerUrl.parse(text)
    except BrokerUrlError as exc:
        raise DemoError(f"--broker: {exc}") from exc


class _Demo:
    """One run's state; :meth:`close` releases everything it started."""

    def __init__(
        self,
        options: DemoOptions,
        data: DemoData,
        workdir: Path,
        say: Callable[[str], None],
        started: float,
    ) -> None:
        self.options = options
        self.data = data
        self.workdir = workdir
        self.say = say
        self.started = started
        self.summary = Summary(dataset=data.name)
        self.summary.min_accuracy = options.min_accuracy or data.min_accuracy
        self.device_ids = [f"demo-{i:02d}" for i in range(1, options.devices + 1)]
        self.broker: LocalBroker | None = None
        self.agents = demo_agents.AgentGroup(workdir / "devices")
        self.fleet: Fleet | None = None

    def log(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.started:6.1f}s] {text}")

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.summary.timings_s[name] = round(now - since, 2)
        return now

    def run(self) -> Summary:
        t = time.monotonic()
        self.say(
            f"edgefleet demo: {len(self.device_ids)} device(s), data set {self.data.name}, "
            f"{self.options.scans} held-out inputs, deploying {self.options.deploy_mode}"
        )
        config, url = self.setup_fleet()
        self.agents.start_all(
            self.device_ids,
            config=config,
            url=url,
            tls=BrokerUrl.parse(url).tls,
            mqtt311=self.summary.broker.get("kind") == "amqtt",
        )
        pids = ", ".join(f"{d} (pid {p})" for d, p in self.agents.pids().items())
        self.log(f"agents: {pids}; logs in {self.agents.root}/<id>/agent.log")
        t = self.lap("setup", t)
        deploy = self.prepare_model()
        t = self.lap("model", t)
        self.fleet = self.open_host(config, url)
        self.push(deploy)
        t = self.lap("push", t)
        shadow = demo_shadow.start(self, deploy, GROUP) if self.options.shadow else None
        self.classify(deploy)
        self.lap("inference", t)
        if shadow is not None:
            truth = {s.name: self.data.labels[s.label] for s in self.data.scans(self.options.scans)}
            demo_shadow.finish(self, shadow, truth, self.summary.received)
        self.lap("total", self.started)
        self.judge()
        if self.options.dashboard is not None:
            self.say(format_summary(self.summary))
            serve_demo(self.workdir, url, listen=self.options.dashboard, say=self.say)
        return self.summary

    # -- fleet and broker -----------------------------------------------------------------

    def setup_fleet(self) -> tuple[FleetConfig, str]:
        opts = self.options
        own_mosquitto = opts.broker is None and (
            opts.broker_kind == "mosquitto"
            or (opts.broker_kind == "auto" and find_mosquitto() is not None)
        )
        if opts.tls and not own_mosquitto:
            raise DemoError("--tls needs the demo's own mosquitto (no --broker, not amqtt)")
        if opts.broker is not None and _given_broker(opts.broker).tls:
            raise DemoError(
                f"--broker {opts.broker}: give a plain mqtt://HOST:PORT broker; the demo's "
                "throwaway certificates would not be trusted by an existing TLS broker"
            )
        port = free_port()
        config = init_fleet(
            self.workdir / "fleet",
            name="edgefleet-demo",
            broker_url=str(BrokerUrl("mqtts", "127.0.0.1", port)),
            host_broker_url=str(BrokerUrl("mqtts", "127.0.0.1", free_port())),
            prefix=f"edgefleet-demo-{uuid.uuid4().hex[:8]}",
            bind_address="127.0.0.1",
            broker_user=getpass.getuser(),
        )
        for device in self.device_ids:
            provision_device(config.root, device, groups=[GROUP])
        self.log(
            f"fleet: CA, broker/host/{len(self.device_ids)} device certificates, "
            f"Ed25519 signing key {config.signing_key_id[:12]}, bundles in {config.root}"
        )
        url = opts.broker or self.start_broker(config, port=port, own_mosquitto=own_mosquitto)
        self.summary.broker.setdefault("kind", "external")
        self.summary.broker.update(url=url, prefix=config.prefix, tls=BrokerUrl.parse(url).tls)
        return config, url

    def start_broker(self, config: FleetConfig, *, port: int, own_mosquitto: bool) -> str:
        if own_mosquitto:
            conf = config.resolve(config.broker_conf) if self.options.tls else None
            mosquitto = MosquittoProcess(self.workdir / "broker", port=port, conf=conf).start()
            broker: LocalBroker = mosquitto
            how = "the fleet's config (mutual TLS, ACL)" if conf else "a plain loopback config"
            pid = mosquitto.proc.pid if mosquitto.proc else None
            self.log(f"broker: mosquitto (pid {pid}) on {broker.url} with {how}")
        else:
            if not demo_agents.agent_speaks_mqtt311():
                raise DemoError(
                    "the embedded amqtt broker speaks MQTT 3.1.1 only, and this "
                    "edgefleet-agent speaks MQTT 5 only (its config has no mqtt.protocol "
                    "setting yet): install mosquitto (sudo apt-get install mosquitto) or "
                    "pass --broker mqtt://HOST:PORT"
                )
            broker = EmbeddedBroker().start()
            self.log(f"broker: embedded amqtt on {broker.url} (plain MQTT 3.1.1, loopback)")
        self.broker = broker
        self.summary.broker["kind"] = broker.kind
        return broker.url

    # -- model ----------------------------------------------------------------------------

    def prepare_model(self) -> Path:
        modes = list(self.options.modes or self.data.default_modes)
        if self.options.deploy_mode not in (*modes, "float32"):
            modes.append(self.options.deploy_mode)
        log = self.workdir / "quantize.log"
        self.log(f"model: preparing and quantizing; TensorFlow's output goes to {log}")
        with captured_output(log):
            model, source = self.data.model_source(
                self.workdir, self.options.train, self.options.epochs
            )
            inputs = quantize.load_inputs(
                model,
                modes=modes,
                calibration=self.data.name,
                evaluation=self.data.name,
                preprocess=self.data.spec,
            )
            self.log(
                f"model: {inputs.name} loaded; {len(inputs.calibration)} calibration and "
                f"{len(inputs.evaluation)} held-out inputs prepared; converting each mode"
            )
            report = quantize.quantize(
                inputs,
                modes=modes,
                out_dir=self.workdir / "quantized",
                latency_runs=50,
                calibration_samples=300,
                progress=lambda line: self.log(f"model: {line}"),
            )
        self.summary.model_source = source
        self.record_report(report)
        return self.workdir / "quantized" / f"{inputs.name}_{self.options.deploy_mode}.tflite"

    def record_report(self, report: Report) -> None:
        self.summary.eval_count = report.eval_count
        self.summary.quantization = [
            ModeSummary(r.mode, r.size_bytes, round(r.accuracy, 4), round(r.latency_ms, 4))
            for r in report.results
        ]
        self.log(f"model: {self.summary.model_source}")
        self.log(f"quantized on {report.eval_count} held-out {report.eval_source} inputs:")
        for m in self.summary.quantization:
            self.say(
                f"           {m.mode:<8} {m.size_bytes / 1024:8.1f} KiB  "
                f"accuracy {m.accuracy * 100:5.1f}%  {m.latency_ms:7.3f} ms"
            )

    # -- host side ------------------------------------------------------------------------

    def open_host(self, config: FleetConfig, url: str) -> Fleet:
        own_tls = BrokerUrl.parse(url).tls
        settings = settings_from(broker=None if own_tls else url, fleet=config)
        # amqtt never answers an MQTT 5 CONNECT that carries properties: ask for 3.1.1.
        protocol = "3.1.1" if self.summary.broker.get("kind") == "amqtt" else "auto"
        conn = connect(settings, protocol=protocol, timeout=10)
        fleet = Fleet(
            conn=conn,
            topics=Topics(config.prefix),
            registry=open_registry(self.workdir / "host-state"),
            signing_key=load_signing_key(config),
        )
        fleet.view.load_provisioned(load_registry(config.root))
        self.wait_online(fleet)
        return fleet

    def wait_online(self, fleet: Fleet) -> None:
        fleet.observe()
        deadline = time.monotonic() + self.options.timeout_s
        while not set(self.device_ids) <= fleet.view.online():
            if time.monotonic() > deadline:
                missing = sorted(set(self.device_ids) - fleet.view.online())
                raise DemoError(
                    f"devices never came online: {missing}\n{self.agents.tail_logs(missing)}"
                )
            self.agents.check_alive()
            fleet.pump(0.3)
        self.log(f"devices online: {', '.join(self.device_ids)}")

    def push(self, deploy: Path) -> None:
        assert self.fleet is not None  # noqa: S101 - set by run()
        model = load_model(deploy)
        variant = model.template.variants[0]
        self.summary.deployed = {
            "name": model.name,
            "mode": model.template.mode,
            "size_bytes": variant.size,
            "sha256": variant.sha256,
            "chunks": variant.chunk_count,
        }
        self.log(
            f"push: {model.name} ({model.template.mode}, {variant.size / 1024:.1f} KiB, "
            f"{variant.chunk_count} chunk(s)) signed, to group '{GROUP}' over MQTT"
        )
        tracker = _ProgressTracker(self.say, time.monotonic())
        self.fleet.on_progress = tracker.update
        result = push(self.fleet, model, PushPlan(group=GROUP, wait=self.options.timeout_s))
        self.fleet.on_progress = None
        tracker.update(result.progress)
        self.summary.deployed["version"] = result.version
        pids = self.agents.pids()
        self.summary.devices = [
            DeviceSummary(
                p.device_id, pids[p.device_id], p.describe(), tracker.active_at.get(p.device_id)
            )
            for p in result.progress
        ]
        self.summary.all_active = result.exit_code == 0 and len(result.progress) == len(
            self.device_ids
        )
        if self.summary.all_active:
            self.summary.seconds_to_all_active = max(tracker.active_at.values())
            self.log(f"push: every device active after {self.summary.seconds_to_all_active} s")
        else:
            raise DemoError(
                f"the push did not reach every device: {result.aborted or ''} "
                f"{[p.describe() for p in result.progress]}\n{self.agents.tail_logs()}"
            )

    # -- inference ------------------------------------------------------------------------

    def classify(self, deploy: Path) -> None:
        assert self.fleet is not None  # noqa: S101
        scans = self.data.scans(self.options.scans)
        live = LiveRun(
            fleet=self.fleet,
            scans=scans,
            labels=self.data.labels,
            inboxes=self.agents.inboxes(),
            store_path=self.workdir / "host-state" / "predictions.sqlite",
            say=self.say,
        )
        self.log(
            f"feeding {len(scans)} held-out {self.data.name} inputs to "
            f"{len(self.device_ids)} watched folders; predictions as they arrive:"
        )
        live.run(interval_s=self.options.feed_interval_s, timeout_s=self.options.timeout_s)
        if live.feed_error is not None:
            raise DemoError(live.feed_error)
        live.fill(self.summary, deploy)

    def judge(self) -> None:
        s = self.summary
        if not s.all_active:
            s.problems.append("not every device activated the model")
        if s.received != s.sent:
            s.problems.append(f"{s.sent} predictions sent but {s.received} received")
        if s.accuracy is None or s.accuracy < s.min_accuracy:
            s.problems.append(f"on-device accuracy {s.accuracy} is below {s.min_accuracy}")
        s.ok = not s.problems

    def close(self) -> None:
        if self.fleet is not None:
            with contextlib.suppress(Exception):
                self.fleet.conn.close()
            with contextlib.suppress(Exception):
                self.fleet.registry.close()
        self.agents.stop_all()
        if self.broker is not None:
            self.broker.stop()


class _ProgressTracker:
    """Prints each device's phase changes during the push and notes when it became active."""

    def __init__(self, say: Any, started: float) -> None:  # noqa: ANN401
        self.say = say
        self.started = started
        self.last: dict[str, str] = {}
        self.active_at: dict[str, float] = {}

    def update(self, progress: list[Progress]) -> None:
        for p in progress:
            text = p.describe()
            if self.last.get(p.device_id) == text:
                continue
            self.last[p.device_id] = text
            after = round(time.monotonic() - self.started, 2)
            if p.phase.value == "active":
                self.active_at.setdefault(p.device_id, after)
            self.say(f"           {p.device_id}  {text}  (+{after:.2f} s)")
