"""The previous release, built from this repository's history for the rolling upgrade
test: PREVIOUS_RELEASE names it ("TAG COMMIT"). The tag is used when this clone has it
(it must point at that commit); a clone of the main branch alone has no tags but has the
commit in its history. A shallow clone has neither: the test then fails and says how to
fix it (`./dev.sh test` unshallows a shallow clone that has a remote)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORD = Path(__file__).with_name("PREVIOUS_RELEASE")


class ReleaseUnavailable(Exception):
    """The previous release cannot be built from this checkout (the message says why)."""


@dataclass(frozen=True)
class Release:
    tag: str
    commit: str
    source: str  # what it was exported from: the tag, or the commit when the tag is absent
    path: Path  # the directory holding its `hacluster/` package (a PYTHONPATH entry)


def recorded() -> tuple[str, str]:
    fields = RECORD.read_text().split()
    if len(fields) != 2 or len(fields[1]) != 40:
        raise ReleaseUnavailable(f"{RECORD}: expected one line 'TAG FULL-COMMIT-HASH', "
                                 f"found {RECORD.read_text()!r}")
    return fields[0], fields[1]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60)


def _commit_of(root: Path, ref: str) -> str | None:
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return found.stdout.decode().strip() if found.returncode == 0 else None


def resolve(tag: str, commit: str, root: Path = ROOT) -> str:
    """The ref to export from the clone at `root`: the tag when present (and pointing at
    `commit`), else the commit."""
    if _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise ReleaseUnavailable(f"{root} is not a git checkout: the rolling upgrade test "
                                 f"builds the previous release ({tag}) from git history")
    tagged = _commit_of(root, f"refs/tags/{tag}")
    if tagged is not None:
        if tagged != commit:
            raise ReleaseUnavailable(f"tag {tag} points at {tagged}, but {RECORD.name} "
                                     f"records {commit}: one of them is wrong")
        return f"refs/tags/{tag}"
    if _commit_of(root, commit) == commit:
        return commit
    shallow = _git(root, "rev-parse", "--is-shallow-repository").stdout.decode().strip()
    hint = ("this clone is shallow: run `git fetch --unshallow --tags` (./dev.sh test does "
            "when the clone has a remote)" if shallow == "true" else
            "fetch the main branch's history and tags (`git fetch --tags`)")
    raise ReleaseUnavailable(f"the previous release {tag} ({commit}) is not in this clone "
                             f"(neither the tag nor the commit): {hint}")


def export(destination: Path) -> Release:
    """Export the previous release's `hacluster/` package into `destination`."""
    tag, commit = recorded()
    source = resolve(tag, commit)
    archive = _git(ROOT, "archive", "--format=tar", source, "hacluster")
    if archive.returncode != 0:
        raise ReleaseUnavailable(f"git archive {source}: {archive.stderr.decode().strip()}")
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return Release(tag, commit, source, destination)


def understood(release: Path) -> set[tuple[str, int]]:
    """The command versions a peer of that release announces (its own code says)."""
    program = ("import json, hacluster; from hacluster.core.versions import this_peer; "
               "print(json.dumps([hacluster.__file__, this_peer('x').commands]))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60, cwd=release,
                         env=dict(os.environ, PYTHONPATH=str(release)), check=True)
    loaded, commands = json.loads(out.stdout)
    if not Path(loaded).is_relative_to(release):
        raise ReleaseUnavailable(f"PYTHONPATH={release} loaded hacluster from {loaded}")
    return {(t, v) for t, v in commands}
