"""When the BMC dies with its host (issue 12): a host whose fence failed and whose
watchdog is armed counts as fenced once it must have reset itself, never earlier.

The host may feed its watchdog for `self_fence_s` after sending a renewal a leader
acknowledged (core/selffence.py); the watchdog resets it `timeout_s` after the last
feed. The leader counts from the later of its last acknowledgement to the host and the
start of its leadership, adds both delays, a 1 % clock-rate allowance and the margin.
"""

from __future__ import annotations

import pytest

from hacluster.core.manager import CLOCK_RATE_MARGIN
from hacluster.core.selffence import SelfFence, Verdict
from hacluster.fsm import commands as c
from hacluster.fsm.model import (
    FenceFallback,
    FenceResult,
    Watchdog,
    WatchdogKind,
)
from hacluster.fsm.states import HostState, VmState

from .test_manager import T0, Leader, fence_host_b, fences, proposals, ready_leader

H = HostState
ARMED = Watchdog(WatchdogKind.COMMAND, timeout_s=5.0, self_fence_s=8.0, armed=True)
MARGIN = 2.0


def failed_fence(leader: Leader, watchdog: Watchdog = ARMED, acked_at: float = T0 + 0.5,
                 result: FenceResult = FenceResult.UNREACHABLE) -> float:
    """b (armed as given, last acknowledged at `acked_at`) loses its lease; its fence
    fails with `result` at T0 + 4: returns when its watchdog must have reset it."""
    leader.cluster.ok(c.ReportWatchdog(name="b", watchdog=watchdog))
    leader.cluster.add_vm("vm1", 512, allowed_hosts=("b",))
    leader.manager.acked("b", acked_at)
    run = fence_host_b(leader)
    (failed,) = leader.manager.fence_result("b", run.token, result, "no answer", "ipmi",
                                            T0 + 4.0)
    leader.commit(failed)  # type: ignore[arg-type]
    return acked_at + watchdog.resets_within_s * (1 + CLOCK_RATE_MARGIN) + MARGIN


def confirms(leader: Leader, at: float) -> list[c.WatchdogConfirm]:
    found = proposals(leader.tick(at), c.WatchdogConfirm)
    return [p.command for p in found]  # type: ignore[misc]


def test_a_host_whose_bmc_is_dark_counts_fenced_once_its_watchdog_reset_it() -> None:
    leader = ready_leader("b", fence_retry_limit=1, watchdog_margin_s=MARGIN)
    due = failed_fence(leader)
    assert leader.state.hosts["b"].state is H.FENCE_FAILED
    assert confirms(leader, due - 0.05) == []
    (confirm,) = proposals(leader.tick(due), c.WatchdogConfirm)
    assert "self-fence 8 s + command watchdog 5 s + margin 2 s" in confirm.command.evidence
    leader.commit(confirm)
    host = leader.state.hosts["b"]
    assert host.state is H.FENCED
    record = leader.state.fence_record(host.fence_token)
    assert record is not None
    assert (record.result, record.method, record.attempt) == (FenceResult.SELF_FENCED,
                                                               "watchdog", 2)
    assert record.evidence == "no answer"  # the BMC's failure stays in the ledger
    assert leader.state.vms["vm1"].state is VmState.PENDING  # released, cannot go elsewhere


def test_between_retries_the_watchdog_wins_over_another_attempt() -> None:
    leader = ready_leader("b", fence_retry_limit=5, watchdog_margin_s=MARGIN)
    due = failed_fence(leader)
    assert leader.state.hosts["b"].state is H.FENCING
    decisions = leader.tick(due + 60)
    assert [type(p.command) for p in proposals(decisions, c.Command)] == [c.WatchdogConfirm]


def test_an_attempt_of_ours_under_way_answers_before_the_watchdog_counts() -> None:
    """Its BMC may come back and power the host off yet (a repaired chassis): the
    outcome first, then the watchdog (soak seed 5, scenario 43)."""
    leader = ready_leader("b", fence_retry_limit=5, fence_retry_backoff_s=0.5,
                          watchdog_margin_s=MARGIN)
    due = failed_fence(leader)
    (retry,) = proposals(leader.tick(due - 1.0), c.RequestFence)
    leader.commit(retry)
    decisions = leader.tick(due + 1.0)  # committed: it runs now, no confirm beside it
    assert len(fences(decisions)) == 1 and proposals(decisions, c.WatchdogConfirm) == []
    assert confirms(leader, due + 5.0) == []  # it runs
    record = leader.state.fence_record(leader.state.hosts["b"].fence_token)
    assert record is not None
    (failed,) = leader.manager.fence_result("b", record.token, FenceResult.UNREACHABLE,
                                            "no answer", "ipmi", due + 6.0)
    leader.commit(failed)  # type: ignore[arg-type]
    assert len(confirms(leader, due + 6.1)) == 1


def test_a_late_acknowledgement_moves_the_moment() -> None:
    leader = ready_leader("b", fence_retry_limit=1, watchdog_margin_s=MARGIN)
    due = failed_fence(leader)
    leader.manager.acked("b", T0 + 3.0)  # acknowledged later than failed_fence said
    later = due + 2.5
    assert confirms(leader, later - 0.05) == []
    assert len(confirms(leader, later)) == 1


def test_a_new_leader_counts_from_when_it_took_over() -> None:
    """Acknowledgements of an earlier leader are unknown to it, but none is later than
    its takeover: it counts from there."""
    leader = ready_leader("b", fence_retry_limit=1, watchdog_margin_s=MARGIN)
    due = failed_fence(leader, acked_at=T0 - 30.0)  # long before this leadership
    from_takeover = T0 + ARMED.resets_within_s * (1 + CLOCK_RATE_MARGIN) + MARGIN
    assert due < from_takeover
    assert confirms(leader, from_takeover - 0.05) == []
    assert len(confirms(leader, from_takeover)) == 1


@pytest.mark.parametrize("why", ["disarmed", "no watchdog", "operator fallback",
                                 "action none"])
def test_no_watchdog_confirm(why: str) -> None:
    settings = {"fence_fallback": FenceFallback.OPERATOR} if why == "operator fallback" \
        else {}
    leader = ready_leader("b", fence_retry_limit=1, watchdog_margin_s=MARGIN,
                          **settings)
    watchdog = {"disarmed": Watchdog(WatchdogKind.DEVICE, 5.0, 8.0, armed=False),
                "no watchdog": Watchdog()}.get(why, ARMED)
    result = FenceResult.NOTIFIED if why == "action none" else FenceResult.UNREACHABLE
    due = failed_fence(leader, watchdog, result=result)
    assert confirms(leader, due + 600) == []
    assert leader.state.hosts["b"].state is H.FENCE_FAILED


def test_apply_refuses_what_the_leader_must_not_propose() -> None:
    leader = ready_leader("b", fence_retry_limit=1, watchdog_margin_s=MARGIN)
    failed_fence(leader, Watchdog(WatchdogKind.DEVICE, 5.0, 8.0, armed=False))
    token = leader.state.hosts["b"].fence_token
    events = leader.cluster.run(c.WatchdogConfirm(host="b", token=token, evidence="late"))
    assert "has no armed watchdog" in events[0].message
    leader.cluster.ok(c.ReportWatchdog(name="b", watchdog=ARMED))
    events = leader.cluster.run(c.WatchdogConfirm(host="b", token=token - 1, evidence="x"))
    assert "stale watchdog confirm" in events[0].message
    leader.cluster.ok(c.SetSettings(fence_fallback=FenceFallback.OPERATOR))
    events = leader.cluster.run(c.WatchdogConfirm(host="b", token=token, evidence="x"))
    assert "fence_fallback is operator" in events[0].message
    assert leader.state.hosts["b"].state is H.FENCE_FAILED


# ---------------------------------------------------------------- the host's side


def test_the_allowance_counts_from_the_sending_of_the_acknowledged_renewal() -> None:
    policy = SelfFence(self_fence_s=8.0)
    assert policy.verdict(0.0) is Verdict.WAIT  # never acknowledged: not armed
    policy.sent(1, now=10.0)
    policy.sent(2, now=10.5)
    policy.acknowledged(1)  # arrives late, at any time: counts from 10.0
    assert policy.verdict(17.9) is Verdict.FEED
    assert policy.verdict(18.0) is Verdict.SELF_FENCE
    policy.acknowledged(2)  # too late: once fired, it stays fired
    assert policy.verdict(18.1) is Verdict.SELF_FENCE


def test_challenges_and_unknown_rounds_allow_nothing() -> None:
    policy = SelfFence(self_fence_s=8.0)
    policy.sent(1, now=10.0)
    policy.acknowledged(1, challenge=True)
    policy.acknowledged(7)  # never sent (a forged or confused ack)
    assert policy.verdict(11.0) is Verdict.WAIT


def test_a_leader_is_allowed_by_its_own_confirmed_reads() -> None:
    policy = SelfFence(self_fence_s=8.0)
    policy.allow_from(20.0)
    assert policy.verdict(27.9) is Verdict.FEED
    assert policy.left_s(27.0) == pytest.approx(1.0)
    assert policy.verdict(28.0) is Verdict.SELF_FENCE
