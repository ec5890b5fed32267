"""A short soak on a real lab cluster (hacluster soak): a fixed seed, random
faults one at a time, judged only by witnesses outside the cluster (the
observer, the BMCs' power logs, the fault record). It must find no violation
and no false fence. HACLUSTER_SOAK=1 runs the long one (10 minutes, 5 hosts,
40 VMs; HACLUSTER_SOAK_SEED, HACLUSTER_SOAK_PROFILE and HACLUSTER_SOAK_WATCHDOG choose)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hacluster.lab.cluster import lab_unavailable
from hacluster.lab.soak import WATCHDOGS, Soak, SoakConfig, render

LONG = bool(os.environ.get("HACLUSTER_SOAK"))
SEED = int(os.environ.get("HACLUSTER_SOAK_SEED", "3"))
PROFILE = os.environ.get("HACLUSTER_SOAK_PROFILE", "default")
# every host self-fences (lab watchdog), so chassis death recovers with no operator;
# HACLUSTER_SOAK_WATCHDOG=0: none, an operator confirms
WATCHDOG = WATCHDOGS[PROFILE] if os.environ.get("HACLUSTER_SOAK_WATCHDOG", "1") != "0" \
    else None


@pytest.mark.netns
def test_a_short_soak_finds_no_violation_and_no_false_fence(tmp_path: Path) -> None:
    reason = lab_unavailable("test", "netns")
    if reason:
        pytest.skip(reason)
    config = (SoakConfig(hosts=5, vms=40, duration_s=600, seed=SEED, profile=PROFILE,
                         watchdog=WATCHDOG, root=str(tmp_path))
              if LONG else
              SoakConfig(hosts=3, vms=12, duration_s=120, seed=SEED, profile=PROFILE,
                         watchdog=WATCHDOG, root=str(tmp_path)))
    result = Soak(config).run()
    print(render(result))
    assert result.faults, "no fault was injected"
    summary = result.summary()  # what --json prints on its last line
    for key in ("faults", "violations", "false_fences", "recovery_median_s",
                "recovery_p95_s", "seed", "operator_waits"):
        assert key in summary, key
    assert json.loads(json.dumps(summary))["seed"] == SEED
    assert result.verdict.false_fences == []
    assert result.verdict.violations == [], render(result)
