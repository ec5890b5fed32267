"""The state machine benchmark still runs against the current code and prints
its JSON (figures are not judged here: BENCHMARKS.md records them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fsm_benchmark_runs_and_prints_its_keys() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "fsm.py")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("apply_per_s", "snapshot_bytes", "snapshot_roundtrip_s", "plan_1000_vms_s"):
        assert result[key] > 0
