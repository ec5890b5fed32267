"""Which previous release the rolling upgrade test builds, from which clone: the tag,
else the commit (a clone of the main branch without tags), else a clear failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .release import ROOT, ReleaseUnavailable, recorded, resolve


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_the_record_names_a_tag_and_a_full_commit() -> None:
    tag, commit = recorded()
    assert tag.startswith("v") and len(commit) == 40


def clone(tmp_path: Path, *options: str) -> Path:
    """A clone of this repository without its tags (a landing may carry none)."""
    target = tmp_path / "clone"
    git("clone", "-q", "--no-tags", *options, str(ROOT), str(target))
    return target


def test_the_commit_serves_when_the_tag_is_absent(tmp_path: Path) -> None:
    tag, commit = recorded()
    copy = clone(tmp_path, "--shared")
    assert git("-C", str(copy), "tag", "-l") == ""
    assert resolve(tag, commit, copy) == commit


def test_a_tag_that_points_elsewhere_is_refused(tmp_path: Path) -> None:
    tag, commit = recorded()
    copy = clone(tmp_path, "--shared")
    git("-C", str(copy), "tag", tag, f"{commit}~1")
    with pytest.raises(ReleaseUnavailable, match=f"tag {tag} points at .* but PREVIOUS_RELEASE "
                       f"records {commit}: one of them is wrong"):
        resolve(tag, commit, copy)


def test_a_shallow_clone_fails_and_says_how_to_fix_it(tmp_path: Path) -> None:
    tag, commit = recorded()
    copy = tmp_path / "shallow"
    git("clone", "-q", "--depth", "1", "--no-tags", f"file://{ROOT}", str(copy))
    assert git("-C", str(copy), "rev-parse", "--is-shallow-repository") == "true"
    assert git("-C", str(copy), "rev-parse", "HEAD") != commit  # (only the release's own tree)
    with pytest.raises(ReleaseUnavailable, match="this clone is shallow: run `git fetch "
                       "--unshallow --tags`"):
        resolve(tag, commit, copy)
