"""What the ``edgefleet-agent`` commands do, as plain functions that tests call directly."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from edgefleet.device.agent import Agent
from edgefleet.device.config import load_config
from edgefleet.device.errors import InferenceError
from edgefleet.device.inference import classifier_from_file
from edgefleet.device.inputs import load_input, load_metadata
from edgefleet.device.outbox import Outbox
from edgefleet.device.runtime import discover_backend
from edgefleet.device.store import StateStore
from edgefleet.shared.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from edgefleet.device.config import AgentConfig


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str) -> None:
    """Structured logs on stderr; quiet (warnings) by default."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("edgefleet").setLevel(level.upper())


def agent_config(
    config_path: Path, *, state_dir: Path | None = None, watch_dir: Path | None = None
) -> AgentConfig:
    """Load agent.toml, with ``state_dir`` / ``watch_dir`` given on the command line instead.

    The overrides are relative to the working directory (the config's own paths are
    relative to the config file): ``--state-dir ./pi-001`` runs a bundle's agent.toml,
    made for ``/var/lib/edgefleet``, from a user's folder for a trial on the host.

    Raises:
        ConfigError: the file is missing, unreadable or invalid.
    """
    config = load_config(config_path)
    update: dict[str, Path] = {}
    if state_dir is not None:
        update["state_dir"] = state_dir.expanduser().absolute()
    if watch_dir is not None:
        inference = config.inference.model_copy(
            update={"watch_dir": watch_dir.expanduser().absolute()}
        )
        return config.model_copy(update={**update, "inference": inference})
    return config.model_copy(update=update) if update else config


def run_agent(
    config_path: Path, *, state_dir: Path | None = None, watch_dir: Path | None = None
) -> int:
    """Load the config (see :func:`agent_config`) and run the agent until SIGTERM.

    Raises:
        DeviceError: the config, state directory, runtime or keys are unusable.
    """
    config = agent_config(config_path, state_dir=state_dir, watch_dir=watch_dir)
    setup_logging(config.log_level)
    return Agent(config).run()


def predict_files(
    model: Path,
    files: Sequence[Path],
    *,
    backend: str = "auto",
    num_threads: int = 1,
    top_k: int = 3,
) -> Iterator[dict[str, Any]]:
    """Classify files one by one with a local model (no broker); yield one dict per file.

    A file that cannot be read yields ``{"source": ..., "error": ...}`` and the rest go on.

    Raises:
        DeviceError: no runtime, or the model cannot be loaded.
    """
    classifier = classifier_from_file(
        model, backend=discover_backend(backend), num_threads=num_threads, top_k=top_k
    )
    for path in files:
        try:
            p = classifier.classify(load_input(path), load_metadata(path))
        except (InputError, InferenceError) as exc:  # this file only; the rest go on
            yield {"source": str(path), "error": str(exc)}
            continue
        if p.error:  # NaN / infinite scores: no class to give
            yield {"source": str(path), "error": f"the model gave {p.error} scores"}
            continue
        yield {
            "source": str(path),
            "label": p.label,
            "score": round(p.score, 6),
            "topk": [{"label": lbl, "score": round(s, 6)} for lbl, s in p.topk],
            "latency_ms": round(p.latency_ms, 3),
            "model_name": classifier.name,
            "ts": time.time(),
            **({"note": p.note} if p.note else {}),
        }


def local_status(config_path: Path, *, state_dir: Path | None = None) -> dict[str, Any]:
    """What the state directory says: active/previous model, anti-rollback, outbox, downloads."""
    config = agent_config(config_path, state_dir=state_dir)
    store = StateStore(config.state_dir)
    active, previous = store.active(), store.previous()
    version, time_floor = store.floor()
    outbox = Outbox(
        store.outbox_path,
        max_records=config.outbox.max_records,
        when_full=config.outbox.when_full,
    )
    try:
        depth, dropped = outbox.depth(), outbox.dropped()
    finally:
        outbox.close()
    return {
        "device_id": config.device_id,
        "active": {"name": active.name, "version": active.version, "sha256": active.sha256}
        if active
        else None,
        "previous": {"name": previous.name, "version": previous.version} if previous else None,
        "antirollback_version": version,
        "time_floor": time_floor,
        "outbox_depth": depth,
        "dropped": dropped,
        "downloads": sorted(p.name for p in (store.root / "downloads").iterdir()),
        # signed manifests not newer than the active model (replays, stale desired topics)
        "ignored_manifests": store.ignored(),
    }
