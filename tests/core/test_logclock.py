"""The log clock: extends applied readings by this peer's monotonic time, never runs
ahead of real time, and takes no wall clock after the origin."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hacluster.core.logclock import LogClock


def test_no_reading_no_estimate() -> None:
    clock = LogClock()
    assert clock.now(5.0) == 0.0 and not clock.running


def test_a_reading_is_extended_by_monotonic_time() -> None:
    clock = LogClock()
    clock.observe(1000.0, mono=50.0)
    assert clock.now(52.5) == 1002.5


def test_a_lower_reading_does_not_pull_it_back() -> None:
    """Own entries apply after they were stamped: their reading is below the estimate."""
    clock = LogClock()
    clock.observe(1000.0, mono=50.0)
    clock.observe(1000.5, mono=51.0)  # stamped at 50.5, applied at 51.0
    assert clock.now(52.0) == 1002.0


def test_a_higher_reading_wins() -> None:
    clock = LogClock()
    clock.observe(1000.0, mono=50.0)
    clock.observe(1010.0, mono=51.0)
    assert clock.now(51.0) == 1010.0


def test_start_only_once() -> None:
    clock = LogClock()
    assert clock.start(wall=1.7e9, mono=10.0)
    assert not clock.start(wall=9.9e9, mono=11.0)
    assert clock.now(12.0) == 1.7e9 + 2


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 0.3), st.booleans()),
                min_size=1, max_size=60))
def test_log_time_never_runs_ahead_of_real_time(steps: list[tuple[float, float, bool]]) -> None:
    """Peers with monotonic clocks of arbitrary offsets pass readings around with delays
    (a leader stamps, another applies later, then leads): log time advances at most as
    much as real time did since the origin."""
    offsets = [0.0, 1e6, -123.0]
    clocks = [LogClock(), LogClock(), LogClock()]
    real, origin = 0.0, 0.0
    clocks[0].start(wall=500.0, mono=real + offsets[0])
    log_time = 500.0
    for i, (advance, delay, switch) in enumerate(steps):
        real += advance
        writer = (i + int(switch)) % 3
        reading = clocks[writer].now(real + offsets[writer])
        if reading <= 0:
            continue
        for peer, clock in enumerate(clocks):  # every peer applies it a bit later
            clock.observe(reading, real + delay + offsets[peer])
        log_time = max(log_time, reading)
        assert log_time - 500.0 <= real - origin + 1e-6
