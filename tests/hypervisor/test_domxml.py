"""Domain XML helpers and URI spelling, without a connection."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from hacluster.hypervisor import domxml
from hacluster.hypervisor.domxml import p2p_uri


@pytest.mark.parametrize("kind", ["kvm", "qemu", "test"])
def test_minimal_domain_xml(kind: domxml.DomainType) -> None:
    xml = domxml.minimal_domain_xml("web-1", memory_mib=48, vcpus=2, domain_type=kind)
    root = ET.fromstring(xml)
    assert root.get("type") == kind
    assert domxml.domain_name(xml) == "web-1"
    assert root.findtext("memory") == "48" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"
    assert root.find("devices/disk") is None


def test_names_are_escaped() -> None:
    xml = domxml.minimal_domain_xml("a<b&c", domain_type="test")
    assert domxml.domain_name(xml) == "a<b&c"


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<domain><name>", "does not parse"),
        ("<network><name>x</name></network>", "expected <domain>"),
        ("<domain type='test'><memory>1</memory></domain>", "no <name>"),
    ],
)
def test_bad_xml_is_refused(xml: str, message: str) -> None:
    with pytest.raises(domxml.DomainXmlError, match=message):
        domxml.domain_name(xml)


def test_bad_spec_is_refused() -> None:
    with pytest.raises(domxml.DomainXmlError):
        domxml.minimal_domain_xml("x", memory_mib=0)


def test_stamp_round_trip_keeps_the_callers_uuid_or_fills_ours() -> None:
    xml = domxml.minimal_domain_xml("vm", domain_type="test")
    digest = domxml.xml_digest(xml)
    stamped = domxml.stamped(xml, digest, uuid="6f0f2b5e-0000-4000-8000-000000000001")
    root = ET.fromstring(stamped)
    assert root.findtext("uuid") == "6f0f2b5e-0000-4000-8000-000000000001"
    element = root.find(f"metadata/{{{domxml.STAMP_NS}}}{domxml.STAMP_TAG}")
    assert element is not None
    assert domxml.stamp_digest(ET.tostring(element, encoding="unicode")) == digest
    # stamping again replaces the old stamp instead of adding a second one
    again = ET.fromstring(domxml.stamped(stamped, "other"))
    assert len(again.findall(f"metadata/{{{domxml.STAMP_NS}}}{domxml.STAMP_TAG}")) == 1
    assert again.findtext("uuid") == "6f0f2b5e-0000-4000-8000-000000000001"


def test_digest_ignores_whitespace_only() -> None:
    xml = domxml.minimal_domain_xml("vm", domain_type="test")
    assert domxml.xml_digest(xml) == domxml.xml_digest(xml.replace("\n", "\n\n  "))
    assert domxml.xml_digest(xml) != domxml.xml_digest(xml.replace("32", "64"))
    assert domxml.stamp_digest("not xml") is None


def test_domain_type_for_uri() -> None:
    assert domxml.domain_type_for("test:///default") == "test"
    assert domxml.domain_type_for("test+unix:///default?socket=/x") == "test"
    assert domxml.domain_type_for("qemu:///system") in ("kvm", "qemu")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("qemu:///system?socket=/tmp/a/s", "qemu+unix:///system?socket=/tmp/a/s"),
        ("qemu+unix:///system?socket=/tmp/a/s", "qemu+unix:///system?socket=/tmp/a/s"),
        ("qemu+ssh://host/system", "qemu+ssh://host/system"),
        ("qemu+tcp://10.0.0.2/system", "qemu+tcp://10.0.0.2/system"),
    ],
)
def test_p2p_uri(uri: str, expected: str) -> None:
    assert p2p_uri(uri) == expected
