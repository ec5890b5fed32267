"""The leader's loop notices when it stood still, so that the silence it caused
itself is not held against the hosts (see Manager.own_pause)."""

from __future__ import annotations

import pytest

from hacluster.core.leaderloop import stood_still


@pytest.mark.parametrize(("last", "now", "expected"), [
    (None, 5.0, 0.0),  # the first tick has nothing to compare with
    (10.0, 10.1, 0.0),  # on time
    (10.0, 10.25, 0.0),  # late by jitter (a busy loop), not a pause
    (10.0, 12.1, 2.0),  # stood still 2 s beyond the tick that was due
])
def test_stood_still(last: float | None, now: float, expected: float) -> None:
    assert stood_still(last, now, tick_s=0.1) == pytest.approx(expected)
