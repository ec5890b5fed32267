"""Pre-vote's rules (hacluster/raft/prevote.py), without a network."""

from __future__ import annotations

from hacluster.raft.prevote import PreVote


def test_a_voter_that_hears_a_leader_or_leads_says_no() -> None:
    pre = PreVote(min_timeout_s=0.15)
    log = (3, 10)
    assert pre.answer(5.0, False, log, log)  # never heard a leader: yes
    pre.leader_heard(5.0)
    assert not pre.answer(5.1, False, log, log)  # heard one 0.1 s ago
    assert pre.answer(5.2, False, log, log)
    assert not pre.answer(9.0, True, log, log)  # a leader says no


def test_only_an_asker_with_a_log_as_up_to_date_gets_a_yes() -> None:
    pre = PreVote(min_timeout_s=0.15)
    ours = (3, 10)
    assert pre.answer(1.0, False, ours, (3, 10)) and pre.answer(1.0, False, ours, (4, 2))
    assert not pre.answer(1.0, False, ours, (3, 9)) and not pre.answer(1.0, False, ours, (2, 50))


def test_a_majority_of_yeses_in_the_round_under_way_wins() -> None:
    pre = PreVote(min_timeout_s=0.15)
    pre.start("a", 8, 1.0)
    assert not pre.yes("b", 7, 5, 7)  # an answer to an older round
    assert not pre.yes("b", 8, 5, 7)  # a and b: 2 of 5
    assert not pre.yes("b", 8, 5, 7)  # the same voter twice
    assert pre.yes("c", 8, 5, 7) and pre.won
    pre.election_started()
    assert not pre.won and not pre.yes("d", 8, 5, 7)
    pre.start("a", 1, 2.0)
    assert pre.yes("a", 1, 1, 0)  # alone: its own yes is a majority


def test_a_late_yes_does_not_start_an_election_against_a_leader() -> None:
    """A round for term 1 began before any leader; a leader of term 1 was elected (this
    peer voted for it) and then the yes arrived: counting it would have this peer stand
    in term 2 and depose the leader it follows."""
    pre = PreVote(min_timeout_s=0.15)
    pre.start("c", 1, 1.0)
    assert not pre.yes("b", 1, 3, 1)  # our term is 1 already: the round is void
    pre.start("c", 2, 3.0)
    pre.leader_heard(3.1)  # a leader of our term spoke after the round began
    assert not pre.yes("b", 2, 3, 1) and not pre.won
    pre.start("c", 2, 4.0)  # a new round, nothing heard since: it counts
    assert pre.yes("b", 2, 3, 1) and pre.won
