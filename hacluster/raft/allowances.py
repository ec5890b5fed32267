"""Self-fencing allowances over Raft, the Engine's part (engine.py): numbered answers,
the leader's grants, and both passed through other voters (a one-way cut between the
leader and a host). Like engine.py, it reads SyncObj internals (pysyncobj 0.3.17).

A follower numbers its answers to the leader's replication and remembers when each
left; the leader grants the answers it had received before a read mark that a majority
then confirmed, and the follower may feed its watchdog from the departure of the
latest answer granted (core/selffence.py). Answers are (boot, n): a restarted peer
numbers afresh, and a grant of its previous process's answer never matches one of the
new process. A grant allows nothing later whoever carries it: the leader counts it as
an acknowledgement when it makes it (daemon/leader.py), so its bound on the host's
reset holds whatever the route (docs/safety.md, "Self-fencing allowances through
other voters").
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pysyncobj.monotonic import monotonic as raft_clock  # CLOCK_MONOTONIC_RAW

ANSWERS_REMEMBERED = 4096  # departure times of our latest answers (grants lag a little)
MAX_PASSED_ON = 1000  # entries in one relay or carried map (a sanity bound)
CARRY = "ha_answer_carry"  # {"type", "ans": [boot, n]}: an answer given to another voter
CARRY_EVERY_S = 0.5
RELAY = "ha_allow_relay"  # {"type", "allow": [boot, n]}: a grant passed on by a voter
RELAY_AFTER_S = 1.0  # the leader passes on the grants of voters it missed this long
Answer = tuple[int, int]  # (boot of the answering process, its answer number)


def answer_id(value: object) -> Answer | None:
    """An answer id from the wire, if well formed."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return int(value[0]), int(value[1])
    return None


class Allowances:
    """Mixed into Engine (a SyncObj): these are its internals it uses."""

    _SyncObj__otherNodes: Any
    _SyncObj__selfNode: Any
    _SyncObj__transport: Any
    _ha_heard: dict[str, float]
    raftCurrentTerm: Any

    _isLeader: Callable[[], bool]  # SyncObj's
    def _ha_init_allowances(self) -> None:
        # Self-fencing allowances over Raft (core/selffence.py): a follower numbers its
        # answers and remembers when each left; the leader grants the answers it had
        # received before a read mark that a majority then confirmed.
        # Answers are (boot, n): a restarted peer numbers afresh, and a grant of its
        # previous process's answer never matches one of the new process.
        self._ha_boot = secrets.randbits(62)
        self._ha_ans = 0
        self._ha_ans_sent: OrderedDict[int, float] = OrderedDict()  # n -> monotonic
        self._ha_allowed = 0  # highest of our answers a leader granted
        self._ha_answers: dict[str, Answer] = {}  # leader: partner -> latest received
        self._ha_allows: dict[str, Answer] = {}  # leader: partner -> granted (this term)
        self._ha_allows_rev = 0  # leader: moves with every grant that moved
        self._ha_relays_sent: dict[str, int] = {}  # leader: voter -> rev it last got
        self._ha_relayed: dict[str, Answer] = {}  # follower: voter -> grant relayed to it
        # the other way: a follower numbers an answer for the leader and gives it to the
        # other voters too, who pass it on in their answers (a one-way cut to the leader)
        self._ha_carried: dict[str, Answer] = {}  # voter -> its latest answer to pass on
        self._ha_next_carry = 0.0  # raft_clock(): when to hand the voters an answer again
        self.ha_carry_enabled = False  # set by RaftNode.carry_answers (self-fencing hosts)

    def _ha_carry_answer(self) -> None:
        """A voter, not leading, every CARRY_EVERY_S: an answer numbered like those it
        sends the leader (which go out only in reply to the leader's replication), to
        every other voter: the leader takes it as an answer, the others pass it on in
        their answers (ha_carried). Cut from the leader one way or the other, a grant
        still comes, directly or passed on (ha_relay)."""
        now = raft_clock()
        if not self.ha_carry_enabled or now < self._ha_next_carry or \
                self._SyncObj__selfNode is None or self._isLeader():
            return
        self._ha_next_carry = now + CARRY_EVERY_S
        message = {"type": CARRY, "ans": self.ha_answer_stamp()}
        for node in list(self._SyncObj__otherNodes):
            self._SyncObj__transport.send(node, message)

    def ha_carry(self, node: Any, message: dict[str, Any]) -> None:
        """Another voter's answer (transport.py): leading, take it; else pass it on."""
        ans = answer_id(message.get("ans"))
        if ans is None or node not in self._SyncObj__otherNodes:
            return
        if self._isLeader():
            self._ha_take_carried("", {str(node.id): list(ans)})
        else:
            self._ha_carried[str(node.id)] = ans

    def ha_carried(self) -> dict[str, list[int]]:
        """The answers other voters gave us to pass on, for our answer to the leader."""
        return {name: list(ans) for name, ans in self._ha_carried.items()}

    def _ha_take_allow(self, allow: Answer | None) -> None:
        """A leader granted our answer `allow` (boot, number): allowed from its departure."""
        if allow is not None and allow[0] == self._ha_boot and \
                self._ha_allowed < allow[1] <= self._ha_ans:
            self._ha_allowed = allow[1]

    # ------------------------------------------------------------ self-fencing allowances

    def ha_answer_stamp(self) -> list[int]:
        """An answer to a leader leaves now: its (boot, number) (transport)."""
        self._ha_ans += 1
        self._ha_ans_sent[self._ha_ans] = time.monotonic()  # the daemon's clock
        while len(self._ha_ans_sent) > ANSWERS_REMEMBERED:
            self._ha_ans_sent.popitem(last=False)
        return [self._ha_boot, self._ha_ans]

    def ha_allowed_anchor(self) -> float | None:
        """When the latest of our answers a leader granted left (time.monotonic())."""
        return self._ha_ans_sent.get(self._ha_allowed)

    def ha_answers_snapshot(self) -> dict[str, Answer]:
        """Leader: the answers received so far, to grant once a later mark confirms."""
        return dict(self._ha_answers) if self._isLeader() else {}

    def ha_grant(self, answers: dict[str, Answer], term: int) -> list[str]:
        """Leader: a mark taken after `answers` arrived was confirmed by a majority in
        `term`: each partner may count its allowance from its answer's departure.
        Returns the partners whose grant moved (granting the same answer again moves
        nothing: its departure stays where it was)."""
        if not self._isLeader() or term != self.raftCurrentTerm:
            return []
        moved = []
        for node, ans in answers.items():
            granted = self._ha_allows.get(node)
            if granted is None or granted[0] != ans[0] or ans[1] > granted[1]:
                self._ha_allows[node] = ans
                moved.append(node)
        if moved:
            self._ha_allows_rev += 1
        return moved

    def ha_relay_for(self, node: Any) -> dict[str, list[int]] | None:
        """Leader, to voter `node`: every other voter's grant, when they moved since it
        last got them, for it to pass on (a voter we cannot reach, say a one-way cut,
        may hear it from another). A grant allows nothing later, whoever carries it:
        the leader counts it acknowledged when it is made (daemon/leader.py)."""
        name = str(getattr(node, "id", node))
        if node not in self._SyncObj__otherNodes or \
                self._ha_relays_sent.get(name) == self._ha_allows_rev:
            return None
        self._ha_relays_sent[name] = self._ha_allows_rev
        voters, stale = {str(n.id) for n in self._SyncObj__otherNodes}, raft_clock() - RELAY_AFTER_S
        return {v: list(a) for v, a in self._ha_allows.items() if v != name and v in voters
                and self._ha_heard.get(v, float("-inf")) < stale}  # only those we miss

    def ha_relay(self, relay: object) -> None:
        """Follower: pass each voter the grant the leader made it, when it moved."""
        if not isinstance(relay, dict) or len(relay) > MAX_PASSED_ON:
            return
        by_id = {str(n.id): n for n in self._SyncObj__otherNodes}
        for name, raw in relay.items():
            allow, node = answer_id(raw), by_id.get(name)
            if allow is None or node is None or self._ha_relayed.get(name) == allow:
                continue
            self._ha_relayed[name] = allow
            self._SyncObj__transport.send(node, {"type": RELAY, "allow": list(allow)})

    def ha_relayed(self, message: dict[str, Any]) -> None:
        """A grant of ours, passed on by another voter (ha_relay)."""
        self._ha_take_allow(answer_id(message.get("allow")))

    def ha_allow_for(self, node: Any) -> list[int] | None:
        granted = self._ha_allows.get(str(getattr(node, "id", node)))
        return list(granted) if granted is not None else None

    def _ha_take_carried(self, carrier: str, carried: dict[str, Any]) -> None:
        """Leader: answers of other voters that `carrier` passes on count as theirs,
        for grants only, when of the boot we know and newer (or of a voter we have no
        answer from yet)."""
        voters = {str(n.id) for n in self._SyncObj__otherNodes}
        for name, raw in carried.items():
            ans, known = answer_id(raw), self._ha_answers.get(name)
            if ans is None or name == carrier or name not in voters:
                continue
            if known is None or (known[0] == ans[0] and ans[1] > known[1]):
                self._ha_answers[name] = ans
