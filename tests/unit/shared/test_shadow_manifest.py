"""Shadow manifests: signed like any other, never accepted where a model is activated."""

from __future__ import annotations

import json

import pytest

from conftest import NOW, make_manifest
from edgefleet.shared.errors import MalformedManifestError
from edgefleet.shared.manifest import canonical_bytes, sign_manifest, verify_manifest
from edgefleet.shared.shadow import ShadowSpec
from edgefleet.shared.topics import SHADOW_DEVICE, SHADOW_GROUP, SHADOW_REPORT, Topics


def _verify(envelope: bytes, trusted, *, shadow: bool):
    return verify_manifest(
        envelope,
        trusted_keys=trusted,
        device_id="pi-01",
        groups=["field"],
        current_version=1,
        now=NOW,
        shadow=shadow,
    )


def test_an_ordinary_manifest_signs_the_same_bytes_as_before_shadows_existed():
    obj = json.loads(canonical_bytes(make_manifest()))
    assert "shadow" not in obj  # devices that predate shadows still accept it


def test_a_shadow_manifest_is_refused_on_a_desired_topic_and_accepted_on_a_shadow_one(
    signing_key, trusted
):
    envelope = sign_manifest(make_manifest(shadow=ShadowSpec(sample=0.2)), signing_key)
    with pytest.raises(MalformedManifestError, match="shadow candidate: never activated"):
        _verify(envelope, trusted, shadow=False)
    assert _verify(envelope, trusted, shadow=True).shadow == ShadowSpec(sample=0.2)


def test_an_ordinary_manifest_is_refused_on_a_shadow_topic(signing_key, trusted):
    envelope = sign_manifest(make_manifest(), signing_key)
    with pytest.raises(MalformedManifestError, match="not a shadow manifest"):
        _verify(envelope, trusted, shadow=True)


@pytest.mark.parametrize("sample", [0.0, -0.1, 1.5])
def test_a_sample_outside_0_1_is_not_a_shadow_spec(sample):
    with pytest.raises(ValueError, match="sample"):
        ShadowSpec(sample=sample)


def test_shadow_topics_build_and_parse():
    t = Topics("acme/prod")
    assert t.shadow_device("d1") == "acme/prod/devices/d1/shadow"
    assert t.shadow_group("g1") == "acme/prod/groups/g1/shadow"
    assert t.shadow_report("d1") == "acme/prod/devices/d1/shadow/report"
    assert t.parse(t.shadow_device("d1")).kind == SHADOW_DEVICE
    assert t.parse(t.shadow_group("g1")).group == "g1"
    assert t.parse(t.shadow_group("g1")).kind == SHADOW_GROUP
    assert t.parse(t.shadow_report("d1")).kind == SHADOW_REPORT
    assert t.all_shadow_reports() == "acme/prod/devices/+/shadow/report"
