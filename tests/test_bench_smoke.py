"""Every benchmark still runs against the current code and prints its JSON (one short
trial each; figures are not judged here: BENCHMARKS.md records them). mypy checks bench/
like the package (pyproject.toml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hacluster.lab.cluster import lab_unavailable

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    # this checkout's package, also in the processes a lab starts (not whatever
    # checkout the virtualenv's editable install points at)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_fsm_benchmark_runs_and_prints_its_keys() -> None:
    result = run_bench("fsm.py")
    for key in ("apply_per_s", "snapshot_bytes", "snapshot_roundtrip_s", "plan_1000_vms_s"):
        assert result[key] > 0


def test_raft_benchmark_runs_and_prints_its_keys() -> None:
    result = run_bench("raft.py", "--sync-n", "30", "--concurrent-n", "60", "--threads", "4",
                       "--trials", "5", "--rounds", "2", "--fsm", "raftlab.bench_replica:bench")
    assert result["failures"] == 0 and result["failures_no_fsync"] == 0
    assert result["raw_failures"] >= 0 and result["raw_concurrent_failures"] >= 0  # reported
    assert len(result["ours_vs_raw_rounds"]) == 2
    for key in ("commit_p50_ms", "fsm_ops_per_s", "reelection_median_s", "fsync_cost_ms",
                "raw_pysyncobj_ops_per_s", "ours_vs_raw"):
        assert result[key] > 0


def test_sim_raft_benchmark_runs_and_prints_its_keys() -> None:
    result = run_bench("sim_raft.py", "--smoke", timeout=120)
    for key in ("sim_s_per_s", "checked_sim_s_per_s", "msgs_per_sim_s"):
        assert result[f"5v3m_20ms_{key}"] > 0


def test_every_bench_script_has_a_smoke_here() -> None:
    source = Path(__file__).read_text()
    scripts = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert scripts and [s for s in scripts if f'run_bench("{s}"' not in source] == []


def lab_or_skip(driver: str = "test") -> None:
    reason = lab_unavailable(driver)
    if reason:
        pytest.skip(reason)


def test_failover_benchmark_runs_and_prints_its_keys() -> None:
    lab_or_skip()
    result = run_bench("failover.py", "--trials", "1", "--victim-vms", "2")
    for profile in ("default", "fast"):
        figures = result[profile]
        assert figures["trials"] == figures["recovered_trials"] == 1
        assert figures["wrong_fences"] == 0 and figures["missing"] == {}
        assert figures["vms_per_victim_median"] >= 2
        for key in ("median_s", "detection_median_s", "fence_median_s", "restart_median_s"):
            assert figures[key] > 0


def test_hypervisor_benchmark_runs_and_prints_its_keys() -> None:
    lab_or_skip("qemu")
    result = run_bench("hypervisor.py", "--trials", "1")
    assert result, "no figures"


def test_scale_benchmark_runs_and_prints_its_keys() -> None:
    lab_or_skip()
    result = run_bench("scale.py", "--voters", "3", "--members", "3", "--vms", "20",
                       "--minutes", "0.2", "--cuts", "1", "--settle-s", "1")
    assert result["hosts"] == 6 and result["cuts"] == 1
    assert result["false_fences"] == 0 and result["vm_on_two_hosts"] == 0
    assert result["digests_agree"]
    assert result["recoveries_missing"] == 0 and result["cut_records"][0]["missing"] == []
    steady = result["steady"]
    assert steady["probes"] > 0 and steady["vms_not_running_max"] == 0
    for key in ("commit_visible_ms_p50", "peer_rss_mib_median", "peer_cpu_pct_median"):
        assert steady[key] > 0


def test_chassis_benchmark_runs_and_prints_its_keys() -> None:
    lab_or_skip()
    result = run_bench("chassis.py", "--trials", "1", "--setups", "fast:1.5:2.5")
    figures = result["fast:1.5:2.5"]
    assert figures["trials"] == figures["recovered_trials"] == 1
    assert figures["not_watchdog"] == 0 and figures["wrong_fences"] == 0
    assert figures["observer_violations"] == 0
    assert figures["median_s"] > figures["designed_s"] > 0
