"""The documented embedding example runs: an in-process peer, a custom fence
backend, commands, reads and an event subscriber."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "embed_example.py"


def test_embedding_example_runs() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "web1 is started on app1" in done.stdout
    assert "events seen by the subscriber" in done.stdout
    assert "leader=True" in done.stdout
