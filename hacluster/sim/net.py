"""SimNet: a deterministic in-memory network of named hosts and links for the simulator.

Every host has named links ("mgmt", "backend", ...). A message is sent on a *channel*
("raft", "lease", anything) from one host to another over one link (or the first link
that currently passes, in sorted order) and is delivered after a delay drawn from the
directed pair's delay range. Time is whatever the caller passes in; randomness comes only
from the `random.Random` given to the constructor; ties are broken by a send sequence
number, so the same seed and the same calls give the same deliveries.

Faults (all may change at any time and are judged twice: when a message is sent and when
it is due, so a message in flight when a cable is pulled is lost):

* reachability per *directed* pair, optionally per link (one-way cuts), a host's link
  going down (`cut_link`), a whole host isolated, partitions into groups, healing;
* per directed pair: loss probability, delay range, duplication probability. Independent
  delays reorder messages; a FIFO channel (`set_fifo`) keeps each pair's order, like TCP.

Whether a host is powered or its process alive is not the network's business: the caller
decides what a down host does with a delivery. For a paused receiver (SIGSTOP), `hold`
keeps its deliveries aside and `release` hands them over in their original order when it
resumes (the kernel's socket buffers); `discard` drops what is held and in flight towards
a host (a crash resets its connections).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass

LAN_DELAY_S = (0.0005, 0.002)
_NEVER = float("inf")


@dataclass(slots=True)
class Delivery:
    """One message arriving at `dst` at time `at` (seq: global send order, tie-breaker).
    Not frozen for speed; never changed once made."""

    at: float
    seq: int
    src: str
    dst: str
    channel: str
    link: str
    payload: object


@dataclass(frozen=True, slots=True)
class PathFaults:
    """Quality of one directed pair: loss and duplication probabilities, delay range."""

    loss: float = 0.0
    delay: tuple[float, float] = LAN_DELAY_S
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.delay
        if not 0.0 <= self.loss <= 1.0 or not 0.0 <= self.duplicate <= 1.0:
            raise ValueError(f"probabilities must be within [0, 1]: {self}")
        if not 0.0 <= lo <= hi:
            raise ValueError(f"delay must be a range 0 <= lo <= hi: {self.delay}")


class SimNet:
    """See the module docstring."""

    def __init__(self, rng: random.Random, defaults: PathFaults | None = None) -> None:
        self._rng = rng
        self._links: dict[str, tuple[str, ...]] = {}
        self._default = defaults if defaults is not None else PathFaults()
        self._paths: dict[tuple[str, str], PathFaults] = {}
        # reachability faults
        self._cut_pairs: set[tuple[str, str]] = set()  # directed, every link
        self._cut_pair_links: set[tuple[str, str, str]] = set()  # directed, one link
        self._down_links: dict[str, set[str]] = {}  # per host: its links that are down
        self._routes: dict[tuple[str, str, str | None], str | None] = {}  # cache
        # traffic
        self._queues: dict[str, list[tuple[float, int, Delivery]]] = {}
        self._fifo: set[str] = set()
        self._reserved: set[str] = set()
        self._fifo_last: dict[tuple[str, str, str], float] = {}
        self._holds: set[tuple[str, str | None]] = set()  # (host, channel or None = all)
        self._held: dict[str, list[Delivery]] = {}
        self._received: set[int] = set()  # seqs of released messages (no route check)
        self._seq = 0
        self.stats: dict[str, int] = {
            "sent": 0, "unroutable": 0, "lost": 0, "duplicated": 0, "cut_in_flight": 0,
            "delivered": 0, "held": 0, "discarded": 0,
        }

    # ------------------------------------------------------------ topology

    def add_host(self, host: str, links: Iterable[str] = ("mgmt",)) -> None:
        names = tuple(sorted(set(links)))
        if not names:
            raise ValueError(f"host {host!r} needs at least one link")
        if host in self._links:
            raise ValueError(f"host {host!r} already exists")
        self._links[host] = names
        self._down_links[host] = set()
        self._held[host] = []
        self._routes.clear()

    def hosts(self) -> list[str]:
        return sorted(self._links)

    def links_of(self, host: str) -> tuple[str, ...]:
        return self._links[host]

    def links_between(self, a: str, b: str) -> list[str]:
        """The links both hosts are attached to (sorted), faults or not."""
        lb = self._links[b]
        return [ln for ln in self._links[a] if ln in lb]

    def open_links(self, src: str, dst: str) -> list[str]:
        """The links on which src -> dst currently passes."""
        return [ln for ln in self.links_between(src, dst) if self.reachable(src, dst, ln)]

    # ------------------------------------------------------------ reachability

    def reachable(self, src: str, dst: str, link: str | None = None) -> bool:
        """Whether a message src -> dst (on `link`, or on any link) would pass now."""
        return self._route(src, dst, link) is not None

    def _route(self, src: str, dst: str, link: str | None) -> str | None:
        key = (src, dst, link)
        try:
            return self._routes[key]
        except KeyError:
            route = self._compute_route(src, dst, link)
            self._routes[key] = route
            return route

    def _compute_route(self, src: str, dst: str, link: str | None) -> str | None:
        if src not in self._links or dst not in self._links:
            raise KeyError(f"unknown host in {src!r} -> {dst!r}")
        candidates = self.links_between(src, dst) if link is None else [link]
        if src == dst:
            return candidates[0] if candidates else None
        if (src, dst) in self._cut_pairs:
            return None
        down_src, down_dst = self._down_links[src], self._down_links[dst]
        for ln in candidates:
            if (
                ln in self._links[src]
                and ln in self._links[dst]
                and ln not in down_src
                and ln not in down_dst
                and (src, dst, ln) not in self._cut_pair_links
            ):
                return ln
        return None

    def _changed(self) -> None:
        self._routes.clear()

    def cut(self, src: str, dst: str, link: str | None = None, both: bool = False) -> None:
        """Drop src -> dst (one way unless `both`), on one link or on every link."""
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            if link is None:
                self._cut_pairs.add((a, b))
            else:
                self._cut_pair_links.add((a, b, link))
        self._changed()

    def restore(self, src: str, dst: str, link: str | None = None, both: bool = False) -> None:
        """Undo `cut`: link None removes every cut of the pair (all-link and per-link);
        a link removes only that link's cut (an all-link cut of the pair stays)."""
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            if link is None:
                self._cut_pairs.discard((a, b))
                self._cut_pair_links = {c for c in self._cut_pair_links if c[:2] != (a, b)}
            else:
                self._cut_pair_links.discard((a, b, link))
        self._changed()

    def cut_link(self, host: str, link: str) -> None:
        """One link of one host goes down (both directions, every peer on it)."""
        if link not in self._links[host]:
            raise KeyError(f"host {host!r} has no link {link!r}")
        self._down_links[host].add(link)
        self._changed()

    def restore_link(self, host: str, link: str) -> None:
        """Undo `cut_link`."""
        self._down_links[host].discard(link)
        self._changed()

    def isolate(self, host: str) -> None:
        """Every link of the host goes down."""
        self._down_links[host] = set(self._links[host])
        self._changed()

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every pair of hosts in different groups (added to the current faults).
        Hosts named in no group form one more group together."""
        group_of: dict[str, int] = {}
        for number, group in enumerate(groups):
            for host in group:
                if host not in self._links:
                    raise KeyError(f"unknown host {host!r}")
                group_of[host] = number
        rest = len(groups)
        hosts = self.hosts()
        for a in hosts:
            for b in hosts:
                if a != b and group_of.get(a, rest) != group_of.get(b, rest):
                    self._cut_pairs.add((a, b))
        self._changed()

    def heal(self, host: str) -> None:
        """Remove every reachability fault touching the host (its links, its pair cuts)."""
        self._down_links[host] = set()
        self._cut_pairs = {p for p in self._cut_pairs if host not in p}
        self._cut_pair_links = {p for p in self._cut_pair_links if host not in p[:2]}
        self._changed()

    def heal_all(self, quality: bool = False) -> None:
        """Remove every reachability fault; with `quality`, also every loss/delay/dup
        setting (back to the defaults given to the constructor)."""
        self._cut_pairs.clear()
        self._cut_pair_links.clear()
        for host in self._down_links:
            self._down_links[host] = set()
        if quality:
            self._paths.clear()
        self._changed()

    # ------------------------------------------------------------ path quality

    def set_path(
        self,
        src: str,
        dst: str,
        loss: float | None = None,
        delay: tuple[float, float] | None = None,
        duplicate: float | None = None,
        both: bool = False,
    ) -> None:
        """Change the loss / delay / duplication of src -> dst (None: keep as is)."""
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            old = self.path(a, b)
            self._paths[(a, b)] = PathFaults(
                old.loss if loss is None else loss,
                old.delay if delay is None else delay,
                old.duplicate if duplicate is None else duplicate,
            )

    def path(self, src: str, dst: str) -> PathFaults:
        return self._paths.get((src, dst), self._default)

    def set_fifo(self, channel: str, fifo: bool = True) -> None:
        """A FIFO channel keeps the order of each (src, dst) pair, like a TCP stream."""
        if fifo:
            self._fifo.add(channel)
        else:
            self._fifo.discard(channel)

    # ------------------------------------------------------------ sending

    def send(
        self,
        now: float,
        src: str,
        dst: str,
        channel: str,
        payload: object,
        link: str | None = None,
    ) -> bool:
        """Put a message on the wire; False if no link passes (or it was lost at once).
        Reachability is judged again when it is due."""
        stats = self.stats
        stats["sent"] += 1
        route = self._route(src, dst, link)
        if route is None:
            stats["unroutable"] += 1
            return False
        faults = self._paths.get((src, dst), self._default)
        rng = self._rng
        if faults.loss and rng.random() < faults.loss:
            stats["lost"] += 1
            return False
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            stats["duplicated"] += 1
            copies = 2
        lo, hi = faults.delay
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = []
        for _ in range(copies):
            at = now + lo + (hi - lo) * rng.random() if hi > lo else now + lo
            if channel in self._fifo:
                key = (src, dst, channel)
                at = max(at, self._fifo_last.get(key, at))
                self._fifo_last[key] = at
            self._seq += 1
            heapq.heappush(queue, (at, self._seq, Delivery(at, self._seq, src, dst, channel,
                                                           route, payload)))
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _push(self, d: Delivery) -> None:
        queue = self._queues.get(d.channel)
        if queue is None:
            queue = self._queues[d.channel] = []
        heapq.heappush(queue, (d.at, d.seq, d))

    # ------------------------------------------------------------ receiving

    def next_time(self, channel: str) -> float:
        """When the next message of `channel` is due (inf: none in flight)."""
        queue = self._queues.get(channel)
        return queue[0][0] if queue else _NEVER

    def pop(self, now: float, channel: str) -> Delivery | None:
        """The next message of `channel` due by `now` that still gets through, or None
        (messages found cut or held on the way are set aside)."""
        queue = self._queues.get(channel)
        while queue and queue[0][0] <= now:
            d = heapq.heappop(queue)[2]
            if self._accept(d):
                return d
        return None

    def reserve(self, channel: str) -> None:
        """A channel with its own consumer (RaftCluster takes "raft"): due() without
        channels leaves it alone; name it explicitly to read it."""
        self._reserved.add(channel)

    def due(self, now: float, channels: Iterable[str] | None = None) -> list[Delivery]:
        """Every message due by `now` on `channels` (default: every channel not
        reserved), in (time, seq) order."""
        if channels is None:
            names = sorted(c for c in self._queues if c not in self._reserved)
        else:
            names = sorted(set(channels))
        out: list[Delivery] = []
        for channel in names:
            while (d := self.pop(now, channel)) is not None:
                out.append(d)
        out.sort(key=lambda d: (d.at, d.seq))
        return out

    def _accept(self, d: Delivery) -> bool:
        # A released message was already in the receiver's kernel: no route check again.
        received = bool(self._received) and d.seq in self._received
        if received:
            self._received.discard(d.seq)
        elif self._route(d.src, d.dst, d.link) is None:
            self.stats["cut_in_flight"] += 1
            return False
        if self._holds and self._is_held(d.dst, d.channel):
            self.stats["held"] += 1
            self._held[d.dst].append(d)
            return False
        self.stats["delivered"] += 1
        return True

    def in_flight(self, channel: str | None = None) -> int:
        if channel is None:
            return sum(len(q) for q in self._queues.values())
        return len(self._queues.get(channel, ()))

    # ------------------------------------------------------------ paused / crashed receivers

    def _is_held(self, host: str, channel: str) -> bool:
        return (host, None) in self._holds or (host, channel) in self._holds

    def hold(self, host: str, channel: str | None = None) -> None:
        """Keep deliveries to `host` (on `channel`, or all) aside until `release`."""
        self._holds.add((host, channel))

    def release(self, now: float, host: str, channel: str | None = None) -> None:
        """Stop holding; what was held becomes due at `now`, in its original order.
        (Already in the receiver's kernel, it needs no route any more; a message on a
        channel that is still held through another hold stays held.)"""
        self._holds.discard((host, channel))
        keep: list[Delivery] = []
        for d in sorted(self._held[host], key=lambda d: (d.at, d.seq)):
            if (channel is not None and d.channel != channel) or self._is_held(host, d.channel):
                keep.append(d)
                continue
            again = Delivery(now, self._next_seq(), d.src, host, d.channel, d.link, d.payload)
            self._received.add(again.seq)
            self._push(again)
        self._held[host] = keep

    def discard(self, host: str, channel: str | None = None) -> int:
        """Drop what is held for and in flight to `host` (a crash resets its connections);
        returns how many messages were dropped."""
        dropped = 0
        keep = [d for d in self._held[host] if channel is not None and d.channel != channel]
        dropped += len(self._held[host]) - len(keep)
        self._held[host] = keep
        for name, queue in self._queues.items():
            if channel is not None and name != channel:
                continue
            kept = [item for item in queue if item[2].dst != host]
            for item in queue:
                if item[2].dst == host:
                    self._received.discard(item[2].seq)
            if len(kept) != len(queue):
                dropped += len(queue) - len(kept)
                heapq.heapify(kept)
                self._queues[name] = kept
        self.stats["discarded"] += dropped
        return dropped
