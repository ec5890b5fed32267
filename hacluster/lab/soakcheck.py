"""The soak's judge: pure functions over recorded evidence, independent of the
cluster's own state. It reads what the observer saw in every host's libvirtd,
the BMCs' power logs, the nemesis's own record of its faults, a witness of
which peer processes were alive, and the peers' state only at the end.

Rules (each violation carries its evidence: times, hosts, VMs, log lines):
- two-copies: no VM runs on two powered hosts at the same instant. A VM is
  *certainly* running on a host from the end of the look that first saw it
  there to the start of the last look that still saw it.
- start-before-release: a VM whose host lost power starts elsewhere only after
  that power-off completed (BMC log) and, when nobody could read that BMC (its
  chassis died or the BMC was failing), only after an operator confirmed or,
  on a host with a watchdog, once that watchdog had surely reset it (its last
  feed, as the watchdog saw it, plus its timeout), whichever came first.
- fence-cap: BMC-logged IPMI power-offs never exceed the cap in any window.
- false-fence: an IPMI power-off, or a watchdog's reset, of a host whose peer
  was alive, not taken down or paused by a fault, and reachable from a majority
  of the voters over at least one link (every fault's drops considered), for
  the whole grace before it (a fence decided during a fault may run a little
  after its heal; a watchdog resets up to its timeout after its host gave up).
- recovery: after each heal, every HA VM runs again (exactly once) within the
  bound, when the powered hosts have room for all of them; for a fault the
  cluster must do without (chassis death with a watchdog), within the bound of
  the fault's start, while it lasts. An outage that waited for an operator's
  confirm (chassis death without a watchdog) is timed from the confirm; the
  wait is listed, it is no violation.
- final: every peer holds the same state digest at the same applied index;
  no VM, setting or fence record is lost (fence records are read from a peer
  after each fault settled: every one must still be there at the end).
- finding (not a violation): an IPMI power-off that no completed fence record
  accounts for.
- lab: a power change whose hook failed (the simulated host did not really
  lose or regain power) fails the run: its evidence would prove nothing.

All times are time.monotonic() of the machine that ran the lab.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable
from typing import Any

from hacluster.lab.nemesis.base import FaultRecord
from hacluster.lab.soakevidence import (
    Evidence,
    Power,
    Recovery,
    Seen,
    Verdict,
    Violation,
)

_BMC_UNREADABLE = ("chassis-death", "bmc-unreachable", "bmc-frozen", "bmc-reject-credentials")


Run = tuple[float, float, Seen, "Seen | None"]  # certainly running from, to; start, stop seen
Runs = dict[tuple[str, str], list[Run]]  # (vm, host) -> its runs there


# ---------------------------------------------------------------- running intervals

def running_intervals(ev: Evidence) -> Runs:
    """(vm, host) -> intervals during which the VM certainly ran there:
    (from, to, the sighting that saw it start, the one that saw it stop)."""
    out: Runs = {}
    open_: dict[tuple[str, str], Seen] = {}
    for s in sorted(ev.sightings, key=lambda s: s.at):
        key = (s.vm, s.host)
        if s.running:
            open_.setdefault(key, s)
        elif key in open_:
            start = open_.pop(key)
            out.setdefault(key, []).append((start.by, s.after, start, s))
    for key, start in open_.items():
        out.setdefault(key, []).append((start.by, ev.ended_at, start, None))
    return out


def _powered(ev: Evidence, host: str, at: float) -> bool:
    """Was the host certainly powered at `at` (its last change before was on)?"""
    state = True
    for p in sorted(ev.power, key=lambda p: p.at):
        if p.host != host:
            continue
        if (p.on and p.at > at) or (not p.on and p.began > at):
            break
        state = p.on
    return state


def two_copies(ev: Evidence) -> list[Violation]:
    intervals = running_intervals(ev)
    by_vm: dict[str, list[tuple[str, float, float, Seen, Seen | None]]] = {}
    for (vm, host), runs in intervals.items():
        by_vm.setdefault(vm, []).extend((host, a, b, s, e) for a, b, s, e in runs if b > a)
    found = []
    for vm, spans in sorted(by_vm.items()):
        spans.sort(key=lambda x: x[1])
        for i, (h1, a1, b1, s1, e1) in enumerate(spans):
            for h2, a2, b2, s2, e2 in spans[i + 1:]:
                if a2 >= b1:
                    break
                start, end = max(a1, a2), min(b1, b2)
                if h1 == h2 or end <= start:
                    continue
                if not (_powered(ev, h1, start) and _powered(ev, h2, start)):
                    continue
                lines = [x.line() for x in (s1, e1, s2, e2) if x is not None]
                found.append(Violation(
                    "two-copies", start, (h1, h2), (vm,),
                    f"{vm} ran on {h1} and {h2} at once from {start:.3f} to {end:.3f}",
                    tuple(lines)))
    return found


# ---------------------------------------------------------------- starts elsewhere

def _active(fault: FaultRecord, start: float, end: float, grace_s: float = 0.0) -> bool:
    """Did the fault last at some moment of [start, end] (its end stretched by grace)?"""
    healed = fault.healed_at or float("inf")
    return fault.applied_at <= end and healed + grace_s >= start


def _previous_run(intervals: Runs, start: Seen) -> Run | None:
    """The VM's run that began last before `start` was seen, if on another host (a
    restart in place, after libvirtd lost its domains say, starts nothing elsewhere)."""
    runs = [(host, r) for (vm, host), spans in intervals.items() if vm == start.vm
            for r in spans if r[2].at < start.at]
    host, run = max(runs, key=lambda hr: hr[1][2].at, default=(start.host, None))
    return run if host != start.host else None


def start_before_release(ev: Evidence) -> list[Violation]:
    found = []
    offs = sorted((p for p in ev.power if not p.on), key=lambda p: p.began)
    confirms = sorted((at, host) for f in ev.faults for at, host in f.confirms)
    intervals = running_intervals(ev)
    for s in sorted(ev.sightings, key=lambda s: s.at):
        prev = _previous_run(intervals, s) if s.running else None
        if prev is None or prev[3] is None:
            continue  # its first start, or it still runs there: two-copies judges that
        gone = prev[3]
        # did the VM's previous host lose power around the look that found it gone?
        off = next((p for p in offs if p.host == gone.host
                    and gone.after - 1.0 <= p.began <= gone.by), None)
        if off is None:
            continue  # it stopped there while the host ran (moved, stopped, crashed)
        # nobody could read its power then (not an IPMI power-off: that one read it)
        unreadable = [f for f in ev.faults if f.kind in _BMC_UNREADABLE
                      and gone.host in f.hosts and _active(f, off.began, off.at)
                      and not off.cause.startswith("ipmi")]
        release = off.at
        if unreadable:
            confirm = next((at for at, host in confirms if host == gone.host
                            and at >= off.began), None)
            release = min(confirm if confirm is not None else float("inf"),
                          max(off.at, watchdog_reset_by(ev, gone.host, off.at)))
        if s.by <= release:
            why = ("an operator confirmed it or its watchdog surely reset it" if unreadable
                   else "its power-off completed")
            found.append(Violation(
                "start-before-release", s.by, (gone.host, s.host), (s.vm,),
                f"{s.vm} of {gone.host} started on {s.host} by {s.by:.3f}, before {why} "
                f"({'never' if release == float('inf') else f'{release:.3f}'})",
                (prev[2].line(), gone.line(), off.line(), s.line(),
                 *[f"fault #{f.index} {f.kind}: {f.description}" for f in unreadable])))
    return found


def watchdog_reset_by(ev: Evidence, host: str, at: float) -> float:
    """When the host's watchdog had surely reset it, counting from its last feed
    before `at` (inf: no watchdog, or never fed, i.e. never armed)."""
    feeds = ev.feeds.get(host, [])
    i = bisect.bisect_right(feeds, at)
    if ev.watchdog_timeout_s <= 0 or i == 0:
        return float("inf")
    return feeds[i - 1] + ev.watchdog_timeout_s


# ---------------------------------------------------------------- the cap

def fence_cap(ev: Evidence) -> list[Violation]:
    fences = sorted((p for p in ev.power if not p.on and p.cause.startswith("ipmi")),
                    key=lambda p: p.at)
    times = [p.at for p in fences]
    found = []
    for i, first in enumerate(fences):
        inside = fences[i:bisect.bisect_left(times, first.at + ev.fence_window_s)]
        if len(inside) > ev.fence_cap:
            found.append(Violation(
                "fence-cap", first.at, tuple(sorted({p.host for p in inside})), (),
                f"{len(inside)} IPMI power-offs within {ev.fence_window_s:g}s from "
                f"{first.at:.3f} (cap {ev.fence_cap})", tuple(p.line() for p in inside)))
            break  # one is enough: the later windows overlap it
    return found


# ---------------------------------------------------------------- false fences

def _peer_down(ev: Evidence, host: str, start: float, end: float) -> bool:
    """Was the host's peer process dead at some moment of [start, end]?"""
    alive = True
    for a in sorted((a for a in ev.liveness if a.host == host), key=lambda a: a.at):
        if a.at > end:
            break
        if a.at <= start:
            alive = a.alive
        elif not a.alive:
            return True
    return not alive


def unreachable(ev: Evidence, host: str, start: float, end: float) -> list[str]:
    """Why `host` reached fewer than a majority of the voters (itself counted) at
    some moment of [start, end], if it did: the voters the faults' complete drops
    cut it from, and the voters that could not answer anyone (powered off, peer
    dead, or taken down or paused by a fault). Empty: it reached a majority."""
    majority = len(ev.voters) // 2 + 1
    active = [f for f in ev.faults if _active(f, start, end)]
    cut = {d[1] for f in active for d in f.drops if d[0] == host and d[2] >= 100}
    gone = {v for v in ev.voters if v != host and v not in cut and (
        _off_during(ev, v, start, end) or _peer_down(ev, v, start, end)
        or any(v in f.down for f in active))}
    reach = 1 + sum(1 for v in ev.voters if v != host and v not in cut | gone)
    if reach >= majority:
        return []
    return ([f"{host} cut from {', '.join(sorted(cut))}"] if cut else []) + \
        ([f"down meanwhile: {', '.join(sorted(gone))}"] if gone else [])


def _off_during(ev: Evidence, host: str, start: float, end: float) -> bool:
    """Was the host without power at some moment of [start, end]?"""
    return not _powered(ev, host, start) or any(
        p.host == host and not p.on and start <= p.began <= end for p in ev.power)


def _reset(p: Power) -> str:
    """Who powered the host off, if it was the cluster: "IPMI", "its watchdog" or ""."""
    if p.on:
        return ""
    return "IPMI" if p.cause.startswith("ipmi") else "its watchdog" if p.cause == "watchdog" \
        else ""


def false_fences(ev: Evidence) -> list[Violation]:
    found = []
    for p in sorted(ev.power, key=lambda p: p.at):
        by = _reset(p)
        if not by:
            continue
        # a watchdog resets its host up to its timeout after the host gave up
        grace = ev.fence_grace_s + (ev.watchdog_timeout_s if by != "IPMI" else 0.0)
        start, end = p.began - grace, p.began
        took_down = [f for f in ev.faults if p.host in f.down
                     and _active(f, start, end, grace)]
        if took_down or _peer_down(ev, p.host, start, end):
            continue
        if unreachable(ev, p.host, start, end):
            continue
        around = [f"fault #{f.index} {f.kind} [{f.applied_at:.3f}, {f.healed_at:.3f}]: "
                  f"{f.description}" for f in ev.faults
                  if _active(f, start - 30, end + 5)]
        found.append(Violation(
            "false-fence", p.began, (p.host,), (),
            f"{p.host} powered off by {by} at {p.began:.3f} while its peer ran, not paused, "
            "and reached a majority", (p.line(), *around)))
    return found


# ---------------------------------------------------------------- recovery

def _all_once_timeline(ev: Evidence) -> list[tuple[float, bool, tuple[str, ...]]]:
    """(time, every VM running exactly once?, VMs missing or doubled) at each change."""
    running: dict[str, set[str]] = {vm: set() for vm in ev.vms}
    out = []
    events: list[tuple[float, int, Any]] = [(s.at, 1, s) for s in ev.sightings]
    events += [(p.at, 0, p) for p in ev.power if not p.on]
    for at, _, item in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(item, Power):
            for hosts in running.values():
                hosts.discard(item.host)
        elif item.vm in running:
            (running[item.vm].add if item.running else running[item.vm].discard)(item.host)
        wrong = tuple(sorted(vm for vm, hosts in running.items() if len(hosts) != 1))
        out.append((at, not wrong, wrong))
    return out


def _state_at(timeline: list[tuple[float, bool, tuple[str, ...]]],
              at: float) -> tuple[bool, tuple[str, ...]]:
    times = [t for t, _, _ in timeline]
    i = bisect.bisect_right(times, at) - 1
    return (timeline[i][1], timeline[i][2]) if i >= 0 else (False, ())


def _first(timeline: list[tuple[float, bool, tuple[str, ...]]], after: float,
           ok: bool) -> float | None:
    now_ok, _ = _state_at(timeline, after)
    if now_ok == ok:
        return after
    return next((t for t, good, _ in timeline if t > after and good == ok), None)


def _powered_hosts(ev: Evidence, at: float) -> int:
    return sum(1 for h in ev.hosts if _powered(ev, h, at))


def recovery(ev: Evidence) -> tuple[list[Violation], list[Recovery]]:
    timeline = _all_once_timeline(ev)
    found, recoveries = [], []
    starts = sorted(f.applied_at for f in ev.faults)
    for f in ev.faults:
        if not f.healed_at:
            continue
        limit = f.healed_at + ev.recovery_bound_s
        settled = _first(timeline, f.healed_at, True)
        settle = settled - f.healed_at if settled is not None and settled <= limit else None
        # an outage belongs to this fault if it began before the next fault did
        following = next((t for t in starts if t > f.applied_at), float("inf"))
        lost = _first(timeline, f.applied_at, False)
        outage = back = waited = None
        if lost is not None and lost <= min(limit, following):
            back = _first(timeline, lost, True)
            confirm = min((at for at, _ in f.confirms if at >= lost), default=None)
            if back is not None and confirm is not None and confirm < back:
                waited = confirm - lost  # the operator's share, not the cluster's
            outage = back - lost - (waited or 0.0) if back is not None else None
        recoveries.append(Recovery(f.index, f.kind, outage, settle, waited))
        if f.recover_while and lost is not None and lost <= following:
            due = f.applied_at + ev.recovery_bound_s
            if (back is None or back > due) and due <= ev.ended_at and _room(ev, due):
                _, wrong = _state_at(timeline, due)
                found.append(_late(f, due, wrong, f"{ev.recovery_bound_s:g}s after fault "
                                   f"#{f.index} ({f.kind}) began, which needs no heal"))
        if settle is None and limit <= ev.ended_at and _room(ev, limit):
            _, wrong = _state_at(timeline, limit)
            found.append(_late(f, limit, wrong, f"{ev.recovery_bound_s:g}s after fault "
                               f"#{f.index} ({f.kind}) healed"))
    return found, recoveries


def _room(ev: Evidence, at: float) -> bool:
    """Do the hosts powered at `at` have room for every VM?"""
    return _powered_hosts(ev, at) * ev.vms_per_host >= len(ev.vms)


def _late(f: FaultRecord, at: float, wrong: tuple[str, ...], when: str) -> Violation:
    return Violation("recovery", at, tuple(f.hosts), wrong[:20],
                     f"{len(wrong)} HA VM(s) not running exactly once {when}",
                     (f"fault #{f.index} {f.kind} [{f.applied_at:.3f}, {f.healed_at:.3f}]: "
                      f"{f.description}",))


# ---------------------------------------------------------------- the end

def final_state(ev: Evidence) -> list[Violation]:
    if not ev.final:
        return [Violation("final", ev.ended_at, (), (), "no peer answered at the end", ())]
    found = []
    marks = {(p.applied_index, p.digest) for p in ev.final}
    if len(marks) > 1:
        found.append(Violation(
            "final", ev.ended_at, tuple(p.host for p in ev.final), (),
            "the peers disagree on the state at the end",
            tuple(f"{p.host}: applied {p.applied_index} digest {p.digest[:16]}"
                  for p in ev.final)))
    for peer in ev.final:
        missing = sorted(set(ev.vms) - set(peer.vms))
        if missing:
            found.append(Violation("lost", ev.ended_at, (peer.host,), tuple(missing),
                                   f"{peer.host} lost {len(missing)} VM definition(s)",
                                   (f"missing: {', '.join(missing[:20])}",)))
        changed = {k: (v, peer.settings.get(k)) for k, v in ev.expected_settings.items()
                   if peer.settings.get(k) != v}
        if changed:
            found.append(Violation("lost", ev.ended_at, (peer.host,), (),
                                   f"{peer.host} lost settings",
                                   tuple(f"{k}: set {a!r}, holds {b!r}"
                                         for k, (a, b) in sorted(changed.items()))))
        held = {(token, host) for token, host, _ in peer.fences}
        gone = sorted({(t, h, at) for at, t, h in ev.ledger_seen if (t, h) not in held})
        if gone:
            found.append(Violation(
                "lost", ev.ended_at, (peer.host,), (),
                f"{peer.host}'s fence ledger lost {len(gone)} record(s) seen during the run",
                tuple(f"token {t} (fence of {h}) seen at {at:.3f}" for t, h, at in gone[:20])))
    return found


def unrecorded_fences(ev: Evidence) -> list[Violation]:
    """IPMI power-offs the BMC logged that no completed fence record accounts for
    (the attempt that ran was recorded as superseded or cancelled). Not a safety
    violation (the host is off, its VMs are not released by it): a finding."""
    found: list[Violation] = []
    if not ev.final:
        return found
    peer = ev.final[0]
    for host in sorted({p.host for p in ev.power}):
        offs = [p for p in ev.power if p.host == host and not p.on
                and p.cause.startswith("ipmi")]
        done = [f for f in peer.fences if f[1] == host and f[2] in ("off", "already-off")]
        if len(done) < len(offs):
            found.append(Violation(
                "unrecorded-fence", offs[-1].at, (host,), (),
                f"{host}: its BMC logged {len(offs)} IPMI power-off(s), the fence ledger "
                f"{len(done)} completed fence(s)",
                tuple([p.line() for p in offs] + [f"ledger: {f}" for f in peer.fences
                                                  if f[1] == host])))
    return found


# ---------------------------------------------------------------- peers that keep dying

CRASH_LOOP_DEATHS = 4  # unexplained deaths of one host's peer ...
CRASH_LOOP_WINDOW_S = 120.0  # ... within this long: a crash loop


def _death_explained(ev: Evidence, host: str, at: float) -> bool:
    """A fault took the peer down (killed, paused, its disk made unusable), or its
    host lost power around then (a fence's power-off kills the peer)."""
    if any(host in f.down and _active(f, at, at, ev.fence_grace_s) for f in ev.faults):
        return True
    return any(p.host == host and not p.on and p.began - 2.0 <= at <= p.at + 2.0
               for p in ev.power) or not _powered(ev, host, at)


def crash_loops(ev: Evidence) -> list[Violation]:
    """A peer that dies again and again on a powered host, no fault to blame: the
    cluster runs a voter short for as long (systemd would restart it forever)."""
    found = []
    for host in ev.hosts:
        alive, deaths = True, []
        for a in sorted((a for a in ev.liveness if a.host == host), key=lambda a: a.at):
            if alive and not a.alive and not _death_explained(ev, host, a.at):
                deaths.append(a.at)
            alive = a.alive
        for i in range(len(deaths) - CRASH_LOOP_DEATHS + 1):
            burst = deaths[i:i + CRASH_LOOP_DEATHS]
            if burst[-1] - burst[0] <= CRASH_LOOP_WINDOW_S:
                found.append(Violation(
                    "crash-loop", burst[0], (host,), (),
                    f"{host}'s peer died {len(burst)} times in {burst[-1] - burst[0]:.0f}s "
                    "with its host powered and no fault taking it down",
                    tuple(f"peer of {host} gone at {t:.3f}" for t in burst)))
                break
    return found


# ---------------------------------------------------------------- the lab itself

def lab_errors(ev: Evidence) -> list[Violation]:
    """A power change whose hook failed did not power anything off or on: the
    run proves nothing about it (a lab fault, reported so it is not missed)."""
    return [Violation("lab", p.at, (p.host,), (), f"{p.host}'s power hook failed: the "
                      "simulated host's processes did not follow its power", (p.line(),))
            for p in ev.power if p.detail not in ("command exit 0", "no command")]


# ---------------------------------------------------------------- all together

def judge(ev: Evidence) -> Verdict:
    late, recoveries = recovery(ev)
    violations = (two_copies(ev) + start_before_release(ev) + fence_cap(ev)
                  + false_fences(ev) + late + final_state(ev) + crash_loops(ev)
                  + lab_errors(ev))
    return Verdict(sorted(violations, key=lambda v: v.at), recoveries, unrecorded_fences(ev))


def percentile(values: Iterable[float], share: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def recovery_stats(recoveries: list[Recovery]) -> dict[str, Any]:
    """Median and p95 of the outages, overall and by fault kind."""
    def stats(values: list[float]) -> dict[str, Any]:
        return {"count": len(values),
                "median_s": round(statistics.median(values), 3) if values else None,
                "p95_s": round(p, 3) if (p := percentile(values, 0.95)) is not None else None}

    outages = [r.outage_s for r in recoveries if r.outage_s is not None]
    kinds = sorted({r.kind for r in recoveries})
    return {"all": stats(outages),
            "by_kind": {k: stats([r.outage_s for r in recoveries
                                  if r.kind == k and r.outage_s is not None]) for k in kinds}}
