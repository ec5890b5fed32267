"""Checks of a libvirt domain XML that need no libvirt and do no I/O, for the rule set
of fsm/validate.py (the hypervisor adapter reads the XML on its own, hypervisor/domxml.py).

MAX_DOMAIN_XML_BYTES (256 KiB) bounds a domain XML proposed through the admin API. Real
definitions take a few KiB (a large VM with dozens of disks and NICs, some tens); every
XML is replicated to every peer, kept in every journal and in every snapshot of the state,
and an entry of megabytes delays the heartbeats queued behind it on the same connection
(a legal 2.8 MB XML sent three times cost several elections, issue 9). 256 KiB is far
below the RPC frame limit (4 MiB), the Raft node's max_command_bytes (512 KiB, which
pysyncobj's batching needs) and the 1 MiB that apply has always enforced
(APPLY_MAX_XML_BYTES, kept for the entries already in logs: fsm/validate.py says why).

The XML is parsed by expat with DOCTYPE and entity declarations refused, so no entity is
ever expanded (no "billion laughs") and nothing external is fetched.
"""

from __future__ import annotations

from typing import Any
from xml.parsers import expat

MAX_DOMAIN_XML_BYTES = 256 * 1024
APPLY_MAX_XML_BYTES = 1024 * 1024  # what apply refuses (since the first release)


class _Stop(Exception):
    """Ends parsing from inside an expat handler, with the reason."""


class _DomainReader:
    """Reads the root element and the text of its first <name> child."""

    def __init__(self) -> None:
        self.depth = 0
        self.name: list[str] | None = None
        self.reading = False

    def start(self, tag: str, attrs: object) -> None:
        self.depth += 1
        if self.depth == 1 and tag != "domain":
            shown = "{" + tag if "}" in tag else tag  # "{namespace}tag", as ElementTree
            raise _Stop(f"root element is <{shown}>, expected <domain>")
        if self.depth == 2 and tag == "name" and self.name is None:
            self.name, self.reading = [], True
        else:
            self.reading = False  # an element inside <name> ends its text

    def end(self, tag: str) -> None:
        self.depth -= 1
        self.reading = False

    def text(self, data: str) -> None:
        if self.reading and self.name is not None:
            self.name.append(data)


def _refuse(*args: object) -> None:
    raise _Stop("domain XML must not contain a DOCTYPE or entities")


def _parser(reader: _DomainReader | _DiskReader) -> Any:
    """An expat parser calling `reader` for elements, refusing DOCTYPE and entity
    declarations (nothing is ever expanded or fetched)."""
    parser = expat.ParserCreate(namespace_separator="}")  # tags as ElementTree spells them
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    return parser


def domain_xml_name(xml: str) -> str:
    """The <name> of a domain definition; raises ValueError saying what is wrong.
    Parsed by expat with no DOCTYPE allowed, so no entity is ever expanded or fetched."""
    reader = _DomainReader()
    parser = _parser(reader)
    parser.CharacterDataHandler = reader.text
    try:
        parser.Parse(xml, True)
    except _Stop as exc:
        raise ValueError(str(exc)) from None
    except expat.ExpatError as exc:
        raise ValueError(f"domain XML does not parse: {exc}") from None
    except UnicodeError:
        raise ValueError("domain XML is not valid Unicode text") from None
    name = "".join(reader.name or ()).strip()
    if not name:
        raise ValueError("domain XML has no <name>")
    return name


def domain_xml_problem(xml: str, name: str | None = None) -> str:
    """Size first (cheap), then well-formed, a <domain>, and named `name` if given."""
    size = len(xml.encode("utf-8", "surrogatepass"))
    if size > MAX_DOMAIN_XML_BYTES:
        return (f"domain XML of {size} bytes is larger than the limit of "
                f"{MAX_DOMAIN_XML_BYTES} bytes ({MAX_DOMAIN_XML_BYTES // 1024} KiB)")
    try:
        found = domain_xml_name(xml)
    except ValueError as exc:
        return str(exc)
    if name is not None and found != name:
        return f"domain XML names {found!r}, not the VM's name {name!r}"
    return ""


def applied_xml_size_problem(xml: str) -> str:
    if len(xml.encode()) > APPLY_MAX_XML_BYTES:
        return f"domain XML larger than {APPLY_MAX_XML_BYTES} bytes"
    return ""


class _DiskReader:
    """Collects `<domain><devices><disk type="file"><source file="..."/>`."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.file_disk = False
        self.files: list[str] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.path.append(tag)
        if self.path[1:] == ["devices", "disk"]:
            self.file_disk = attrs.get("type", "file") == "file"
        elif self.path[1:] == ["devices", "disk", "source"] and self.file_disk and \
                attrs.get("file"):
            self.files.append(attrs["file"])

    def end(self, tag: str) -> None:
        self.path.pop()


def domain_disk_files(xml: str) -> tuple[str, ...]:
    """The image files of a domain's file-backed disks, in order, each once (none when
    the XML does not parse: the storage check then reads the heartbeats only)."""
    reader = _DiskReader()
    parser = _parser(reader)
    try:
        parser.Parse(xml, True)
    except (_Stop, expat.ExpatError, UnicodeError):
        return ()
    return tuple(dict.fromkeys(reader.files))
