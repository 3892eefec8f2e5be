"""The agent's TOML configuration, validated by pydantic (``extra="forbid"``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgefleet.device.errors import ConfigError
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.chunks import DEFAULT_MIN_CHUNK_SIZE, MAX_CHUNKS
from edgefleet.shared.errors import TopicError
from edgefleet.shared.listen import is_loopback, split_listen
from edgefleet.shared.topics import validate_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 devices
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    """How to reach the broker."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://host:port (plain) or mqtts://host:port (TLS).",
    )
    prefix: str = Field(default="edgefleet", description="Topic prefix shared with the host.")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description='MQTT version: "5", or "3.1.1" for a broker without MQTT 5 (the session '
        "is then kept with clean_session=false; session_expiry_s does not apply).",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="How long the broker keeps this device's session while it is offline.",
    )
    ca_file: Path | None = Field(default=None, description="CA certificate (PEM) for TLS.")
    cert_file: Path | None = Field(default=None, description="TLS client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="TLS client private key (PEM).")
    username: str | None = Field(default=None, description="Broker user name, if any.")
    password: str | None = Field(default=None, description="Broker password, if any.")
    reconnect_max_s: float = Field(
        default=60.0, gt=0, description="Upper bound of the jittered reconnect backoff, seconds."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        BrokerUrl.parse(value)  # a BrokerUrlError is a ValueError: pydantic names mqtt.url
        return value

    @property
    def broker(self) -> BrokerUrl:
        """The parsed broker URL."""
        return BrokerUrl.parse(self.url)

    @property
    def host(self) -> str:
        """Broker host name or address (an IPv6 address without brackets)."""
        return self.broker.host

    @property
    def port(self) -> int:
        """Broker port (1883 / 8883 when the URL has none)."""
        return self.broker.port

    @property
    def tls(self) -> bool:
        """True for mqtts:// URLs."""
        return self.broker.tls


class TrustConfig(_Section):
    """Which manifest signers this device trusts."""

    signing_keys: list[Path] = Field(
        default_factory=list,
        description="Files or directories of trusted Ed25519 public keys (PEM).",
    )
    max_model_bytes: int = Field(
        default=64 * 2**20, gt=0, description="Refuse manifests whose model is larger."
    )


class RuntimeConfig(_Section):
    """The interpreter backend."""

    backend: Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"] = Field(
        default="auto",
        description="auto tries ai_edge_litert, then tflite_runtime, then tensorflow.lite.",
    )
    num_threads: int = Field(default=1, ge=1, le=64, description="Interpreter CPU threads.")
    edgetpu: str = Field(
        default="off",
        description='Edge TPU: "off", or the load_delegate device string: usb, pci, ":0".',
    )


class InferenceConfig(_Section):
    """Where sensor images come from and what is reported."""

    watch_dir: Path | None = Field(
        default=None, description="Folder whose new .png/.jpg/.jpeg/.npy files are classified."
    )
    top_k: int = Field(default=3, ge=1, le=100, description="How many classes each record lists.")
    poll_s: float = Field(default=0.2, gt=0, description="Watched-folder poll interval, seconds.")
    settle_s: float = Field(
        default=1.0,
        ge=0,
        description="A file written in place is taken once its size and mtime have not changed "
        "for this long (a file renamed into the folder is taken at the next poll).",
    )
    incomplete_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="An empty (0-byte) or undecodable file is retried while it changes; once it "
        "has not changed for this long it is moved to rejected/ with the reason.",
    )
    after: Literal["move", "delete"] = Field(
        default="move",
        description="What to do with a classified file: move it to processed/ or delete it.",
    )
    thumbnails: bool = Field(
        default=False,
        description="Publish a small picture of each input (at most 8 KiB) beside its "
        "prediction record, on {p}/devices/{id}/thumbnails (QoS 0, best effort), for the host "
        "dashboard. The record itself never carries it, so hosts that do not know thumbnails "
        "are unaffected (docs/protocol.md 4.3.2).",
    )


class OutboxConfig(_Section):
    """The SQLite store-and-forward queue of prediction records."""

    max_records: int = Field(default=100_000, ge=1, description="Bound of the outbox.")
    when_full: Literal["drop_oldest", "drop_newest"] = Field(
        default="drop_oldest", description="Which record to drop when full (always counted)."
    )
    max_in_flight: int = Field(
        default=1000, ge=1, description="Records published but not yet acknowledged by the host."
    )
    resend_after_s: float = Field(
        default=30.0, gt=0, description="Publish an unacknowledged record again after this."
    )
    batch_records: int = Field(
        default=100,
        ge=1,
        le=1000,
        description=(
            "Records per predictions message at most (a PredictionBatch); 1 sends single "
            "records only, for hosts older than PredictionBatch."
        ),
    )


class UpdateConfig(_Section):
    """Over-the-air update timing."""

    chunk_timeout_s: float = Field(
        default=5.0, gt=0, description="Ask for missing chunks after this long without one."
    )
    health_timeout_s: float = Field(
        default=60.0, gt=0, description="Kill the child-process health check after this."
    )


class LimitsConfig(_Section):
    """What one input may cost (memory): larger inputs are refused before they are decoded."""

    max_input_bytes: int = Field(
        default=8 * 2**20,
        ge=1,
        description="Largest input file (watched folder, image topic, predict), bytes.",
    )
    max_pixels: int = Field(
        default=2**20,
        ge=1,
        description="Largest PNG/JPEG, width x height from the image header (checked before "
        "decoding).",
    )
    max_array_elements: int = Field(
        default=2 * 2**20,
        ge=1,
        description="Largest .npy input, elements (product of the shape in its header).",
    )
    max_array_bytes: int = Field(
        default=8 * 2**20,
        ge=1,
        description="Largest .npy input, bytes of data its header announces.",
    )
    max_image_message_bytes: int = Field(
        default=4 * 2**20,
        ge=1,
        description="Largest image-topic message (the base64 JSON of `edgefleet send-image`); "
        "over MQTT 5 the broker is told not to deliver larger packets at all.",
    )


class SafetyConfig(_Section):
    """Hostile models and manifests, failing models, crash loops (docs/agent.md)."""

    max_chunks: int = Field(
        default=MAX_CHUNKS,
        ge=1,
        le=MAX_CHUNKS,
        description="Refuse a manifest whose model is cut into more chunks (too_many_chunks).",
    )
    min_chunk_size: int = Field(
        default=DEFAULT_MIN_CHUNK_SIZE,
        ge=1,
        description="Refuse a manifest of several chunks of fewer bytes (too_many_chunks).",
    )
    max_outputs: int = Field(
        default=100_000,
        ge=1,
        description="Refuse a model with more output values (too_many_outputs).",
    )
    max_labels: int = Field(
        default=10_000,
        ge=1,
        le=10_000,
        description="Refuse a manifest with more labels (too_many_outputs).",
    )
    model_failures: int = Field(
        default=3,
        ge=1,
        description="A model that fails (invoke error, NaN/Inf scores) on this many of the last "
        "model_failure_window inputs counts as failed: the agent reverts to the previous model.",
    )
    model_failure_window: int = Field(
        default=10, ge=1, description="How many recent inputs model_failures counts over."
    )
    crash_restarts: int = Field(
        default=3,
        ge=1,
        description="This many unclean exits within crash_window_s start the agent in safe mode.",
    )
    crash_window_s: float = Field(
        default=600.0, gt=0, description="The window of crash_restarts, seconds."
    )


class StatusConfig(_Section):
    """Heartbeat."""

    heartbeat_s: float = Field(default=30.0, gt=0, description="Status heartbeat interval.")


class MetricsConfig(_Section):
    """Prometheus metrics over HTTP (off unless ``listen`` is set; docs/agent.md)."""

    listen: str | None = Field(
        default=None,
        description='HOST:PORT to serve /metrics on, e.g. "127.0.0.1:9101"; a non-loopback '
        "address needs allow_remote = true.",
    )
    allow_remote: bool = Field(
        default=False, description="Allow a listen address other than loopback."
    )

    @model_validator(mode="after")
    def _check_listen(self) -> MetricsConfig:
        if self.listen is not None:
            host, _port = split_listen(self.listen)
            if not self.allow_remote and not is_loopback(host):
                msg = (
                    f"listen address {host!r} is not loopback: metrics tell a lot about the "
                    "device; set allow_remote = true to serve them on it anyway"
                )
                raise ValueError(msg)
        return self


class LogsConfig(_Section):
    """Log lines published to {p}/devices/{id}/logs (docs/agent.md, "Device logs")."""

    level: Literal["debug", "info", "warning", "error", "off"] = Field(
        default="warning", description='Publish log lines at or above this level; "off": none.'
    )
    per_minute: int = Field(default=60, ge=1, le=6000, description="Lines published per minute.")
    burst: int = Field(default=20, ge=1, le=1000, description="Lines sent at once at most.")
    max_line_bytes: int = Field(
        default=2048, ge=128, le=65536, description="Longer lines (with traceback) are cut."
    )
    queue: int = Field(default=200, ge=1, le=10_000, description="Lines kept while offline.")


class ShadowConfig(_Section):
    """A shadow candidate beside the active model (docs/fleet.md, "Shadow deployments")."""

    quiet_ms: float = Field(
        default=20.0,
        ge=0,
        le=10_000,
        description="The candidate takes a sampled input only once no active prediction came "
        "for this long, so it runs in the gaps between inputs and at most one candidate "
        "inference overlaps an active one: the bound on the delay a shadow adds to an active "
        "prediction. 0 runs the candidate whenever it has an input (no bound).",
    )
    queue: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Sampled inputs waiting for the candidate (each one decoded input in "
        "memory); more are dropped and counted (`dropped` in the report), never waited for.",
    )
    max_cpu_share: float = Field(
        default=1.0,
        gt=0,
        le=1.0,
        description="Share of one core the candidate may use: after an inference of t ms it "
        "rests t x (1 / share - 1) ms before the next (0.5: at most half a core). 1: no cap.",
    )


class AgentConfig(_Section):
    """The whole agent.toml."""

    device_id: str = Field(description="This device's id ([A-Za-z0-9._-], up to 64 chars).")
    groups: list[str] = Field(default_factory=list, description="Groups this device belongs to.")
    state_dir: Path = Field(description="Models, outbox, partial downloads, anti-rollback state.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning", description="Log verbosity (quiet by default)."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    trust: TrustConfig = Field(default_factory=TrustConfig, description="Manifest signers.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Interpreter.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Inference sources."
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Outbox.")
    update: UpdateConfig = Field(default_factory=UpdateConfig, description="OTA updates.")
    status: StatusConfig = Field(default_factory=StatusConfig, description="Heartbeat.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Input limits.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="Model safety.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus.")
    logs: LogsConfig = Field(default_factory=LogsConfig, description="Published log lines.")
    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig, description="Shadow candidates (their cost bound)."
    )

    @field_validator("device_id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return _topic_id(value, "device id")

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: list[str]) -> list[str]:
        return [_topic_id(g, "group") for g in value]


def _topic_id(value: str, what: str) -> str:
    try:
        return validate_id(value, what=what)
    except TopicError as exc:
        raise ValueError(str(exc)) from exc


def _resolve(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def resolve_paths(config: AgentConfig, base: Path) -> AgentConfig:
    """Make every relative path in the config relative to ``base`` (the config's folder)."""
    mqtt = config.mqtt.model_copy(
        update={
            k: _resolve(base, getattr(config.mqtt, k)) for k in ("ca_file", "cert_file", "key_file")
        }
    )
    trust = config.trust.model_copy(
        update={"signing_keys": [_resolve(base, p) for p in config.trust.signing_keys]}
    )
    inference = config.inference.model_copy(
        update={"watch_dir": _resolve(base, config.inference.watch_dir)}
    )
    return config.model_copy(
        update={
            "state_dir": _resolve(base, config.state_dir),
            "mqtt": mqtt,
            "trust": trust,
            "inference": inference,
        }
    )


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``section.field: what is wrong``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see docs/agent.md)"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_config(text: str, *, base: Path, source: str = "<string>") -> AgentConfig:
    """Parse and validate agent.toml text.

    Args:
        text: The TOML document.
        base: Folder that relative paths are relative to.
        source: Name used in error messages.

    Returns:
        The validated configuration with absolute paths.

    Raises:
        ConfigError: the TOML is malformed or a setting is missing or invalid.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        msg = f"{source} is invalid:\n{format_validation_error(exc)}"
        raise ConfigError(msg) from exc
    return resolve_paths(config, base)


def load_config(path: Path) -> AgentConfig:
    """Read and validate an agent.toml file.

    Raises:
        ConfigError: the file is missing, unreadable or invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror or exc}") from exc
    return parse_config(text, base=path.resolve().parent, source=str(path))
