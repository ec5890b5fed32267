"""No evidence string, log record, repr or output carries a BMC password."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.fence import make_fencer
from hacluster.fence.agent import AgentFencer
from hacluster.fence.ipmi import IpmiFencer
from hacluster.lab.bmc import BmcMode, BmcSim
from hacluster.ports import BmcTarget, FenceAction, Secret

from .support import PASSWORD, assert_no_secret

OTHER = "Other-Secr3t.Pw"  # a wrong password must not leak either


def test_no_password_anywhere(
    make_bmc: Callable[..., BmcSim],
    ipmi: IpmiFencer,
    agent: AgentFencer,
    silent_udp_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    good, rejecting = make_bmc(), make_bmc()
    rejecting.set_mode(BmcMode.REJECT_CREDENTIALS)
    echo = tmp_path / "fence_echo"
    echo.write_text("#!/bin/sh\ncat; exit 1\n")  # echoes its stdin, password included
    echo.chmod(0o755)

    def agent_target(name: str, **kw: object) -> BmcTarget:
        return good.target(name, driver="agent", cipher_suite=3, **kw)

    wrong = Secret(OTHER)
    things: list[object] = [
        good.target("good"),
        ipmi.fence(good.target("good"), FenceAction.OFF, 5),
        ipmi.fence(good.target("wrong", password=wrong), FenceAction.OFF, 5),
        ipmi.probe(rejecting.target("rejecting"), 5),
        ipmi.probe(good.target("silent", port=silent_udp_port), 0.5),
        agent.probe(agent_target("agent", agent="fence_ipmilan"), 5),
        agent.fence(
            agent_target("wrong", agent="fence_ipmilan", password=wrong), FenceAction.OFF, 5
        ),
    ]
    echoed = agent.fence(agent_target("echo", agent=str(echo)), FenceAction.OFF, 5)
    assert "***" in echoed.evidence  # the agent did print it; we masked it
    things.append(echoed)
    router = make_fencer()
    try:
        unknown = BmcTarget("x", driver="?", password=Secret(PASSWORD))
        things.append(router.fence(unknown, FenceAction.OFF, 1))
    finally:
        router.close()

    out, err = capfd.readouterr()
    texts = [*things, out, err, caplog.text]
    assert_no_secret(*texts)
    assert_no_secret(*texts, secret=OTHER)
