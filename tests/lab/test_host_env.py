"""The lab's Python children (peers, the BMCs' power hooks) import the same
hacluster package as the lab itself, also when the virtualenv has another
checkout installed (a worktree's lab once ran the main checkout's power hook,
which could not read the worktree's host.json, so no host ever lost power)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hacluster
from hacluster.lab.host import package_pythonpath


def test_children_import_this_package_from_any_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import hacluster; print(hacluster.__file__)"],
        env=dict(os.environ, PYTHONPATH=package_pythonpath()), cwd=tmp_path,
        capture_output=True, text=True, check=True)
    assert Path(done.stdout.strip()).resolve() == Path(hacluster.__file__).resolve()
