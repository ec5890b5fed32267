"""Private libvirtd instances: isolation, power-off (kill), power-on again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hacluster.hypervisor.domxml import domain_type_for, minimal_domain_xml
from hacluster.lab import libvirtd as lab

from .support import wait_for

SYSTEM_PATHS = ("/run/libvirt/libvirt-sock", "/run/libvirtd.pid", "/var/run/libvirt/libvirt-sock")


def _require(driver: lab.Driver) -> None:
    reason = lab.unavailable_reason(driver)
    if reason:
        pytest.skip(reason)


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def test_test_driver_instance_is_private_and_dies_by_cli_kill(tmp_path: Path) -> None:
    _require("test")
    before = {path: os.path.exists(path) for path in SYSTEM_PATHS}
    instance = lab.LabLibvirtd(lab.LibvirtdSpec(str(tmp_path / "t"), "test"))
    instance.start()
    try:
        assert instance.uri.startswith("test+unix:///default?socket=")
        assert _virsh(instance.uri, "list", "--name").stdout.split() == ["test"]
        assert {path: os.path.exists(path) for path in SYSTEM_PATHS} == before
        pids = [pid for pid, _ in instance.processes()]
        commands = {Path(argv[0]).name for _, argv in instance.processes()}
        assert {"libvirtd", "virsh"} <= commands  # the daemon and the state keeper
        init = instance.init_pid()
        assert init is not None
        killed = subprocess.run(
            [sys.executable, "-m", "hacluster.lab.libvirtd", "kill", str(tmp_path / "t")]
        )
        assert killed.returncode == 0
        assert not any(_alive(pid) for pid in [*pids, init])
        assert instance.init_pid() is None
        again = subprocess.run(
            [sys.executable, "-m", "hacluster.lab.libvirtd", "kill", str(tmp_path / "t")]
        )
        assert again.returncode == 1  # nothing left to kill
    finally:
        instance.kill_all()


def test_qemu_power_off_kills_the_vm_and_power_on_keeps_definitions(tmp_path: Path) -> None:
    _require("qemu")
    instance = lab.LabLibvirtd(lab.LibvirtdSpec(str(tmp_path / "q"), "qemu", hostname="lab-q"))
    xml = tmp_path / "vm.xml"
    xml.write_text(minimal_domain_xml("vm", 32, 1, domain_type_for(instance.uri)))
    instance.start()
    try:
        assert _virsh(instance.uri, "hostname").stdout.strip() == "lab-q"
        assert _virsh(instance.uri, "define", str(xml)).returncode == 0
        assert _virsh(instance.uri, "start", "vm").returncode == 0
        qemu = instance.qemu_pid("vm")
        assert qemu is not None and _alive(qemu)
        instance.kill_all()  # power off: QEMU dies with libvirtd
        assert not _alive(qemu)
        assert _virsh(instance.uri, "list").returncode != 0
        instance = lab.LabLibvirtd.from_dir(tmp_path / "q")  # as the BMC simulator would
        instance.start()  # power on: the definition is still there, not running
        wait_for(
            lambda: _virsh(instance.uri, "domstate", "vm").stdout.strip() == "shut off",
            30.0,
            "vm to be defined and off",
        )
    finally:
        instance.kill_all()


def test_bad_setups_are_refused(tmp_path: Path) -> None:
    _require("test")
    with pytest.raises(lab.LabError, match="socket path"):
        lab.LabLibvirtd(lab.LibvirtdSpec("/tmp/" + "x" * 100, "test"))
    with pytest.raises(lab.LabError, match="socket path"):
        lab.LabLibvirtd(lab.LibvirtdSpec("/run/hacluster-lab", "test"))
    instance = lab.LabLibvirtd(lab.LibvirtdSpec(str(tmp_path / "t"), "test"))
    with instance, pytest.raises(lab.LabError, match="already running"):
        instance.start()
    assert instance.init_pid() is None


def test_instance_in_a_missing_namespace_fails_cleanly(tmp_path: Path) -> None:
    _require("test")
    spec = lab.LibvirtdSpec(str(tmp_path / "n"), "test", netns="hc-no-such-namespace")
    with pytest.raises(lab.LabError, match="exited"):
        lab.LabLibvirtd(spec).start(timeout_s=5.0)


def test_cli_power_on_is_idempotent_and_outlives_the_cli(tmp_path: Path) -> None:
    _require("test")
    cli = [sys.executable, "-m", "hacluster.lab.libvirtd"]
    base = str(tmp_path / "c")
    try:
        first = subprocess.run([*cli, "start", base, "--driver", "test"], capture_output=True)
        assert first.returncode == 0, first.stderr
        uri = first.stdout.decode().strip()
        again = subprocess.run([*cli, "start", base], capture_output=True)  # reuses spec.json
        assert (again.returncode, again.stdout.decode().strip()) == (0, uri)
        assert _virsh(uri, "list", "--name").stdout.split() == ["test"]
    finally:
        subprocess.run([*cli, "kill", base])
    assert lab.LabLibvirtd.from_dir(base).init_pid() is None
