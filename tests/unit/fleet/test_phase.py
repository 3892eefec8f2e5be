"""The rollout Phase follows the protocol's UpdateState: same names and values, plus pending."""

from __future__ import annotations

import pytest

from edgefleet.host.fleet._rollout import Phase
from edgefleet.shared.messages import UpdateState

HOST_ONLY = {Phase.PENDING}


@pytest.mark.parametrize("state", list(UpdateState))
def test_every_reported_state_has_its_phase(state: UpdateState):
    phase = Phase.of(state)
    if state is UpdateState.IDLE:
        assert phase is Phase.PENDING
    else:
        assert (phase.name, phase.value) == (state.name, state.value)


def test_only_the_host_only_phases_are_not_protocol_states():
    protocol = {s.value for s in UpdateState}
    assert {p for p in Phase if p.value not in protocol} == HOST_ONLY
    assert Phase.PENDING.value not in protocol  # a device can never report "pending"


def test_done_and_bad():
    assert {p for p in Phase if p.done} == {Phase.ACTIVE, Phase.REJECTED, Phase.FAILED}
    assert {p for p in Phase if p.bad} == {Phase.REJECTED, Phase.FAILED}
