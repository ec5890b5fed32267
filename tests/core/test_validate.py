"""fsm/validate.py: every stateless rule of every command type, the state checks the admin
API makes before proposing, and the tier apply enforces (exactly what it always refused)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from hacluster.fsm import commands as c
from hacluster.fsm.domain_xml import MAX_DOMAIN_XML_BYTES, domain_xml_name, domain_xml_problem
from hacluster.fsm.model import (
    BmcOverride,
    BmcSettings,
    Desired,
    FenceAction,
    FenceDevice,
    FenceLevel,
    FenceResult,
    HaPolicy,
    HostRole,
    Selector,
    StorageCheck,
    StorageVerdict,
    Watchdog,
    WatchdogKind,
)
from hacluster.fsm.validate import (
    EXISTS,
    INVALID,
    MAX_COMMAND_BYTES,
    MAX_TEXT_BYTES,
    UNKNOWN,
    command_problem,
    find_problem,
    state_problem,
)
from hacluster.raft.settings import RaftSettings

from .builders import Cluster, kinds
from .generators import RandomChooser, next_command

QUIET = StorageCheck(StorageVerdict.QUIET, 3, ("t+0.0 heartbeat /mnt/pool: #4",))


def xml(name: str = "db1", extra: str = "") -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>256</memory>"
            f"<vcpu>1</vcpu>{extra}</domain>")


def add_vm(**kw: object) -> c.AddVm:
    fields: dict[str, object] = {"name": "db1", "xml": xml(), "memory_mib": 256, "vcpus": 1}
    fields.update(kw)
    return c.AddVm(**fields)  # type: ignore[arg-type]


GOOD: list[c.Command] = [
    c.AddHost(name="h1", addresses=("main=10.0.0.1", "backend=10.0.1.1"),
              raft_address="10.0.0.1:7440", memory_mib=1024, vcpus=4, role=HostRole.VOTER,
              bmc=BmcOverride(address="10.0.2.1", driver="ipmi", port=623, action="reboot")),
    c.RemoveHost(name="h1"),
    c.HostReady(name="h1", memory_mib=2048, vcpus=8, migration_uri="qemu+tcp://h1/system"),
    c.ReportBmcHealth(name="h1", ok=False, detail="timeout after 5 s"),
    c.SetPeerStopped(name="h1", stopped=True),
    c.PlannedShutdown(name="h1", step="done", policy="failover", stopped=(("vm1", 12),)),
    c.SetShutdownPolicy(policy="migrate"),
    c.MakeRoom(name="db1"),
    c.TagHost(name="h1", tag="ssd", add=False),
    c.FailbackVm(name="db1", target="h1"),
    c.SetHostAddresses(name="h1", addresses=("main=10.0.0.1",)),
    c.SetHostRole(name="h1", role=HostRole.MEMBER),
    c.AnnounceVersions(name="h1", commands=(("add-vm", 1), ("noop", 1)), entry_formats=(1, 2)),
    c.ReportHostLoad(name="h1", load=0.5),
    c.SetHostMaintenance(name="h1", on=True),
    c.SetHostBmc(name="h1", bmc=BmcOverride(driver="redfish", port=443)),
    c.MarkHostSuspect(name="h1", evidence="lease overdue"),
    c.MarkHostAlive(name="h1", evidence="renews again"),
    c.RequestFence(host="h1", reason="lease expired", evidence="no renewal", term=3),
    c.ConfirmFence(host="h1", token=7, result=FenceResult.OFF, evidence="off", method="ipmi"),
    c.FenceFailed(host="h1", token=7, result=FenceResult.TIMEOUT, evidence="-", method="ipmi"),
    c.AdminConfirmFence(host="h1", who="alice", reason="cords pulled"),
    c.RetryFence(host="h1", who="alice"),
    c.HoldFence(host="h1", reason="too few voters renew"),
    c.CancelFence(host="h1", evidence="renews again"),
    c.ReportWatchdog(name="h1", watchdog=Watchdog(WatchdogKind.DEVICE, 10.0, 12.0, True)),
    c.ReportWatchdog(name="h1", watchdog=Watchdog()),
    c.WatchdogConfirm(host="h1", token=7, evidence="26.1 s since its last ack"),
    c.WatchdogConfirm(host="h1", token=7, evidence="26.1 s", storage=QUIET),
    c.RequestFence(host="h1", reason="lease expired", evidence="-", storage=QUIET),
    c.ReportStorage(name="h1", heartbeat_paths=("/mnt/pool", "/mnt/other")),
    c.ReportStorage(name="h1", heartbeat_paths=()),
    c.StorageChecked(host="h1", check=StorageCheck(StorageVerdict.ACTIVE, 1, ("changed",))),
    c.StorageChecked(host="h1", token=4, check=StorageCheck(StorageVerdict.UNREADABLE, 3)),
    add_vm(priority=10, ha=HaPolicy.NONE, desired=Desired.STOPPED, allowed_hosts=("h1", "h2"),
           anti_affinity="db", max_restarts=0, max_relocates=3),
    c.RemoveVm(name="db1"),
    c.SetVmOptions(name="db1", priority=-5, allowed_hosts=(), anti_affinity="", xml=xml()),
    c.SetVmDesired(name="db1", desired=Desired.DISABLED),
    c.MigrateVm(name="db1", target="h2"),
    c.MigrateVm(name="db1"),
    c.VmReport(name="db1", host="h1", placement=12, observed="crashed", detail="killed"),
    c.SetSettings(fence_cap=0, fence_action=FenceAction.NONE, selector=Selector.LOAD,
                  lease_renew_s=1.0, lease_suspect_s=2.0, lease_ttl_s=4.0),
    c.SetBmcDefaults(bmc=BmcSettings(driver="agent", port=1, agent="fence_ipmilan")),
    c.SetClusterMaintenance(on=True, who="alice"),
    c.Noop(term=4),
    c.SetHostFencing(name="h1", levels=(FenceLevel((FenceDevice("bmc"),)), FenceLevel((
        FenceDevice("agent", "pdu1", agent="fence_apc_snmp", options=(("plug", "3"),)),
        FenceDevice("agent", "pdu2", agent="fence_apc_snmp", options=(("plug", "3"),)))))),
]

# (command, field at fault, part of the message, whether apply refuses it too)
BAD: list[tuple[c.Command, str, str, bool]] = [
    (c.PlannedShutdown(name="h1", step="later", policy="stop"), "step", "unknown step", True),
    (c.PlannedShutdown(name="h1", step="begin", policy=""), "policy", "unknown shutdown",
     True),
    (c.PlannedShutdown(name="h1", step="done", policy="stop", stopped=(("vm 1", 3),)),
     "stopped", "invalid VM name", True),
    (c.SetShutdownPolicy(policy=""), "policy", "one of migrate, stop, freeze, failover",
     True),
    (c.SetShutdownPolicy(host="bad name", policy="stop"), "host", "invalid host name", False),
    (c.MakeRoom(name="db 1"), "name", "invalid VM name", False),
    (c.TagHost(name="h1", tag="fast disk"), "tag", "invalid tag name 'fast disk'", True),
    (add_vm(start_after=("db1",)), "start_after", "cannot start after itself", True),
    (add_vm(colocation="a b"), "colocation", "invalid colocation group name", True),
    (c.SetVmOptions(name="db1", required_tags=("ssd", "")), "required_tags",
     "invalid tag name ''", True),
    (c.FailbackVm(name="db1", target=""), "target", "needs its target host", True),
    (c.FailbackVm(name="db1", target="h 1"), "target", "invalid host name", False),
    (c.SetVmOptions(name="db1", preferred_hosts=(("h1", 0),)), "preferred_hosts",
     "score must be 1 to 1000000", True),
    (add_vm(preferred_hosts=(("h1", 1), ("h1", 2))), "preferred_hosts", "listed twice", True),
    (c.SetVmOptions(name="db1", preferred_hosts=(("h 1", 5),)), "preferred_hosts",
     "invalid host name", False),
    (c.SetVmOptions(name="db1", failback="sometimes"), "failback",  # type: ignore[arg-type]
     "is not one of never|auto", False),
    (c.SetSettings(failback_max_concurrent=-1), "failback_max_concurrent", ">= 0", True),
    (c.SetSettings(failback_hold_down_s=-1.0), "failback_hold_down_s", "seconds >= 0", True),
    (c.AddHost(name="bad name"), "name", "invalid host name 'bad name'", True),
    (c.AddHost(name="-h1"), "name", "invalid host name", True),
    (c.AddHost(name="h1", memory_mib=-1), "memory_mib", "must be >= 0", True),
    (c.AddHost(name="h1", addresses=("main",)), "addresses", "expected link=address", True),
    (c.AddHost(name="h1", addresses=("a=1", "a=2")), "addresses", "listed twice", False),
    (c.AddHost(name="h1", raft_address="10.0.0.1"), "raft_address", "host:port", False),
    (c.AddHost(name="h1", raft_address="h:99999"), "raft_address", "host:port", False),
    (c.AddHost(name="h1", bmc=BmcOverride(action="explode")), "bmc.action",
     "expected one of off|reboot|none|identify", True),
    (c.AddHost(name="h1", bmc=BmcOverride(driver="IPMI")), "bmc.driver", "BMC driver", True),
    (c.AddHost(name="h1", bmc=BmcOverride(port=70000)), "bmc.port", "out of range", True),
    (c.AddHost(name="h1", role="king"), "role", "'king' is not one of", False),  # type: ignore[arg-type]
    (c.RemoveHost(name="h1\n"), "name", "invalid host name", False),
    (c.HostReady(name="h1", vcpus=-2), "memory_mib", "must be >= 0", False),
    (c.ReportBmcHealth(name="h1", ok=True, detail="x" * (MAX_TEXT_BYTES + 1)), "detail",
     f"the limit is {MAX_TEXT_BYTES}", False),
    (c.SetPeerStopped(name="", stopped=True), "name", "invalid host name", False),
    (c.SetHostAddresses(name="h1", addresses=()), "addresses", "at least one lease link", True),
    (c.SetHostAddresses(name="h1", addresses=("a=1", "a=2")), "addresses", "twice", True),
    (c.SetHostRole(name="h1", role="boss"), "role", "is not one of", False),  # type: ignore[arg-type]
    (c.AnnounceVersions(name="h1", commands=(), entry_formats=(1,)), "commands",
     "at least one command", True),
    (c.AnnounceVersions(name="h1", commands=(("Add VM", 1),), entry_formats=(1,)),
     "commands", "not a command version", True),
    (c.ReportHostLoad(name="h1", load=math.nan), "load", "finite number >= 0", True),
    (c.ReportHostLoad(name="h1", load=-1.0), "load", "finite number >= 0", True),
    (c.SetHostMaintenance(name="h1", on="yes"), "on", "expected a boolean", False),  # type: ignore[arg-type]
    (c.SetHostBmc(name="h1", bmc=BmcOverride(port=-1)), "bmc.port", "out of range", True),
    (c.MarkHostSuspect(name="h 1", evidence="-"), "name", "invalid host name", False),
    (c.MarkHostAlive(name="h1", evidence=7), "evidence", "expected a string", False),  # type: ignore[arg-type]
    (c.RequestFence(host="h1", reason="-", evidence="-", term=-1), "term", ">= 0", False),
    (c.ConfirmFence(host="h1", token=7, result=FenceResult.TIMEOUT, evidence="", method=""),
     "result", "does not prove host h1 is off", True),
    (c.ConfirmFence(host="h1", token=0, result=FenceResult.OFF, evidence="", method=""),
     "token", "log index >= 1", False),
    (c.FenceFailed(host="h1", token=7, result=FenceResult.OFF, evidence="", method=""),
     "result", "is not a failure", True),
    (c.AdminConfirmFence(host="h1", who="alice", reason="  "), "reason",
     "needs who and a reason", True),
    (c.AdminConfirmFence(host="h1", who="alice", reason="x" * 20_000), "reason",
     "bytes of text", False),
    (c.RetryFence(host="bad/host", who="alice"), "host", "invalid host name", False),
    (c.HoldFence(host="h1", reason=""), "reason", "needs a reason", True),
    (c.CancelFence(host="", evidence="-"), "host", "invalid host name", False),
    (c.ReportWatchdog(name="h1", watchdog=Watchdog(armed=True)), "watchdog.armed",
     "cannot have it armed", True),
    (c.ReportWatchdog(name="h1", watchdog=Watchdog(WatchdogKind.COMMAND, 0.0, 5.0)),
     "watchdog.timeout_s", "timeout_s must be a positive number", True),
    (c.WatchdogConfirm(host="h1", token=0, evidence="late"), "token", ">= 1", True),
    (c.WatchdogConfirm(host="h1", token=3, evidence=" "), "evidence", "its timing", True),
    (c.SetSettings(watchdog_margin_s=-1.0), "watchdog_margin_s", ">= 0", True),
    (c.ReportStorage(name="h1", heartbeat_paths=("pool",)), "heartbeat_paths",
     "expected an absolute directory", True),
    (c.ReportStorage(name="h1", heartbeat_paths=("/mnt/../etc",)), "heartbeat_paths",
     "without '..'", True),
    (c.ReportStorage(name="h1", heartbeat_paths=("/a", "/a")), "heartbeat_paths",
     "listed twice", True),
    (c.ReportStorage(name="h1", heartbeat_paths=tuple(f"/p{i}" for i in range(9))),
     "heartbeat_paths", "at most 8", True),
    (c.StorageChecked(host="h1", check=StorageCheck()), "check.verdict", "needs a verdict",
     True),
    (c.StorageChecked(host="h1", token=-1, check=QUIET), "token", ">= 0", True),
    (c.StorageChecked(host="h1", check=StorageCheck(StorageVerdict.QUIET, -1)),
     "check.checks", ">= 0", True),
    (c.RequestFence(host="h1", reason="r", evidence="e", storage=StorageCheck(
        StorageVerdict.QUIET, 3, ("x",) * 33)), "storage.reads", "at most 32", True),
    (c.WatchdogConfirm(host="h1", token=3, evidence="e", storage=StorageCheck(checks=2)),
     "storage.verdict", "without a verdict", True),
    (add_vm(name="bad name", xml=xml("bad name")), "name", "invalid VM name 'bad name'", True),
    (add_vm(memory_mib=0), "memory_mib", "memory_mib and vcpus must be > 0", True),
    (add_vm(max_relocates=-1), "memory_mib", "max_restarts and max_relocates must be >= 0",
     True),
    (add_vm(xml="<domain><name>db1</name>"), "xml", "does not parse", False),
    (add_vm(xml="<vm><name>db1</name></vm>"), "xml", "root element is <vm>", False),
    (add_vm(xml="<domain><memory>1</memory></domain>"), "xml", "has no <name>", False),
    (add_vm(xml=xml("db2")), "xml", "names 'db2', not the VM's name 'db1'", False),
    (add_vm(xml='<!DOCTYPE d [<!ENTITY a "aaaa">]><domain><name>db1</name></domain>'),
     "xml", "must not contain a DOCTYPE", False),
    (add_vm(xml=xml(extra="<description>" + "x" * MAX_DOMAIN_XML_BYTES + "</description>")),
     "xml", f"larger than the limit of {MAX_DOMAIN_XML_BYTES} bytes (256 KiB)", False),
    (add_vm(ha="always"), "ha", "'always' is not one of restart|none", False),
    (add_vm(priority=True), "priority", "expected an integer, got bool", False),
    (add_vm(priority=2**70), "priority", "cannot be written to the log", False),
    (add_vm(allowed_hosts=("h1", "h 2")), "allowed_hosts", "invalid host name 'h 2'", False),
    (add_vm(anti_affinity="db group"), "anti_affinity", "invalid anti-affinity group", False),
    (c.RemoveVm(name="db1 "), "name", "invalid VM name", False),
    (c.SetVmOptions(name="db1"), "name", "nothing to change", True),
    (c.SetVmOptions(name="db1", xml="<domain><name>db1</name></domain"), "xml",
     "does not parse", False),
    (c.SetVmOptions(name="db1", xml=xml("web1")), "xml", "not the VM's name", False),
    (c.SetVmOptions(name="db1", max_restarts=-1), "max_restarts", ">= 0", False),
    (c.SetVmDesired(name="db1", desired="running"), "desired", "is not one of", False),  # type: ignore[arg-type]
    (c.MigrateVm(name="db1", target="h 2"), "target", "invalid host name", False),
    (c.VmReport(name="db1", host="h1", placement=3, observed="exploded"), "observed",
     "unknown report 'exploded'", True),
    (c.VmReport(name="db1", host="h1", placement=-3, observed="started"), "placement",
     ">= 0", False),
    (c.SetSettings(), "", "no setting given", True),
    (c.SetSettings(fence_cap=-1), "fence_cap", "fence_cap must be >= 0", True),
    (c.SetSettings(fence_retry_limit=0), "fence_retry_limit", "fence_retry_limit >= 1", True),
    (c.SetSettings(fence_retry_backoff_s=math.nan), "fence_retry_backoff_s",
     "fence_retry_backoff_s >= 0", True),
    (c.SetSettings(lease_ttl_s=0.0), "lease_ttl_s", "lease_ttl_s must be a positive", True),
    (c.SetSettings(vcpu_overcommit=math.inf), "vcpu_overcommit", "positive number", True),
    (c.SetSettings(lease_renew_s=2.0, lease_ttl_s=1.0), "lease_ttl_s",
     "lease_renew_s < lease_suspect_s < lease_ttl_s (given: lease_renew_s=2.0, "
     "lease_ttl_s=1.0)", False),
    (c.SetSettings(selector="random"), "selector", "is not one of", False),  # type: ignore[arg-type]
    (c.SetBmcDefaults(bmc=BmcSettings(driver="")), "bmc.driver", "BMC driver ''", True),
    (c.SetBmcDefaults(bmc=BmcSettings(port=0)), "bmc.port", "BMC port 0 out of range", True),
    (c.SetClusterMaintenance(on=True, who="x" * 20_000), "who", "bytes of text", False),
    (c.Noop(term=-2), "term", ">= 0", False),
    (c.SetHostFencing(name="h1", levels=(FenceLevel((FenceDevice("agent", "pdu1",
                                                                agent="rm"),)),)),
     "levels", "expected a fence_* executable", True),
]


def test_every_command_type_has_good_and_bad_examples() -> None:
    assert {type(cmd) for cmd in GOOD} == set(c.ALL_COMMANDS)
    assert {type(cmd) for cmd, *_ in BAD} == set(c.ALL_COMMANDS)


@pytest.mark.parametrize("command", GOOD, ids=lambda cmd: cmd.TYPE)
def test_valid_commands_pass_every_rule(command: c.Command) -> None:
    assert command_problem(command) == ""
    assert find_problem(command, at_apply=True) is None


@pytest.mark.parametrize(("command", "field", "why", "at_apply"), BAD,
                         ids=[f"{cmd.TYPE}-{field or 'command'}" for cmd, field, *_ in BAD])
def test_invalid_commands_are_refused_naming_the_field(command: c.Command, field: str,
                                                       why: str, at_apply: bool) -> None:
    problem = find_problem(command)
    assert problem is not None
    assert (problem.field, problem.kind) == (field, INVALID)
    assert why in problem.message
    assert command_problem(command) == problem.message
    applied = find_problem(command, at_apply=True)
    assert (applied is not None) is at_apply  # apply checks only the rules it always had


def test_apply_refuses_with_the_same_rule_and_message() -> None:
    cluster = Cluster()
    for command, _, why, at_apply in BAD:
        if not at_apply:
            continue
        events = cluster.run(command)
        assert kinds(events) == ["rejected"], command
        assert events[0].message == command_problem(command), command
        assert why in events[0].message


def test_apply_still_accepts_what_only_the_api_refuses() -> None:
    """Entries of the previous release: a peer that refused them on replay (or beside a
    peer of that release) would hold another state from that index on."""
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.ok(c.AddHost(name="h2", addresses=("a=1", "a=2"), role=HostRole.MEMBER))
    big = xml(extra="<description>" + "x" * MAX_DOMAIN_XML_BYTES + "</description>")
    for name, text in (("v1", "<domain/>"), ("v2", big), ("v3", xml("other")), ("v4", "")):
        assert command_problem(add_vm(name=name, xml=text))
        cluster.ok(add_vm(name=name, xml=text, desired=Desired.STOPPED))
    cluster.ok(c.SetVmOptions(name="v1", xml="<not xml"))
    assert cluster.vm("v1").xml == "<not xml"


def test_a_command_over_the_log_limit_names_its_largest_field() -> None:
    options = tuple((f"k{i}", "v" * 1000) for i in range(MAX_COMMAND_BYTES // 1000))
    problem = find_problem(c.SetHostBmc(name="h1", bmc=BmcOverride(options=options)))
    assert problem is not None and problem.field == "bmc"
    assert f"more than {MAX_COMMAND_BYTES} bytes" in problem.message


def test_the_limits_stay_far_below_what_raft_and_the_rpc_carry() -> None:
    envelope_overhead = 1024
    assert MAX_DOMAIN_XML_BYTES < MAX_COMMAND_BYTES
    assert MAX_COMMAND_BYTES + envelope_overhead < RaftSettings().max_command_bytes


def test_domain_xml_checks() -> None:
    assert domain_xml_name(xml("web1")) == "web1"
    assert domain_xml_name("<domain><name> web1 </name><name>x</name></domain>") == "web1"
    assert domain_xml_name("<?xml version='1.0'?>\n<domain><name>a<b/>c</name></domain>") == "a"
    assert domain_xml_problem(xml("web1"), "web1") == ""
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            "<domain><name>&lol2;</name></domain>")
    assert "DOCTYPE" in domain_xml_problem(bomb)
    external = ('<!DOCTYPE d SYSTEM "file:///etc/passwd"><domain><name>a</name></domain>')
    assert "DOCTYPE" in domain_xml_problem(external)
    assert "does not parse" in domain_xml_problem("<domain><name>&undefined;</name></domain>")
    assert "root element is <{urn:x}domain>" in domain_xml_problem(
        "<domain xmlns='urn:x'><name>a</name></domain>")
    assert "not valid Unicode" in domain_xml_problem("<domain><name>\udc80</name></domain>")
    exact = xml(extra="<description></description>")
    pad = MAX_DOMAIN_XML_BYTES - len(exact)
    at_limit = xml(extra="<description>" + "é" * (pad // 2) + "</description>")
    assert domain_xml_problem(at_limit) == ""
    assert "larger than the limit" in domain_xml_problem(at_limit.replace("é", "éé", 1))


# ---------------------------------------------------------------- against the state

def built() -> Cluster:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.add_vm("db1", xml=xml())
    cluster.ok(c.AddHost(name="h3", role=HostRole.MEMBER))
    cluster.ok(c.RemoveHost(name="h3"))
    return cluster


@pytest.mark.parametrize(("command", "field", "kind", "why"), [
    (add_vm(), "name", EXISTS, "VM db1 already exists"),
    (c.AddHost(name="h2"), "name", EXISTS, "host h2 already exists (online)"),
    (c.RemoveVm(name="db9"), "name", UNKNOWN, "unknown VM 'db9'"),
    (c.MigrateVm(name="db1", target="h9"), "target", UNKNOWN, "unknown host 'h9'"),
    (c.SetHostMaintenance(name="h3", on=True), "name", UNKNOWN, "unknown host 'h3'"),
    (c.AdminConfirmFence(host="h7", who="a", reason="b"), "host", UNKNOWN, "unknown host"),
    (c.SetSettings(lease_ttl_s=1.0), "lease_ttl_s", INVALID,
     "(got 0.5 < 1.5 < 1.0)"),
])
def test_state_checks_name_what_the_replica_lacks_or_has(command: c.Command, field: str,
                                                         kind: str, why: str) -> None:
    problem = state_problem(built().state, command)
    assert problem is not None and (problem.field, problem.kind) == (field, kind)
    assert why in problem.message


@pytest.mark.parametrize("command", [
    add_vm(name="db2", xml=xml("db2")),
    c.AddHost(name="h3"),  # removed: may be added again
    c.MigrateVm(name="db1", target="h2"),
    c.SetVmOptions(name="db1", allowed_hosts=("h8",)),  # a host still to come
    c.VmReport(name="db1", host="h9", placement=1, observed="started"),
    c.SetSettings(lease_ttl_s=2.0),
    c.SetClusterMaintenance(on=True),
])
def test_state_checks_pass_what_apply_may_accept(command: c.Command) -> None:
    assert state_problem(built().state, command) is None


def test_state_checks_agree_with_apply_on_names() -> None:
    """Every command the state check refuses, apply refuses on the same state too."""
    commands = [
        c.RemoveVm(name="db9"), c.SetVmDesired(name="nope", desired=Desired.STOPPED),
        c.HostReady(name="h3"), c.SetHostRole(name="h3", role=HostRole.VOTER),
        c.RequestFence(host="h9", reason="r", evidence="e"), add_vm(),
        c.AddHost(name="h1"), c.SetSettings(lease_suspect_s=9.0),
    ]
    for command in commands:
        cluster = built()
        assert state_problem(cluster.state, command) is not None, command
        assert kinds(cluster.run(command)) == ["rejected"], command


# ---------------------------------------------------------------- the tiers

def odd(rng: random.Random, command: c.Command) -> c.Command:
    """The command with one field set to a value of its type that is often invalid."""
    field = rng.choice(dataclasses.fields(command))
    value = getattr(command, field.name)
    pools: list[tuple[type, tuple[object, ...]]] = [
        (bool, ()),
        (str, ("", " ", "bad name", "x" * 70, "<domain/>", "a=b", "h1\n", "crashed")),
        (int, (-5, -1, 0, 1, 65536)),
        (float, (-1.0, 0.0, math.nan, math.inf, 0.1)),
        (tuple, ((), ("",), ("a=b", "a=c"), ("h1", "h1"))),
    ]
    pool = next((p for kind, p in pools if type(value) is kind), ())  # enums stay
    if isinstance(value, tuple) and not (value and all(type(v) is str for v in value)):
        pool = ()
    return dataclasses.replace(command, **{field.name: rng.choice(pool)}) if pool else command


def test_apply_refuses_a_subset_of_what_the_api_refuses() -> None:
    """Whatever apply's tier refuses, the API's refuses too, so the rule set is one:
    apply's tier only leaves out rules."""
    rng, chooser, cluster = random.Random(5), RandomChooser(5), Cluster()
    refused = 0
    for _ in range(3000):
        command = odd(rng, next_command(chooser, cluster.state))
        applied = find_problem(command, at_apply=True)
        if applied is not None:
            refused += 1
            assert find_problem(command) is not None, command
        cluster.run(command)
    assert refused > 100
