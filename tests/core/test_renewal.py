"""The renewal protocol (core/renewal.py): what a renewal proves and since when,
replays, boots, nonces and follow-ups. No sockets: daemon/leases.py moves the bytes."""

from __future__ import annotations

import pytest

from hacluster.core.renewal import (
    NO_NONCE,
    REFUSAL_LOG_INTERVAL_S,
    Ack,
    BadDatagram,
    LeaseCodec,
    LeaseEndpoint,
    Renewal,
    RenewalJudge,
    RenewalSender,
)

TTL = 3.0
SECRET = "lease-test-secret-0123456789"


def renewal(seq: int, link: str = "main", boot: bytes = b"boot0001",
            nonce: tuple[int, int] = NO_NONCE) -> Renewal:
    return Renewal("h2", link, boot, seq, nonce, sent_at=0.0)


def credit(judge: RenewalJudge, r: Renewal, now: float) -> float | None:
    admitted = judge.admit(r, now, TTL)
    assert admitted is not None, "refused as a replay"
    return admitted.credit_at


def test_each_link_copy_counts_once_and_replays_are_refused() -> None:
    judge = RenewalJudge()
    assert judge.admit(renewal(1, "main"), 10.0, TTL) is not None
    assert judge.admit(renewal(1, "backend"), 10.0, TTL) is not None  # the other link's copy
    assert judge.admit(renewal(1, "main"), 10.0, TTL) is None  # a replay
    assert judge.admit(renewal(0, "backend"), 10.0, TTL) is None  # older than the last seen
    assert judge.refused == 2


def test_a_renewal_proves_life_at_the_moment_its_nonce_was_issued() -> None:
    """Hole: replayed renewals kept a dead host online for 24 s. Now a renewal credits the
    leader's own time of the nonce it echoes: arriving late adds nothing."""
    judge = RenewalJudge()
    nonce = judge.issue(term=4, now=100.0, window_s=TTL)
    late = judge.admit(renewal(1, nonce=nonce), now=102.5, window_s=TTL)
    assert late is not None and late.credit_at == 100.0


def test_unknown_old_or_foreign_nonces_prove_nothing() -> None:
    judge = RenewalJudge()
    old = judge.issue(term=4, now=100.0, window_s=TTL)
    fresh = judge.issue(term=4, now=104.0, window_s=TTL)
    assert credit(judge, renewal(1, nonce=old), 104.1) is None
    assert judge.admit(renewal(2, nonce=(3, fresh[1])), 104.1, TTL).credit_at is None
    assert credit(judge, renewal(3, nonce=NO_NONCE), 104.1) is None
    assert credit(judge, renewal(4, nonce=fresh), 104.1) == 104.0


def test_a_new_term_forgets_the_nonces_of_the_old_one() -> None:
    judge = RenewalJudge()
    nonce = judge.issue(term=4, now=100.0, window_s=TTL)
    judge.issue(term=5, now=100.5, window_s=TTL)
    assert credit(judge, renewal(1, nonce=nonce), 100.6) is None


def test_renewals_of_an_older_boot_are_refused_once_a_newer_one_was_credited() -> None:
    """Hole: datagrams captured from two boots, replayed alternately, kept a powered-off
    host online. Once the newer boot proved life, the older one is refused for good."""
    judge = RenewalJudge()
    n1 = judge.issue(4, 100.0, TTL)
    assert judge.admit(renewal(50, boot=b"boot-one", nonce=n1), 100.1, TTL) is not None
    n2 = judge.issue(4, 101.0, TTL)
    assert judge.admit(renewal(1, boot=b"boot-two", nonce=n2), 101.1, TTL) is not None
    assert judge.admit(renewal(51, boot=b"boot-one", nonce=n2), 101.2, TTL) is None
    assert judge.admit(renewal(2, boot=b"boot-two", nonce=n2), 101.3, TTL) is not None


def test_a_replayed_old_boot_cannot_lock_out_the_live_one() -> None:
    """Boot order is learnt from credited renewals only: an old boot's replay, which
    carries no nonce of this leader, does not make the live boot look old."""
    judge = RenewalJudge()
    n1 = judge.issue(4, 100.0, TTL)
    assert judge.admit(renewal(7, boot=b"boot-live", nonce=n1), 100.1, TTL) is not None
    replay = judge.admit(renewal(999, boot=b"boot-old", nonce=(2, 5)), 100.2, TTL)
    assert replay is not None and replay.credit_at is None
    n2 = judge.issue(4, 100.5, TTL)
    assert credit(judge, renewal(8, boot=b"boot-live", nonce=n2), 100.6) == 100.5


def test_the_sender_follows_up_once_when_its_nonce_was_stale() -> None:
    sender = RenewalSender("h2", b"boot0001")
    seq = sender.next_round(now=10.0, stale_after_s=0.25)  # no nonce yet: stale
    assert sender.renewal("main", wall=0.0).nonce == NO_NONCE
    ack = Ack("h1", 4, 9, "h2", "main", seq, (4, 1))
    assert sender.on_ack(ack, now=10.01)
    assert not sender.on_ack(Ack("h1", 4, 9, "h2", "backend", seq, (4, 2)), now=10.02)
    follow = sender.next_round(now=10.02, stale_after_s=0.25)
    assert sender.renewal("main", wall=0.0).nonce == (4, 2)
    assert not sender.on_ack(Ack("h1", 4, 9, "h2", "main", follow, (4, 3)), now=10.03)


def test_the_sender_keeps_the_newest_nonce() -> None:
    sender = RenewalSender("h2", b"boot0001")
    sender.next_round(now=0.0, stale_after_s=0.25)
    sender.on_ack(Ack("h1", 5, 9, "h2", "main", 1, (5, 3)), now=0.1)
    sender.on_ack(Ack("h1", 5, 9, "h2", "main", 1, (5, 2)), now=0.2)  # reordered
    sender.on_ack(Ack("h0", 4, 9, "h2", "main", 1, (4, 99)), now=0.3)  # an older leader
    assert sender.nonce == (5, 3)


def test_codec_round_trip_and_wrong_secret() -> None:
    codec = LeaseCodec(SECRET)
    r = Renewal("h2", "main", b"boot0001", 7, (4, 2), 1.5)
    a = Ack("h1", 4, 42, "h2", "main", 7, (4, 3))
    assert codec.unpack(codec.pack(r)) == r
    assert codec.unpack(codec.pack(a)) == a
    with pytest.raises(BadDatagram, match="bad MAC"):
        codec.unpack(LeaseCodec("another-secret-0123456789").pack(r))


def test_a_renewal_replayed_to_a_follower_or_a_new_leader_proves_nothing() -> None:
    """A follower issued no nonce: nothing it receives is credited (and it answers
    nothing, daemon/leader.py). A new leader issues nonces of its own term only, so a
    renewal echoing its predecessor's nonce is no proof of life there either."""
    old_leader, follower, new_leader = RenewalJudge(), RenewalJudge(), RenewalJudge()
    nonce = old_leader.issue(term=4, now=100.0, window_s=TTL)
    assert credit(old_leader, renewal(1, nonce=nonce), 100.1) == 100.0
    assert credit(follower, renewal(1, nonce=nonce), 100.2) is None
    new_leader.issue(term=5, now=101.0, window_s=TTL)
    assert credit(new_leader, renewal(1, nonce=nonce), 101.1) is None


def test_refused_datagrams_are_counted_by_reason_and_logged_once_per_source_and_interval(
        ) -> None:
    """A flood of forged datagrams from one source is one log line per interval (with
    the count held back said later), while every refusal is counted for status."""
    endpoint = LeaseEndpoint("h1", LeaseCodec(SECRET), b"boot0001")
    forged = LeaseCodec("another-secret-0123456789").pack(renewal(1))
    lines = [endpoint.receive(forged, 10.0 + i * 0.001, TTL, "10.0.0.9").refusal
             for i in range(300)]
    logged = [line for line in lines if line is not None]
    assert [(line.kind, line.source, line.suppressed) for line in logged] == [
        ("mac", "10.0.0.9", 0)]
    other = endpoint.receive(b"\x00" * 40, 10.6, TTL, "10.0.0.7").refusal
    assert other is not None and (other.kind, other.source) == ("mac", "10.0.0.7")
    summary = endpoint.refusals.summary(11.0)
    assert summary["total"] == 301 and summary["kinds"] == {"mac": 301}
    assert summary["recent"][0]["source"] == "10.0.0.7"
    assert summary["recent"][1] == {"kind": "mac", "source": "10.0.0.9", "count": 300,
                                    "age_s": 0.7}
    later = endpoint.refusals.overdue(10.0 + REFUSAL_LOG_INTERVAL_S + 0.1)
    assert [(line.source, line.suppressed) for line in later] == [("10.0.0.9", 299)]
