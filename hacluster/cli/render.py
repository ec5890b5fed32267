"""Human output for hactl: aligned tables and short blocks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h).upper() for h in headers]] + [["" if v is None else str(v) for v in r]
                                                    for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def freshness(f: dict[str, Any]) -> str:
    if f.get("is_leader"):
        return f"(read from the leader {f['peer']} at index {f['applied_index']})"
    lag = max(0, int(f.get("commit_index", 0)) - int(f.get("applied_index", 0)))
    quorum = "" if f.get("has_quorum") else ", NO QUORUM: may be stale"
    if not f.get("caught_up", True):
        quorum += ", NOT CAUGHT UP since start: may lack committed entries"
    return (f"(read from {f['peer']} at index {f['applied_index']}, {lag} behind its commit "
            f"index; leader {f.get('leader') or 'unknown'}{quorum})")


def lease(links: dict[str, float] | None) -> str:
    if not links:
        return "-"
    return " ".join(f"{link}:{age:.1f}s" for link, age in sorted(links.items()))


def hosts_table(hosts: list[dict[str, Any]]) -> str:
    rows = [(h["name"], h["state"], h["role"], f"{h['used_memory_mib']}/{h['memory_mib']}",
             h["vms"], lease(h.get("lease_links")), _bmc(h["bmc_ok"], h.get("fence_levels")),
             watchdog(h.get("watchdog")), storage(h.get("storage")), h["reason"][:60])
            for h in hosts]
    return table(rows, ["host", "state", "role", "mem MiB", "vms", "lease", "bmc", "watchdog",
                        "storage", "reason"])


def storage(s: dict[str, Any] | None) -> str:
    """"-" without heartbeats, "2 paths" when written, "active (1)" while a check of it
    says so."""
    if not s or not s.get("heartbeat_paths"):
        return "-"
    check = s.get("check") or {}
    if check.get("verdict", "none") != "none":
        return f"{check['verdict']} ({check['checks']})"
    count = len(s["heartbeat_paths"])
    return f"{count} path{'s' if count > 1 else ''}"


def watchdog(w: dict[str, Any] | None) -> str:
    """"device 10s" when armed, "command (off)" when configured but not armed."""
    if not w or w.get("kind", "none") == "none":
        return "-"
    return f"{w['kind']} {w['timeout_s']:g}s" if w.get("armed") else f"{w['kind']} (off)"


def _bmc(ok: bool | None, levels: list[str] | None = None) -> str:
    shown = "-" if ok is None else "ok" if ok else "FAIL"
    return f"{shown} ({len(levels)} levels)" if levels else shown


def vms_table(vms: list[dict[str, Any]]) -> str:
    rows = [(v["name"], v["state"], v["host"] or "-", v["desired"], v["ha"], v["priority"],
             v["memory_mib"], v["reason"][:60]) for v in vms]
    return table(rows, ["vm", "state", "host", "desired", "ha", "prio", "mem MiB", "reason"])


def fences_table(fences: list[dict[str, Any]]) -> str:
    rows = [(f["token"], f["host"], f"{f['attempt']}", f["action"], f["result"],
             f["confirmed_by"] or f["requested_by"], _when(f["requested_at"]),
             _checked(f.get("storage")), (f["result_evidence"] or f["reason"])[:60])
            for f in fences]
    return table(rows, ["token", "host", "try", "action", "result", "by", "when", "storage",
                        "evidence"])


def _checked(check: dict[str, Any] | None) -> str:
    """The storage check before an attempt ("quiet 3"; its reads: --json)."""
    if not check or check.get("verdict", "none") == "none":
        return "-"
    return f"{check['verdict']} {check['checks']}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def status(doc: dict[str, Any]) -> str:
    peer = doc["peer"]
    quorum = "yes" if peer["has_quorum"] else "NO"
    out = [f"leader {peer['leader'] or 'none'}  term {peer['term']}  quorum {quorum}  "
           f"(this peer: {peer['name']}, {peer['role']}, index {peer['applied_index']})"]
    if peer.get("halted"):
        out += halted(peer["name"], peer["halted"])
    elif not peer.get("caught_up", True):
        out.append(f"NOT CAUGHT UP: {peer['name']} has not heard from a leader since it "
                   "started; what follows may lack committed entries")
    if doc.get("cluster_maintenance"):
        out.append("CLUSTER MAINTENANCE ON: fencing is disabled")
    line = refused(peer.get("refused") or {})
    if line:
        out.append(line)
    out += [f"STORAGE HEARTBEAT {path}: {s['problem']}" for path, s in
            sorted((peer.get("storage_heartbeats") or {}).items()) if s.get("problem")]
    out += ["", hosts_table(doc["hosts"]), ""]
    by_state = doc["vms_by_state"]
    counts = ", ".join(f"{state} {len(names)}" for state, names in sorted(by_state.items()))
    out.append(f"VMs: {counts or 'none'}")
    for state in ("pending", "error", "fence", "recovery"):
        if by_state.get(state):
            out.append(f"  {state}: {', '.join(by_state[state])}")
    if doc["waiting"]:
        out += ["", "Waiting for an operator:"] + [f"  - {w}" for w in doc["waiting"]]
    return "\n".join(out)


def refused(channels: dict[str, dict[str, Any]]) -> str:
    """One line for the connections this peer turned away, per channel, by kind, and
    the latest source; empty when there were none."""
    parts = []
    for channel, summary in sorted(channels.items()):
        if not summary or not summary.get("total"):
            continue
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(
            summary.get("kinds", {}).items(), key=lambda item: -item[1]))
        text = f"{channel} {summary['total']} ({kinds})"
        recent = summary.get("recent") or []
        if recent:
            text += f" last from {recent[0]['source']} {_ago(recent[0]['age_s'])}"
        parts.append(text)
    return "refused: " + "; ".join(parts) if parts else ""


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def halted(name: str, report: dict[str, Any]) -> list[str]:
    """A peer whose Raft node halted (daemon/halt.py): why, and what it reads."""
    lines = [f"HALTED: {name} applies nothing more and exits with code {report['exit_code']}; "
             "what follows is its state before the halt", f"  {report['reason']}"]
    return lines + ([f"  {report['remedy']}"] if report.get("remedy") else [])


def block(title: str, doc: dict[str, Any]) -> str:
    width = max((len(k) for k in doc), default=0)
    lines = [title]
    for key, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        if key == "xml":
            value = f"<{len(str(value))} bytes; hactl --json vm show to see it>"
        lines.append(f"  {key.ljust(width)}  {value}")
    return "\n".join(lines)


def event_line(e: dict[str, Any]) -> str:
    subject = f" {e['subject']}" if e["subject"] else ""
    line = f"[{e['index']}] {e['kind']}{subject}: {e['message']}"
    if "time" not in e:  # an event as a write returns it
        return line
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
    who = f" (by {e['origin']})" if e.get("origin") and not e.get("local") else ""
    return f"{when}.{int(e['time'] % 1 * 1000):03d} {line}{who}"


def history_status(h: dict[str, Any]) -> str:
    state = f"NOT ON DISK: {h['error']}" if h["error"] else "on disk"
    lines = [f"history in {h['directory']}: {state}",
             f"  {h['bytes']} bytes in {h['segments']} segment(s), at most {h['max_bytes']} "
             f"bytes and {h['max_age_s'] / 86400:g} days",
             f"  damaged lines skipped: {h['damaged_lines']}, records dropped: {h['dropped']}"]
    lines += [f"  found on open: {p}" for p in h["problems"]]
    return "\n".join(lines)
