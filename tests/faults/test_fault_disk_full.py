"""Disk full while staging: RLIMIT_FSIZE on the live agent makes the 2 MB model file unwritable."""

from __future__ import annotations

import pytest

from support.agent import ModelBundle
from support.faults import limit_file_size

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIG_CHUNK = 64 * 1024


def padded(bundle: ModelBundle, size: int) -> ModelBundle:
    """The tiny model followed by zeros up to ``size`` bytes: loadable, and large."""
    data = bundle.data + b"\0" * (size - len(bundle.data))
    path = bundle.path.with_name("padded.tflite")
    path.write_bytes(data)
    return ModelBundle(path, data, bundle.input, bundle.output)


def test_staging_into_a_full_disk_fails_cleanly_and_a_restart_retries(rig, mnist_bundle):
    agent = rig.start()
    rig.push(mnist_bundle, 1)
    rig.wait_report(state="active", version=1)
    # Every file the agent writes from now on stops at 1 MiB: chunks (64 KiB), state and
    # outbox fit, the 2 MiB model file does not.
    limit_file_size(agent.proc.pid, 2**20)
    big = padded(mnist_bundle, 2 * 2**20)
    rig.push(big, 2, chunk_size=BIG_CHUNK)
    failed = rig.wait_report(state="failed", version=2)
    assert failed.reason == "disk_full", failed
    assert "File too large" in failed.message or "No space" in failed.message
    assert failed.active_version == 1
    state = rig.invariant()  # v1 still active and serving; the agent is up
    assert state.version == 1
    assert not (rig.state_dir / "downloads" / big.sha256).exists(), "staging not cleaned up"
    assert not list(rig.state_dir.glob("models/.*.tmp")), "a partial model file was left"
    assert not (rig.state_dir / "models" / f"{big.sha256}.tflite").exists()

    agent.stop()
    rig.start()  # room again: the retained manifest is tried afresh and succeeds
    rig.wait_report(state="active", version=2, sha256=big.sha256)
    assert rig.invariant().version == 2
