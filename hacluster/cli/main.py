"""`hacluster`: the peer daemon, the simulator, the demo and the soak."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from hacluster import __version__

EPILOG = """examples:
  hacluster peer --config /etc/hacluster/hacluster.toml
  hacluster sim hacluster/sim/scenarios/01-host-power-loss
  hacluster sim --all                       run every shipped scenario
  hacluster sim --all --rewrite             refresh their expected.log files
  hacluster sim chaos --schedules 2000 --seed 7   random fault schedules, replayable by seed
  hacluster demo
  hacluster soak --hosts 5 --vms 40 --duration 10m --seed 7   random faults on a lab cluster
"""


def shipped_scenarios() -> list[Path]:
    root = Path(__file__).resolve().parent.parent / "sim" / "scenarios"
    return sorted(p for p in root.iterdir() if (p / "cluster.toml").exists())


def cmd_chaos(args: argparse.Namespace) -> int:
    """Random fault schedules (hacluster/sim/chaos.py); exit 1 when one fails."""
    import json

    from hacluster.sim.chaos import run_many

    summary = run_many(args.seed, args.schedules, workers=args.workers, stop_after=args.stop)
    for result in summary.failures:
        print(f"seed {result.seed}: FAILED", file=sys.stderr)
        for line in [*result.violations, *result.stuck]:
            print(f"  {line}", file=sys.stderr)
        print("  faults: " + "; ".join(result.actions), file=sys.stderr)
    doc = {"seed": args.seed, "schedules": summary.ran, "failed": len(summary.failures),
           "failed_seeds": [r.seed for r in summary.failures],
           "false_fences": summary.false_fences, "seconds": round(summary.seconds, 1)}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{summary.ran} schedules from seed {args.seed}: {len(summary.failures)} failed, "
              f"{summary.false_fences} false fences, {summary.seconds:.1f}s")
    return 1 if summary.failures else 0


def cmd_sim(args: argparse.Namespace) -> int:
    from hacluster.sim.scenario import ScenarioError, run_scenario

    if args.dirs[:1] == ["chaos"]:
        return cmd_chaos(args)
    dirs = shipped_scenarios() if args.all else [Path(d) for d in args.dirs]
    if not dirs:
        print("hacluster sim: name a scenario directory or use --all", file=sys.stderr)
        return 2
    status = 0
    for directory in dirs:
        try:
            outcome = run_scenario(directory)
        except ScenarioError as exc:
            print(f"hacluster sim: {exc}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"== {outcome.name}")
            print(outcome.timeline, end="")
        if args.rewrite:
            (directory / "expected.log").write_text(outcome.timeline)
        elif outcome.mismatch:
            print(
                f"{outcome.name}: timeline differs from expected.log:\n{outcome.mismatch}",
                file=sys.stderr,
            )
            status = 1
        if outcome.failures:
            print(f"{outcome.name}: {len(outcome.failures)} failure(s)", file=sys.stderr)
            status = 1
        elif args.quiet:
            print(f"{outcome.name}: ok")
    return status


def cmd_peer(args: argparse.Namespace) -> int:
    from hacluster.daemon.run import run_peer

    return run_peer(args.config, rebuild=args.rebuild)


def cmd_demo(args: argparse.Namespace) -> int:
    """The lab demo on this machine; the simulated one where a lab cannot run."""
    if not args.sim:
        from hacluster.lab.cluster import lab_unavailable

        reason = lab_unavailable(*(("qemu", "netns") if args.qemu else ()))
        if reason is None:
            from hacluster.lab.demo import run_demo

            return run_demo(args.hosts, args.vms, "fast" if args.fast else "default",
                            keep=args.keep, qemu=args.qemu)
        print(f"hacluster demo: a lab cluster cannot run here ({reason}); showing the "
              "simulated cluster instead\n")
    scenario = next(p for p in shipped_scenarios() if p.name.startswith("01-"))
    print(f"demo (simulated cluster): {scenario.name}\n")
    return cmd_sim(argparse.Namespace(all=False, dirs=[str(scenario)], rewrite=False,
                                      quiet=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hacluster",
        description="HA cluster manager for KVM/libvirt VMs, built on Raft.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hacluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    peer = sub.add_parser(
        "peer", help="run this host's peer daemon",
        description="Run the peer daemon: Raft replica, lease renewals, the leader's "
        "decisions when it leads, and the agent that makes libvirt match the cluster state. "
        "SIGTERM leaves cleanly (nobody is fenced); SIGHUP reloads what can change safely "
        "([log], [notify]) and names what needs a restart.",
        epilog="example: hacluster peer --config /etc/hacluster/hacluster.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    peer.add_argument("--config", default="/etc/hacluster/hacluster.toml",
                      help="TOML configuration (default: %(default)s)")
    peer.add_argument("--rebuild", action="store_true",
                      help="the local journal or snapshot is corrupt: move it aside (nothing "
                      "is deleted) and catch up from the other peers")
    peer.set_defaults(func=cmd_peer)
    sim = sub.add_parser(
        "sim",
        help="run simulator scenarios and print their timelines",
        description="Run scenario directories (cluster.toml + events.txt) "
        "in the deterministic simulator and print the timeline. Exits 1 when "
        "an expectation or invariant fails or the timeline differs from "
        "expected.log. `hacluster sim chaos` runs random fault schedules instead "
        "(seeds SEED .. SEED+SCHEDULES-1; a failed seed replays with --schedules 1).",
        epilog="examples:\n  hacluster sim hacluster/sim/scenarios/02-host-isolated-but-alive\n"
        "  hacluster sim --all --quiet\n  hacluster sim --all --rewrite\n"
        "  hacluster sim chaos --schedules 5000 --seed 1000 --workers 2\n"
        "  hacluster sim chaos --schedules 1 --seed 1083",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("dirs", nargs="*", help="scenario directories")
    sim.add_argument("--all", action="store_true", help="run every shipped scenario")
    sim.add_argument("--rewrite", action="store_true", help="write expected.log from this run")
    sim.add_argument("--quiet", action="store_true", help="print one line per scenario")
    sim.add_argument("--schedules", type=int, default=500,
                     help="chaos: schedules to run (default %(default)s)")
    sim.add_argument("--seed", type=int, default=1000,
                     help="chaos: the first seed (default %(default)s)")
    sim.add_argument("--workers", type=int, default=1,
                     help="chaos: processes (default %(default)s)")
    sim.add_argument("--stop", type=int, default=3,
                     help="chaos: stop after this many failed schedules (default %(default)s)")
    sim.add_argument("--json", action="store_true",
                     help="chaos: one JSON object on the last line")
    sim.set_defaults(func=cmd_sim)
    demo = sub.add_parser(
        "demo", help="a host dies, its VMs come back elsewhere (timeline)",
        description="Build a lab cluster on this machine (a peer, a private libvirtd and an "
        "IPMI BMC simulator per host, on loopback addresses), cut one host's power, and "
        "print the timeline of its recovery. Needs root; everything is removed afterwards.",
        epilog="examples:\n  hacluster demo\n  hacluster demo --fast --hosts 5 --vms 10\n"
        "  hacluster demo --qemu\n"
        "  hacluster demo --sim",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--hosts", type=int, default=3, help="hosts (default %(default)s)")
    demo.add_argument("--vms", type=int, default=4, help="VMs (default %(default)s)")
    demo.add_argument("--fast", action="store_true", help="the fast lease profile (0.9 s)")
    demo.add_argument("--qemu", action="store_true", help="hosts in network namespaces "
                      "running real QEMU domains (slower to start)")
    demo.add_argument("--sim", action="store_true", help="the simulated cluster instead")
    demo.add_argument("--keep", action="store_true", help="keep the lab's files and logs")
    demo.set_defaults(func=cmd_demo)
    from hacluster.cli import soak

    soak.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
