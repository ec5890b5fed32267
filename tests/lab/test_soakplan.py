"""The soak's plan, without a lab: a seed always yields the same schedule (a
failing seed replays), the overrides keep the rest of it, the CLI parses what
the summary prints as the replay command."""

from __future__ import annotations

import argparse
import shlex

import pytest

from hacluster.cli import soak as cli
from hacluster.lab.nemesis.schedule import KINDS, schedule
from hacluster.lab.soak import WATCHDOGS, SoakConfig, replay_command


def test_a_seed_always_yields_the_same_schedule() -> None:
    assert schedule(7, 5, 3.0, 200) == schedule(7, 5, 3.0, 200)
    assert schedule(7, 5, 3.0, 200) != schedule(8, 5, 3.0, 200)
    drawn = {p.kind for p in schedule(7, 5, 3.0, 2000)}
    assert drawn == set(KINDS), "every kind comes up in a long enough schedule"


def test_overrides_replace_a_drawn_value_and_keep_the_rest() -> None:
    plain = schedule(7, 5, 3.0, 100)
    held = schedule(7, 5, 3.0, 100, hold_s=60.0, loss_hosts=5)
    assert [p.kind for p in held] == [p.kind for p in plain]
    assert [p.picks for p in held] == [p.picks for p in plain]
    assert {p.hold_s for p in held} == {60.0}
    assert {p.variant for p in held if p.kind == "loss"} == {"5"}
    with pytest.raises(ValueError):
        schedule(7, 5, 3.0, 10, loss_hosts=1)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_the_watchdog_option_takes_the_profile_default_or_two_values() -> None:
    assert cli.parse_watchdog(None, "default") is None
    assert cli.parse_watchdog("profile", "fast") == WATCHDOGS["fast"]
    assert cli.parse_watchdog("10:12.5", "default") == (10.0, 12.5)
    with pytest.raises(ValueError):
        cli.parse_watchdog("10", "default")
    assert parse(["soak", "--watchdog"]).watchdog == "profile"
    assert parse(["soak"]).watchdog is None
    with pytest.raises(ValueError):
        SoakConfig(watchdog=(0.0, 5.0))


def test_the_replay_command_parses_back_to_the_same_config() -> None:
    config = SoakConfig(hosts=4, vms=20, duration_s=90, seed=42, profile="fast",
                        kinds=("loss", "split"), loss=(30, 30), watchdog=(1.5, 2.5),
                        hold_s=60.0, loss_hosts=4, recovery_bound_s=60.0)
    args = parse(shlex.split(replay_command(config))[1:])
    again = SoakConfig(hosts=args.hosts, vms=args.vms, duration_s=args.duration,
                       seed=args.seed, profile=args.profile, isolation=args.isolation,
                       kinds=tuple(args.kinds.split(",")), loss=args.loss,
                       recovery_bound_s=args.recovery_bound,
                       watchdog=cli.parse_watchdog(args.watchdog, args.profile),
                       hold_s=args.hold, loss_hosts=args.loss_hosts)
    assert again == config
