"""Disk leases without libvirtd: the classification of start errors (real libvirt
errors captured in the lab, data/start_errors.json), the check of libvirt's lock
manager configuration, and the agent turning a held lock into its own report."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import pytest

from hacluster.core import agent as ag
from hacluster.daemon.agent import AgentDriver, _older_report
from hacluster.fsm import commands as c
from hacluster.hypervisor import locks
from hacluster.hypervisor.locks import held_lock, lock_setup_problem, parse_libvirt_conf
from hacluster.ports import DiskLockHeld, HypervisorError

CAPTURED = json.loads((Path(__file__).parent / "data" / "start_errors.json").read_text())
ERRORS: dict[str, dict[str, Any]] = CAPTURED["errors"]


def classify(name: str) -> str:
    e = ERRORS[name]
    return held_lock(e["code"], e["domain"], e["message"])


def test_libvirts_lock_manager_refusal_is_a_held_lock() -> None:
    why = classify("lockd")
    assert why.startswith("disk lease held elsewhere (libvirt lock manager: resource busy")


def test_qemus_image_lock_is_a_held_lock_naming_the_image() -> None:
    assert classify("qemu-image-lock") == ('disk image /var/lib/libvirt/images/d1.img locked '
                                           'by another QEMU (Failed to get "write" lock)')


def test_other_start_failures_are_not_held_locks() -> None:
    assert classify("missing-image") == ""
    assert held_lock(libvirt.VIR_ERR_RESOURCE_BUSY, libvirt.VIR_FROM_QEMU, "busy") == ""


def test_the_error_numbers_are_libvirts() -> None:
    assert (locks.VIR_ERR_RESOURCE_BUSY, locks.VIR_FROM_LOCKING, locks.VIR_FROM_LOCKSPACE) == (
        libvirt.VIR_ERR_RESOURCE_BUSY, libvirt.VIR_FROM_LOCKING, libvirt.VIR_FROM_LOCKSPACE)


# ------------------------------------------------------------ the agent


class LockedHypervisor:
    """Refuses every start as libvirt did in the lab; records what was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def define(self, name: str, xml: str) -> None:
        self.calls.append(f"define {name}")

    def start(self, name: str) -> None:
        self.calls.append(f"start {name}")
        e = ERRORS["lockd"]
        why = held_lock(e["code"], e["domain"], e["message"])
        raise DiskLockHeld(f"start of domain {name!r} failed: {e['message']}", why)

    def destroy(self, name: str) -> None:
        self.calls.append(f"destroy {name}")


def agent(hypervisor: object) -> AgentDriver:
    return AgentDriver("h2", None, hypervisor, None, None, None, None,  # type: ignore[arg-type]
                       shutdown_timeout_s=1.0, migrate_timeout_s=1.0, migration_uri="")


def test_the_agent_reports_a_start_refused_for_a_held_lock() -> None:
    hv = LockedHypervisor()
    report = agent(hv)._perform(ag.StartVm("vm1", "<domain/>", 7, "placed here"))
    assert isinstance(report, c.VmReport)
    assert (report.name, report.host, report.placement, report.observed) == (
        "vm1", "h2", 7, "start-locked")
    assert report.detail == classify("lockd")
    assert hv.calls == ["define vm1", "start vm1", "destroy vm1"]  # one attempt, no retry


class Proposals:
    """A proposer that records what the agent proposes (the version gate admits all)."""

    def __init__(self) -> None:
        self.sent: list[c.Command] = []

    async def propose(self, command: c.Command) -> Any:
        self.sent.append(command)

        class Outcome:
            events: list[object] = []

        return Outcome()


def test_a_placement_whose_start_failed_is_never_started_again_here() -> None:
    """A reconcile that runs before the refusal's report commits decides StartVm again
    for the same placement: the agent sends the report again instead (throttled)."""
    hv, proposals = LockedHypervisor(), Proposals()
    driver = AgentDriver("h2", None, hv, proposals, None, None, None,  # type: ignore[arg-type]
                         shutdown_timeout_s=1.0, migrate_timeout_s=1.0, migration_uri="")

    async def run() -> None:
        driver._act(ag.StartVm("vm1", "<domain/>", 7, "placed here"))
        await driver.drain()
        await driver.drain()  # the report, spawned when the start finished
        driver.throttle.interval_s = 0.0  # the next reconcile, a second later
        driver._act(ag.StartVm("vm1", "<domain/>", 7, "placed here"))
        await driver.drain()
        driver._act(ag.StartVm("vm1", "<domain/>", 9, "restarted: a new placement"))
        await driver.drain()

    driver.pool = ThreadPoolExecutor(1)
    asyncio.run(run())
    assert [call for call in hv.calls if call.startswith("start")] == ["start vm1", "start vm1"]
    assert [(p.observed, p.placement) for p in proposals.sent  # type: ignore[attr-defined]
            ][:2] == [("start-locked", 7), ("start-locked", 7)]


def test_any_other_start_failure_stays_start_failed() -> None:
    class Broken(LockedHypervisor):
        def start(self, name: str) -> None:
            raise HypervisorError(ERRORS["missing-image"]["message"])

    report = agent(Broken())._perform(ag.StartVm("vm1", "<domain/>", 7, "placed here"))
    assert isinstance(report, c.VmReport) and report.observed == "start-failed"


def test_a_cluster_with_an_old_peer_gets_a_failed_start_instead() -> None:
    locked = c.VmReport(name="vm1", host="h2", placement=7, observed="start-locked",
                        detail="why")
    older = _older_report(locked)
    assert older is not None and (older.observed, older.detail, older.wire_version()) == (
        "start-failed", "why", 1)
    assert _older_report(c.VmReport(name="vm1", host="h2", placement=7,
                                    observed="started")) is None


# ------------------------------------------------------------ libvirt's configuration


def test_libvirt_conf_parsing() -> None:
    text = ('# lock_manager = "sanlock"\nlock_manager = "nop"  # first\n'
            'cgroup_controllers = [ "cpu",\n  "memory" ]\nlock_manager = \'lockd\'\n'
            'auto_disk_leases = 0\nfile_lockspace_dir = "/a#b"\n')
    assert parse_libvirt_conf(text) == {"lock_manager": "lockd", "auto_disk_leases": 0,
                                        "file_lockspace_dir": "/a#b"}


def write(directory: Path, qemu: str | None, lockd: str | None = None) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("qemu.conf", qemu), ("qemu-lockd.conf", lockd)):
        if text is not None:
            (directory / name).write_text(text)
    return str(directory)


@pytest.mark.parametrize(("qemu", "lockd", "expected"), [
    (None, None, "cannot read"),
    ('user = "root"\n', None, 'sets lock_manager to nothing (libvirt locks nothing)'),
    ('lock_manager = "nop"\n', None, 'sets lock_manager to "nop"'),
    ('lock_manager = "lockd"\n', "auto_disk_leases = 0\n", "auto_disk_leases = 0"),
    ('lock_manager = "lockd"\n', None, "file_lockspace_dir to nothing (direct locks)"),
    ('lock_manager = "lockd"\n', 'file_lockspace_dir = "/elsewhere"\n', '"/elsewhere", expected'),
])
def test_a_setup_without_leases_is_refused_naming_file_and_option(
        tmp_path: Path, qemu: str | None, lockd: str | None, expected: str) -> None:
    problem, _ = lock_setup_problem(write(tmp_path / "etc", qemu, lockd), str(tmp_path / "ls"))
    assert expected in problem and str(tmp_path / "etc") in problem


def test_a_lockspace_that_is_not_mounted_is_refused(tmp_path: Path) -> None:
    etc = write(tmp_path / "etc", 'lock_manager = "lockd"\n',
                f'file_lockspace_dir = "{tmp_path / "ls"}"\n')
    problem, _ = lock_setup_problem(etc, "")
    assert "is not a directory (is the shared storage mounted?)" in problem


def test_lockd_with_its_defaults_or_a_lockspace_is_accepted(tmp_path: Path) -> None:
    direct = write(tmp_path / "a", 'lock_manager = "lockd"\n')
    assert lock_setup_problem(direct, "")[0] == ""
    (tmp_path / "ls").mkdir()
    indirect = write(tmp_path / "b", 'lock_manager = "lockd"\n',
                     f'auto_disk_leases = 1\nfile_lockspace_dir = "{tmp_path / "ls"}"\n')
    problem, setup = lock_setup_problem(indirect, str(tmp_path / "ls"))
    assert problem == "" and setup is not None
    assert setup.describe() == f"lock_manager lockd, lease files in {tmp_path / 'ls'}"
