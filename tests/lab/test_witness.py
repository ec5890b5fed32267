"""The witnesses' account of a recovery: phases from the BMC log and reads and the
observer, nothing from the cluster; a witness that saw nothing leaves its phase out."""

from __future__ import annotations

import pytest

from hacluster.lab.bmc import PowerEvent, PowerRead
from hacluster.lab.witness import Recovery, power_loss, reads_after_loss


def test_the_power_loss_is_the_cut_with_the_cause_asked_for() -> None:
    events = [PowerEvent(0, 5.0, "power-off", "ipmi", "", 4.9),
              PowerEvent(0, 11.0, "power-off", "bench", "", 10.5)]
    assert power_loss(events, "bench", 0.0) == 10.5
    assert power_loss(events, "bench", 11.5) is None


def test_reads_answered_on_while_the_power_went_off_are_not_the_detection() -> None:
    reads = [PowerRead(9.0, True), PowerRead(10.03, True), PowerRead(11.2, False),
             PowerRead(11.4, False), PowerRead(13.0, False)]
    assert reads_after_loss(reads, 10.0, until=12.0) == (11.2, 11.4)
    assert reads_after_loss(reads, 10.0, until=None) == (11.2, 13.0)
    assert reads_after_loss(reads[:2], 10.0, until=None) == (None, None)


def test_a_phase_without_its_witness_is_missing_not_zero() -> None:
    seen = Recovery("h1", ("a", "b"), 10.0, 11.0, 11.2, {"a": 11.5, "b": 11.9})
    assert seen.phases() == pytest.approx({"total_s": 1.9, "first_vm_s": 1.5,
                                           "detection_s": 1.0, "fence_s": 0.2,
                                           "restart_s": 0.7})
    assert seen.missing == []
    blind = Recovery("h1", ("a", "b"), 10.0, None, None, {"a": 11.5, "b": None})
    phases = blind.phases()
    assert phases["total_s"] is None and phases["detection_s"] is None
    assert phases["fence_s"] is None and phases["first_vm_s"] == 1.5
    assert blind.missing == ["bmc-read", "bmc-read-off", "vm-start:b"]
