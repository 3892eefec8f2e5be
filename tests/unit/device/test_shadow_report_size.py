"""A device's ShadowReport never exceeds 128 KiB encoded (docs/protocol.md 1 and 4.8).

The worst case the device can build: 64 x 64 confusion cells and 256 samples, every label
and source at its 256-character cap and made of a character JSON escapes to 6 bytes
(over 2 MiB unfitted). The device trims the oldest samples, then the rarest confusion
cells; the counts stay exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgefleet.device.actions import Publish
from edgefleet.device.config import ShadowConfig
from edgefleet.device.inference import Prediction
from edgefleet.device.shadow import Shadow, _Item, _Run
from edgefleet.shared.messages import decode
from edgefleet.shared.shadow import (
    MAX_CONFUSION_LABELS,
    MAX_REPORT_BYTES,
    MAX_SAMPLES,
    ShadowReport,
    fit_report,
)
from edgefleet.shared.topics import Topics
from support.manifests import shadow_manifest

N = MAX_CONFUSION_LABELS


def _label(i: int) -> str:
    return f"{i:02d}" + "\x01" * 254  # 256 characters, each \u0001 in JSON


def _worst(tmp_path) -> tuple[Shadow, _Run]:
    agent = SimpleNamespace(
        config=SimpleNamespace(device_id="d" * 64, groups=["g"], shadow=ShadowConfig()),
        topics=Topics("p"),
        store=SimpleNamespace(root=tmp_path),
        classifier=SimpleNamespace(name="n" * 64, version=2**62),
    )
    shadow = Shadow(agent)  # type: ignore[arg-type]
    manifest = shadow_manifest(version=2**62, sample=1.0)
    run = _Run(manifest, manifest.variants[0], "e")
    run.state, run.reason = "failed", "\x01" * 1024
    array = np.zeros(1)
    n = 0
    for a in range(N + 8):  # more labels than the matrix keeps
        for c in range(N + 8):
            repeats = 3 if (a, c) == (5, 9) else 1  # one cell clearly the most frequent
            for _ in range(repeats):
                item = _Item(array, f"{n:08d}" + "\x01" * 300, _label(a), 0.5, 1.0)
                run.stats.add(item, Prediction(_label(c), 0.25, [], 2.0))
                n += 1
    shadow.run = run
    return shadow, run


def test_the_worst_case_report_is_trimmed_to_128_kib(tmp_path):
    shadow, run = _worst(tmp_path)
    stats = run.stats
    full = shadow.summary(run).model_copy(
        update={"samples": list(stats.samples), "confusion": stats.confusion}
    )
    assert len(stats.samples) == MAX_SAMPLES
    assert len(full.model_dump_json().encode()) > 16 * MAX_REPORT_BYTES  # really the worst

    report = shadow.summary(run)
    payload = report.model_dump_json().encode()
    assert len(payload) <= MAX_REPORT_BYTES
    assert len(payload) > MAX_REPORT_BYTES - 4096  # trimmed to fit, not emptied
    assert decode(ShadowReport, payload, max_bytes=MAX_REPORT_BYTES) == report  # host limit

    # The counts are exact; samples went first (all of them: cells this big), then the
    # rarest confusion cells; the most frequent cell stays.
    assert (report.compared, report.agreed) == (stats.compared, stats.agreed)
    assert report.samples == []
    assert report.confusion[_label(5)][_label(9)] == 3
    cells = sum(len(row) for row in report.confusion.values())
    assert 0 < cells < N * N
    assert sum(n for row in report.confusion.values() for n in row.values()) < report.compared

    # What the agent publishes is that report.
    (publish,) = shadow._report(force=True)
    assert isinstance(publish, Publish)
    assert len(publish.payload) <= MAX_REPORT_BYTES


def test_samples_go_oldest_first_and_a_report_that_fits_is_unchanged(tmp_path):
    shadow, run = _worst(tmp_path)
    report = shadow.summary(run).model_copy(
        update={"confusion": {}, "samples": list(run.stats.samples)}
    )
    assert fit_report(report, max_bytes=10**7) is report
    fitted = fit_report(report)
    size = len(fitted.model_dump_json().encode())
    assert size <= MAX_REPORT_BYTES
    assert 0 < len(fitted.samples) < MAX_SAMPLES
    assert fitted.samples == report.samples[-len(fitted.samples) :]  # the latest ones
    one_more = report.model_copy(update={"samples": report.samples[-len(fitted.samples) - 1 :]})
    assert len(one_more.model_dump_json().encode()) > MAX_REPORT_BYTES  # as many as fit
