"""The event history's files: JSON lines in numbered segments under one directory,
bounded by size and by age.

    DIR/events-00000001.jsonl   oldest
    DIR/events-00000002.jsonl   ...the newest is appended to

One record per line (daemon/history.py says what a record holds; here it is a dict with
a number "time" and, for a replicated entry, its log "index"). A segment is closed once
it holds an eighth of the cap; the oldest segments are deleted while the total exceeds
the cap, or once their newest record is older than the age cap. The newest segment is
never deleted, so the total stays within the cap plus one segment.

Damage never stops the peer: at open, a record cut off at the end of the newest segment
(a crash in the middle of a write) is cut away, and lines that do not parse anywhere
else are skipped and counted; `problems` says what was found, file and line. Entries
still in the Raft journal are applied again at start, and write their records again.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEGMENT_RE = re.compile(r"^events-(\d{8})\.jsonl$")
SEGMENTS_PER_CAP = 8
MIN_SEGMENT_BYTES = 1024

Record = dict[str, Any]


@dataclass
class Segment:
    path: Path
    number: int
    size: int = 0
    oldest: float = float("inf")  # time of its records
    newest: float = float("-inf")
    last_index: int = 0  # largest log index of a replicated entry in it

    def note(self, record: Record, size: int) -> None:
        self.size += size
        self.oldest = min(self.oldest, record["time"])
        self.newest = max(self.newest, record["time"])
        if not record.get("local"):
            self.last_index = max(self.last_index, record.get("index", 0))


EVENT_TEXT = ("kind", "subject", "message", "host", "vm")


def parse_record(line: bytes) -> Record | None:
    """One line as a record, or None if it is not one (damaged): what a query reads
    from a record is all there and of its type."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested beyond reason
        return None
    if not isinstance(record, dict) or not _number(record.get("time")) \
            or type(record.get("index")) is not int \
            or not all(isinstance(record.get(k), str) for k in ("origin", "command")) \
            or not isinstance(record.get("events"), list) \
            or not all(_event_shape(e) for e in record["events"]):
        return None
    return record


def _number(value: object) -> bool:
    return type(value) in (int, float)


def _event_shape(event: object) -> bool:
    return isinstance(event, dict) and isinstance(event.get("data"), dict) and \
        all(isinstance(event.get(k), str) for k in EVENT_TEXT)


def encode_record(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"


class SegmentStore:
    """Only the writer thread appends; readers may run at the same time (a segment
    deleted under them is skipped)."""

    def __init__(self, directory: Path, max_bytes: int, max_age_s: float,
                 wall: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = max(MIN_SEGMENT_BYTES, max_bytes // SEGMENTS_PER_CAP)
        self.wall = wall
        self.segments: list[Segment] = []
        self.problems: list[str] = []
        self.damaged_lines = 0
        self._lock = threading.Lock()  # guards `segments` (the list, not the files)
        self._out: Any = None  # the newest segment, open for appending

    # ------------------------------------------------------------ open

    def open(self) -> None:
        """Scan what is there, repair a cut-off end. Raises OSError if the directory
        cannot be made or written (the caller keeps its history in memory then)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.directory}: not writable")
        found = sorted((int(m.group(1)), p) for p in self.directory.iterdir()
                       if (m := SEGMENT_RE.match(p.name)))
        for i, (number, path) in enumerate(found):
            segment = self._scan(path, number, newest=i == len(found) - 1)
            if segment is not None:
                self.segments.append(segment)
        self._prune()
        if not self.segments:
            self.segments.append(Segment(self.directory / _name(1), 1))
        self._out = open(self.segments[-1].path, "ab")  # noqa: SIM115 - kept open

    def _scan(self, path: Path, number: int, newest: bool) -> Segment | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.problems.append(f"{path}: cannot be read ({exc.strerror}); left out")
            return None
        segment = Segment(path, number)
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        for line_no, line in enumerate(lines, 1):
            record = parse_record(line) if line.strip() else None
            if record is None:
                if line.strip():
                    self._damaged(path, line_no)
                segment.size += len(line) + 1
                continue
            segment.note(record, len(line) + 1)
        if tail:
            if newest:  # the last write was cut off: cut it away, append after it
                with open(path, "r+b") as f:
                    f.truncate(len(data) - len(tail))
                self.problems.append(f"{path}: a record cut off at its end ({len(tail)} "
                                     "bytes, a crash while writing) was removed")
            else:
                self._damaged(path, len(lines) + 1)
                segment.size += len(tail)
        return segment

    def _damaged(self, path: Path, line_no: int) -> None:
        self.damaged_lines += 1
        if self.damaged_lines <= 10:
            self.problems.append(f"{path}:{line_no}: not a history record; skipped")

    @property
    def last_index(self) -> int:
        return max((s.last_index for s in self.segments), default=0)

    # ------------------------------------------------------------ write

    def append(self, records: list[Record]) -> None:
        for record in records:
            line = encode_record(record)
            if self.segments[-1].size and self.segments[-1].size + len(line) > \
                    self.segment_bytes:
                self._rotate()
            self._out.write(line)
            self.segments[-1].note(record, len(line))
        self._out.flush()

    def _rotate(self) -> None:
        self._out.close()
        number = self.segments[-1].number + 1
        with self._lock:
            self.segments.append(Segment(self.directory / _name(number), number))
        self._out = open(self.segments[-1].path, "ab")  # noqa: SIM115 - kept open
        self._prune()

    def _prune(self) -> None:
        too_old = self.wall() - self.max_age_s
        while len(self.segments) > 1 and (
                sum(s.size for s in self.segments) > self.max_bytes
                or self.segments[0].newest < too_old):
            with self._lock:
                gone = self.segments.pop(0)
            gone.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None

    # ------------------------------------------------------------ read

    def read(self, since: float, until: float, newest_first: bool = False
             ) -> Iterator[list[Record]]:
        """The records of each segment that may hold times in [since, until], one list
        per segment (in file order), oldest segment first or newest first."""
        with self._lock:
            chosen = [s for s in self.segments if s.newest >= since and s.oldest <= until]
        for segment in reversed(chosen) if newest_first else chosen:
            try:
                data = segment.path.read_bytes()
            except FileNotFoundError:  # pruned meanwhile
                continue
            lines = data.split(b"\n")
            lines.pop()  # an unfinished last line: being written right now
            yield [r for line in lines if line.strip() and (r := parse_record(line))]


def _name(number: int) -> str:
    return f"events-{number:08d}.jsonl"
