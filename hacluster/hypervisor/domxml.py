"""Domain XML and URI helpers that need no libvirt: build a minimal domain,
read its name, stamp a digest of the caller's XML into <metadata>, and spell a
peer-to-peer migration destination.

The stamp lets the libvirt adapter tell "same definition again" (no-op) from
"definition changed" (redefine) without comparing against libvirt's normalised
XML, which never equals what the caller wrote.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

DomainType = Literal["kvm", "qemu", "test"]

# Namespace of our own <metadata> element; libvirt keeps one element per URI.
STAMP_NS = "https://hacluster.invalid/xmlns/define/1"
STAMP_TAG = "define"


class DomainXmlError(ValueError):
    """The XML is not a usable domain definition."""


def domain_type_for(uri: str) -> DomainType:
    """The domain type that fits a connection URI on this machine: the test
    driver wants "test"; QEMU gets "kvm" when /dev/kvm is usable, else TCG."""
    if uri.split(":", 1)[0].split("+", 1)[0] == "test":
        return "test"
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


def minimal_domain_xml(
    name: str,
    memory_mib: int = 32,
    vcpus: int = 1,
    domain_type: DomainType = "kvm",
    uuid: str | None = None,
    disk: str = "",
) -> str:
    """A diskless domain: enough to boot into firmware and idle, for tests and
    the demo. It has no ACPI, so a graceful shutdown never completes. `disk`: the
    path of a raw image to attach as its one writable disk (QEMU only)."""
    if not name or memory_mib <= 0 or vcpus <= 0:
        raise DomainXmlError(f"bad domain spec name={name!r} memory={memory_mib} vcpus={vcpus}")
    uuid_line = f"  <uuid>{escape(uuid)}</uuid>\n" if uuid else ""
    if domain_type == "test":
        os_block = "  <os><type>hvm</type></os>\n"
        devices = "  <devices/>\n"
    else:
        # Let libvirt pick the emulator from its capabilities; no balloon, no
        # display and no disk keep QEMU start, stop and migration fast.
        os_block = "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n"
        drive = (
            "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file={quoteattr(disk)}/><target dev='vda' bus='virtio'/></disk>\n"
            if disk else "")
        devices = f"  <devices>\n{drive}    <memballoon model='none'/>\n  </devices>\n"
    return (
        f"<domain type={quoteattr(domain_type)}>\n"
        f"  <name>{escape(name)}</name>\n"
        f"{uuid_line}"
        f"  <memory unit='MiB'>{int(memory_mib)}</memory>\n"
        f"  <vcpu>{int(vcpus)}</vcpu>\n"
        f"{os_block}"
        "  <on_crash>destroy</on_crash>\n"
        f"{devices}"
        "</domain>\n"
    )


def _parse(xml: str) -> ET.Element:
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:  # no entity expansion bombs from users
        raise DomainXmlError("domain XML must not contain a DOCTYPE or entities")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXmlError(f"domain XML does not parse: {exc}") from exc
    if root.tag != "domain":
        raise DomainXmlError(f"root element is <{root.tag}>, expected <domain>")
    return root


def domain_name(xml: str) -> str:
    """The <name> of a domain definition."""
    node = _parse(xml).find("name")
    if node is None or not (node.text or "").strip():
        raise DomainXmlError("domain XML has no <name>")
    return (node.text or "").strip()


_UNITS_TO_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "kb": 1000 / 1024, "k": 1, "kib": 1,
                 "mb": 1e6 / 1024, "m": 1024, "mib": 1024, "gb": 1e9 / 1024, "g": 1024**2,
                 "gib": 1024**2, "tb": 1e12 / 1024, "t": 1024**3, "tib": 1024**3}


def domain_resources(xml: str) -> tuple[str, int, int]:
    """(name, memory MiB, vCPUs) of a domain definition, for `hactl vm add FILE`."""
    root = _parse(xml)
    name = domain_name(xml)
    memory = root.find("memory")
    if memory is None or not (memory.text or "").strip().isdigit():
        raise DomainXmlError("domain XML has no <memory> amount")
    unit = memory.get("unit", "KiB").lower()
    if unit not in _UNITS_TO_KIB:
        raise DomainXmlError(f"unknown memory unit {unit!r}")
    memory_mib = int(int((memory.text or "0").strip()) * _UNITS_TO_KIB[unit] // 1024)
    vcpu = root.find("vcpu")
    vcpus = int((vcpu.text or "1").strip()) if vcpu is not None else 1
    return name, max(memory_mib, 1), vcpus


def xml_digest(xml: str) -> str:
    """Digest of the caller's XML; whitespace-only edits count as no change."""
    canonical = " ".join(xml.split())
    return hashlib.sha256(canonical.encode()).hexdigest()


def stamped(xml: str, digest: str, uuid: str | None = None) -> str:
    """The XML with our digest element in <metadata>, and `uuid` filled in when
    the caller gave none (libvirt refuses to redefine a domain under a new uuid)."""
    root = _parse(xml)
    if uuid and root.find("uuid") is None:
        node = ET.Element("uuid")
        node.text = uuid
        root.insert(1, node)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(f"{{{STAMP_NS}}}{STAMP_TAG}"):
        metadata.remove(old)
    ET.SubElement(metadata, f"{{{STAMP_NS}}}{STAMP_TAG}", {"sha256": digest})
    return ET.tostring(root, encoding="unicode")


def stamp_digest(metadata_xml: str) -> str | None:
    """The digest from the element libvirt returns for our metadata namespace."""
    try:
        node = ET.fromstring(metadata_xml)
    except ET.ParseError:
        return None
    return node.get("sha256")


def p2p_uri(uri: str) -> str:
    """libvirt refuses a peer-to-peer destination without a host unless the URI
    names the unix transport explicitly; qemu:///system?socket=P means the same
    as qemu+unix:///system?socket=P, so spell it that way."""
    scheme, sep, rest = uri.partition("://")
    if sep and "+" not in scheme and "socket=" in rest and rest.startswith("/"):
        return f"{scheme}+unix://{rest}"
    return uri
