"""The refusal counter and its rate limiter: time is an argument, nothing sleeps."""

from __future__ import annotations

import pytest

from hacluster.core.ratelimit import OTHERS, Burst, RateLimiter, RefusalLog, held_back


def test_one_line_per_key_per_interval_with_the_count_held_back() -> None:
    limiter = RateLimiter(interval_s=10.0)
    assert limiter.hit("10.0.0.9", 0.0) == Burst("10.0.0.9", 0)
    assert [limiter.hit("10.0.0.9", t / 10) for t in range(1, 100)] == [None] * 99
    assert limiter.hit("10.0.0.8", 5.0) == Burst("10.0.0.8", 0)  # keys are independent
    assert limiter.hit("10.0.0.9", 10.0) == Burst("10.0.0.9", 99)
    assert limiter.hit("10.0.0.9", 10.5) is None


def test_overdue_reports_what_a_source_that_went_quiet_left_unsaid() -> None:
    limiter = RateLimiter(interval_s=10.0)
    limiter.hit("a", 0.0)
    for t in range(1, 6):
        limiter.hit("a", float(t))
    limiter.hit("b", 1.0)  # nothing held back: nothing to report
    assert limiter.overdue(9.9) == []
    assert limiter.overdue(11.0) == [Burst("a", 5)]
    assert limiter.tracked == 1  # b was quiet for a whole interval: forgotten
    assert limiter.overdue(30.0) == []  # reported once
    assert limiter.tracked == 0
    assert limiter.hit("a", 30.0) == Burst("a", 0)


def test_many_sources_share_one_key_beyond_the_limit() -> None:
    limiter = RateLimiter(interval_s=10.0, max_keys=3)
    lines = [limiter.hit(f"10.0.0.{i}", 0.0) for i in range(1000)]
    logged = [b for b in lines if b is not None]
    assert [b.key for b in logged] == ["10.0.0.0", "10.0.0.1", "10.0.0.2", OTHERS]
    assert limiter.tracked == 4
    # later, keys quiet for an interval make room; what the shared key held back is said
    assert limiter.hit("10.0.0.7", 11.0) == Burst("10.0.0.7", 0)
    assert limiter.overdue(11.0) == [Burst(OTHERS, 996)]


def test_a_flood_writes_a_handful_of_lines_and_counts_everything() -> None:
    refusals = RefusalLog(interval_s=10.0, recent=3)
    lines = []
    for i in range(3000):  # 3,000 refusals from one host in 30 s
        lines.append(refusals.refuse("handshake_timeout", "10.0.0.9", i / 100))
    lines.append(refusals.refuse("bad_handshake", "10.0.0.7", 30.0))
    logged = [line for line in lines if line is not None]
    summaries = refusals.overdue(41.0)
    assert len(logged) + len(summaries) <= 5
    # every refusal is in a line: as itself, or in the count of one held back
    assert sum(1 + line.suppressed for line in logged) + sum(
        line.suppressed for line in summaries) == 3001
    summary = refusals.summary(41.0)
    assert summary["total"] == 3001
    assert summary["kinds"] == {"bad_handshake": 1, "handshake_timeout": 3000}
    assert summary["recent"] == [
        {"kind": "bad_handshake", "source": "10.0.0.7", "count": 1, "age_s": 11.0},
        {"kind": "handshake_timeout", "source": "10.0.0.9", "count": 3000, "age_s": 11.0},
    ]


def test_recent_keeps_the_last_few_pairs_newest_first() -> None:
    refusals = RefusalLog(recent=2)
    for i, source in enumerate(["a", "b", "a", "c"]):
        refusals.refuse("bad_token", source, float(i))
    assert [(r["source"], r["count"]) for r in refusals.summary(3.0)["recent"]] == [
        ("c", 1), ("a", 2)]
    assert refusals.summary(3.0)["total"] == 4


def test_held_back_suffix() -> None:
    refusals = RefusalLog(interval_s=5.0)
    first = refusals.refuse("k", "s", 0.0)
    assert first is not None and held_back(first, 5.0) == ""
    refusals.refuse("k", "s", 1.0)
    later = refusals.refuse("k", "s", 6.0)
    assert later is not None and held_back(later, 5.0) == " (1 more like it not logged in the " \
        "last 5s)"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0)
    with pytest.raises(ValueError):
        RateLimiter(1.0, max_keys=0)
