"""Lab clusters for end-to-end tests: real peer processes, real IPMI to
ipmi_sim BMCs, libvirtd instances; on loopback addresses of their own, or
each host in a network namespace with QEMU (isolation="netns", driver="qemu")."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hacluster.lab.cluster import LabCluster, lab_unavailable

FAILED_LABS = Path("/tmp/hacluster-failed-labs")  # kept for a look after a failure
LOG_TAIL_LINES = 25


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)  # the fixture reads it at teardown
    return report


def lab_diagnostics(lab: LabCluster) -> str:
    """The tail of every peer log and what the observer saw: enough to tell
    from a CI log alone why a lab test failed."""
    parts = []
    for name, node in sorted(lab.nodes.items()):
        log = Path(node.host.spec.path) / "peer.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        parts.append(f"--- {name} peer.log (last {LOG_TAIL_LINES} of {len(lines)} lines)")
        parts += lines[-LOG_TAIL_LINES:]
    if lab.observer is not None:
        parts.append("--- observer: sightings (monotonic s)")
        parts += [f"{s.at:.3f} {s.host} {s.vm} {'start' if s.running else 'stop'}"
                  for s in lab.observer.sightings[-30:]]
        parts += [f"{c.at:.3f} {c.host} power {'on' if c.on else 'off'} ({c.cause})"
                  for c in lab.observer.power_changes[-10:]]
    return "\n".join(parts)


def keep_failed_lab(lab: LabCluster, test: str, index: int) -> Path:
    target = FAILED_LABS / f"{test}-{index}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(lab.root, target, ignore=special_files, ignore_dangling_symlinks=True)
    return target


def special_files(directory: str, names: list[str]) -> list[str]:
    """Sockets and pipes (libvirtd's, the RPC socket): nothing to copy."""
    return [n for n in names if not (os.path.isdir(os.path.join(directory, n))
                                     or os.path.isfile(os.path.join(directory, n)))]


@pytest.fixture
def lab_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    made: list[LabCluster] = []

    def make(hosts: int = 3, profile: str = "fast", *, driver: str = "test",
             isolation: str = "loopback", **options: Any) -> LabCluster:
        reason = lab_unavailable(driver, isolation)
        if reason:
            pytest.skip(reason)
        lab = LabCluster(tmp_path / f"lab{len(made)}", hosts, profile=profile, driver=driver,
                         isolation=isolation, **options)
        made.append(lab)  # before start(): a start that fails half-way is cleaned up too
        lab.start()
        return lab

    yield make
    report = getattr(request.node, "report_call", None)
    failed = report is not None and report.failed
    teardown_errors: list[BaseException] = []
    for index, lab in enumerate(made):
        try:
            lab.stop(keep=failed)  # first: nothing keeps writing while its files are copied
        except RuntimeError as exc:  # every other lab still goes
            teardown_errors.append(exc)
        if not failed:
            continue
        assert report is not None
        try:
            kept = keep_failed_lab(lab, request.node.name, index)
            report.sections.append((f"lab {index} (files kept in {kept})",
                                    lab_diagnostics(lab)))
        except Exception as exc:  # the diagnostics are a bonus, never a reason to leak
            report.sections.append((f"lab {index}", f"could not keep its files: {exc!r}"))
        finally:
            shutil.rmtree(lab.root, ignore_errors=True)
    if teardown_errors:
        raise teardown_errors[0]
