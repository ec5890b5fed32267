"""`hacluster soak`: random faults against a lab cluster, judged by witnesses
outside it (hacluster.lab.soak, hacluster.lab.soakcheck)."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from typing import Any

DESCRIPTION = """\
Build a lab cluster on this machine (a peer, a private libvirtd and an IPMI BMC
simulator per host, each host in a network namespace by default), define VMs, and
inject faults on a random schedule drawn from the seed, one at a time, each healed
after a random time: power loss, chassis death (host and BMC dark; an operator
confirms), SIGKILL and SIGSTOP of a peer and of the leader, SIGSTOP and restart of
a libvirtd, isolation of a host and of the leader, a minority|majority split,
one-way cuts (the leader's too), packet loss between chosen hosts, BMCs slow,
unreachable, frozen or rejecting credentials, a full or read-only data directory,
CPU starvation, a peer restarted from an old copy of its journal.

Without --watchdog a dead chassis cannot be proven off: the cluster waits for an
operator, and the soak (as the operator) confirms once the cluster shows the host
fence-failed; each wait is listed, it is no violation. With --watchdog every host
has a (lab-emulated) watchdog that its peer feeds only while a leader acknowledges
it: nobody confirms anything, and the dead chassis's VMs must run elsewhere within
--recovery-bound of its death, while it is still dark.

After each heal the soak powers on what is off and starts peers that died, then
waits for every VM to run again. A checker that reads only the observer (libvirt
on every host, 20 Hz), the BMCs' power logs and the fault record (and the peers
at the end) judges the run: no VM on two powered hosts at once; no VM of a host
started elsewhere before that host's power-off (or, when its BMC could not be read,
an operator's confirm or its watchdog's certain reset); IPMI power-offs within the
cap; no false fence (a host powered off by IPMI or by its watchdog while its peer
ran, not paused, reaching a majority); every VM back within --recovery-bound
after each heal; no peer dying again and again on a powered host with no fault
to blame (a crash loop: 4 deaths within 2 minutes); at the end every peer with the
same state digest at the same index, no VM, setting or fence record lost.

Prints every fault with its times, every violation with its evidence, and the
recovery times by fault kind; with --json the last stdout line is one JSON object
(faults, violations, false_fences, recovery_median_s, recovery_p95_s, seed, ...).
Exit code 0: no violation; 1: violations (the lab's files are kept, the path is
printed); 2: bad arguments or the lab cannot run here. Needs root; everything the
lab creates (namespaces, nft tables, cgroups, mounts, processes) is removed."""

EPILOG = """\
examples:
  hacluster soak --hosts 5 --vms 40 --duration 10m --seed 7
  hacluster soak --duration 3m --seed 7 --profile fast --json
  hacluster soak --duration 30m --seed 7 --watchdog            # self-fencing (10 s / 10 s)
  hacluster soak --profile fast --watchdog 1.5:2.5 --kinds chassis-death,split
  hacluster soak --kinds loss --loss 30 --loss-hosts 5 --hold 60s --duration 5m  # loss tolerance
  hacluster soak --hosts 3 --vms 10 --duration 90s --isolation loopback
fault kinds: """


def parse_duration(text: str) -> float:
    """"90", "90s", "10m", "1h", "1m30s" -> seconds."""
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?",
                         text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 1h)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"duration must be > 0: {text!r}")
    return total


def parse_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a percent range: {text!r} (e.g. 10-50, 30)")
    low = int(match.group(1))
    return low, int(match.group(2) or low)


def _watchdogs() -> dict[str, tuple[float, float]]:
    from hacluster.lab.soak import WATCHDOGS

    return WATCHDOGS


def parse_watchdog(text: str | None, profile: str) -> tuple[float, float] | None:
    """None (no watchdog), "profile" (that profile's), or "TIMEOUT:SELF_FENCE"."""
    if text is None:
        return None
    if text == "profile":
        return _watchdogs()[profile]
    match = re.fullmatch(r"(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)", text.strip())
    if match is None:
        raise ValueError(f"--watchdog takes TIMEOUT:SELF_FENCE in seconds (e.g. 10:10), "
                         f"not {text!r}")
    return float(match.group(1)), float(match.group(2))


def add_parser(sub: Any) -> None:
    from hacluster.lab.nemesis.schedule import KINDS

    soak = sub.add_parser(
        "soak", help="random faults against a lab cluster, judged by independent witnesses",
        description=DESCRIPTION, epilog=EPILOG + ", ".join(KINDS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    soak.add_argument("--hosts", type=int, default=5, help="hosts, all voters (default "
                      "%(default)s)")
    soak.add_argument("--vms", type=int, default=40, help="HA VMs (default %(default)s)")
    soak.add_argument("--duration", type=parse_duration, default=600.0,
                      help="how long to inject faults, e.g. 90s, 10m (default 10m)")
    soak.add_argument("--seed", type=int, default=1, help="the schedule's seed (default "
                      "%(default)s): the same seed replays the same faults")
    soak.add_argument("--profile", choices=("default", "fast"), default="default",
                      help="lease timings (default: 3 s lease; fast: 0.9 s)")
    soak.add_argument("--isolation", choices=("netns", "loopback"), default="netns",
                      help="hosts in network namespaces (default) or on loopback addresses")
    soak.add_argument("--kinds", default="", help="only these fault kinds, comma-separated")
    soak.add_argument("--loss", type=parse_range, default=(10, 50),
                      help="packet loss range of the loss faults, percent (default 10-50)")
    soak.add_argument("--watchdog", nargs="?", const="profile", default=None,
                      metavar="TIMEOUT:SELF_FENCE",
                      help="give every host a watchdog (lab-emulated) and its peer self-fencing:"
                      " seconds before the watchdog resets an unfed host, and seconds without"
                      " a leader's acknowledgement before the peer gives up (default per "
                      "profile: " + ", ".join(f"{p} {t:g}:{f:g}" for p, (t, f)
                                               in _watchdogs().items()) + ")")
    soak.add_argument("--hold", type=parse_duration, default=0.0,
                      help="hold every fault this long (default: a random time per kind)")
    soak.add_argument("--loss-hosts", type=int, default=0,
                      help="loss faults between this many hosts (default: 2 to all, random)")
    soak.add_argument("--recovery-bound", type=parse_duration, default=90.0,
                      help="every VM must run again this long after a heal (default 90s)")
    soak.add_argument("--dir", default="", help="lab directory (default: a new one in /tmp)")
    soak.add_argument("--keep", action="store_true", help="keep the lab's files also on a pass")
    soak.add_argument("--json", action="store_true",
                      help="one JSON object on the last stdout line")
    soak.set_defaults(func=cmd_soak)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_soak(args: argparse.Namespace) -> int:
    from hacluster.lab.cluster import lab_unavailable
    from hacluster.lab.nemesis.schedule import KINDS
    from hacluster.lab.soak import Soak, SoakConfig, render

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) or KINDS
    try:
        watchdog = parse_watchdog(args.watchdog, args.profile)
        config = SoakConfig(hosts=args.hosts, vms=args.vms, duration_s=args.duration,
                            seed=args.seed, profile=args.profile, isolation=args.isolation,
                            kinds=kinds, loss=args.loss, recovery_bound_s=args.recovery_bound,
                            watchdog=watchdog, hold_s=args.hold, loss_hosts=args.loss_hosts,
                            root=args.dir, keep=args.keep)
    except ValueError as exc:
        print(f"hacluster soak: {exc}", file=sys.stderr)
        return 2
    reason = lab_unavailable("test", config.isolation)
    if reason:
        print(f"hacluster soak: a lab cluster cannot run here: {reason}", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout, `kill`) tears the lab down as Ctrl-C does: without this the
    # namespaces, nft tables, mounts and every peer and libvirtd of the lab would linger
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        result = Soak(config, say=lambda line: print(line, flush=True)).run()
    except KeyboardInterrupt:
        print("hacluster soak: interrupted; the lab was taken down", file=sys.stderr)
        return 130
    print(render(result), flush=True)
    if args.json:
        print(json.dumps(result.summary()), flush=True)
    return 1 if result.verdict.violations else 0
