"""Event history and audit trail: every applied entry (who wrote it, when, what it
changed and why) and every decision of this peer, kept on disk on every peer, bounded
([history] max_mib, max_age_days), queryable by host, VM and time
(`hactl events --host --vm --since --until`, RPC `events`).

A record per applied log entry, the same on every peer:

    {"index": 41, "time": 1767261302.3, "origin": "root@h1", "command": "set-vm-desired",
     "events": [{"kind": "vm-state", "subject": "db1", "message": "...", "data": {...},
                 "host": "h2", "vm": "db1"}]}

`time` is the proposer's wall clock (informational, as in the log); `origin` the peer
that proposed it, or "user@peer" for a write through the admin API. A person's write
that changed nothing visible has no events; it is shown as one item of kind "write".
A peer's entry without events (a periodic load report, a BMC check as before) is not
recorded.
A record per decision this peer logged (daemon/logs.py `decision`: a fence run, a
power read, a proposal and why), with `"local": true`, this peer's own wall clock and
the index it had applied; only the deciding peer has those.

Records are taken on the Raft thread (and the loop, for decisions) and written by a
thread of their own (daemon/historyfiles.py). After a restart Raft applies the entries
still in its journal again: records at or below the last index on file are not written
twice. A history directory that cannot be used is logged and the history is kept in
memory instead; it never stops the peer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacluster.daemon.historyfiles import Record, SegmentStore
from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.events import Event
from hacluster.fsm.validate import subject_of

if TYPE_CHECKING:
    from hacluster.config import Config
    from hacluster.daemon.replica import Replica

log = logging.getLogger("hacluster.history")

VM_KINDS = frozenset({ev.VM_ADDED, ev.VM_REMOVED, ev.VM_UPDATED, ev.VM_STATE,
                      ev.VM_START_LOCKED})
WRITE = "write"  # the item shown for an entry that emitted no event
DECISION = "decision"
DECISION_LOGGERS = ("hacluster.peer", "hacluster.manager", "hacluster.agent", "hacluster.shutdown")
MEMORY_RECORDS = 10_000  # kept when the directory cannot be used
MAX_QUEUED = 100_000  # records waiting for the writer; more are dropped (and counted)
FLUSH_WAIT_S = 2.0  # a query first waits this long at most for what is queued

Item = dict[str, Any]
ItemListener = Callable[[list[Item]], None]


# ---------------------------------------------------------------- records

def _is_vm_command(command_type: str) -> bool:
    return "vm" in command_type.split("-")


def _event_doc(e: Event, command_type: str) -> dict[str, Any]:
    data = dict(e.data)
    about_vm = e.kind in VM_KINDS or (e.kind == ev.REJECTED and _is_vm_command(command_type))
    host, vm = (data.get("host", ""), e.subject) if about_vm else (e.subject, "")
    return {"kind": e.kind, "subject": e.subject, "message": e.message, "data": data,
            "host": host, "vm": vm}


def entry_record(index: int, entry: c.Envelope, events: list[Event]) -> Record:
    command_type = entry.command.TYPE
    record: Record = {"index": index, "time": entry.stamped_at, "origin": entry.origin,
                      "command": command_type,
                      "events": [_event_doc(e, command_type) for e in events]}
    if not events:
        subject = subject_of(entry.command)
        vm = subject if _is_vm_command(command_type) else ""
        record["subject"] = subject
        record["host"] = str(getattr(entry.command, "host", "")) if vm else subject
        record["vm"] = vm
    return record


def decision_record(log_record: logging.LogRecord, index: int, me: str) -> Record:
    fields = {k: str(v) for k, v in vars(log_record).items()
              if k not in _LOG_RECORD_FIELDS and k != "message"}
    reason = fields.pop("reason", "")
    host = fields.get("host", fields.get("target", ""))
    vm = fields.get("vm", "")
    subject = vm or host or fields.get("subject", "")
    return {"index": index, "time": log_record.created, "origin": me, "command": "",
            "local": True, "events": [{
                "kind": DECISION, "subject": subject,
                "message": f"{log_record.getMessage()}: {reason}" if reason
                else log_record.getMessage(),
                "data": fields, "host": host, "vm": vm}]}


_LOG_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


def items_of(record: Record) -> list[Item]:
    """A record as the items hactl shows, one per event."""
    head = {"index": record["index"], "time": record["time"], "origin": record["origin"],
            "command": record["command"], "local": bool(record.get("local"))}
    if not record["events"]:
        return [{**head, "kind": WRITE, "subject": record.get("subject", ""),
                 "message": f"{record['command']} (nothing to report)", "data": {},
                 "host": record.get("host", ""), "vm": record.get("vm", "")}]
    return [{**e, **head} for e in record["events"]]


def matches(item: Item, host: str, vm: str, since: float, until: float) -> bool:
    return ((not host or item["host"] == host) and (not vm or item["vm"] == vm)
            and since <= item["time"] <= until)


# ---------------------------------------------------------------- the history

class History:
    def __init__(self, directory: Path, max_bytes: int, max_age_s: float, me: str,
                 applied_index: Callable[[], int] = lambda: 0) -> None:
        self.me = me
        self.store = SegmentStore(directory, max_bytes, max_age_s)
        self.applied_index = applied_index
        self.error = ""  # why the files are not used ("" = they are)
        self.dropped = 0
        self._memory: deque[Record] = deque(maxlen=MEMORY_RECORDS)
        self._queue: deque[Record] = deque()
        self._cond = threading.Condition()
        self._queued = self._written = 0
        self._closing = False
        self._listeners: list[ItemListener] = []
        self._thread: threading.Thread | None = None
        self._handler: DecisionHandler | None = None
        self._opened = threading.Event()  # the files were read (or found unusable)

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Start the writer thread (it reads the files first, off the caller's thread)."""
        self._thread = threading.Thread(target=self._run, name="hacluster-history",
                                        daemon=True)
        self._thread.start()

    def record_decisions(self) -> None:
        """Record the decisions this process logs (one peer per process, as the daemon
        runs). Logged ones only: a log level above info records none."""
        self._handler = DecisionHandler(self)
        for name in DECISION_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)

    async def start(self) -> None:  # the peer's extra services: start(), close()
        return None

    async def close(self) -> None:
        if self._handler is not None:
            for name in DECISION_LOGGERS:
                logging.getLogger(name).removeHandler(self._handler)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            await _join(self._thread)

    # ------------------------------------------------------------ recording

    def record_entry(self, index: int, entry: c.Envelope, events: list[Event]) -> None:
        """Raft thread: one applied entry. A peer's own periodic report that changed
        nothing worth an event (its load, a BMC check as before) is left out: it
        would crowd out the history; a person's write is always kept."""
        if events or "@" in entry.origin:
            self._take(entry_record(index, entry, events))

    def record_decision(self, log_record: logging.LogRecord) -> None:
        self._take(decision_record(log_record, self.applied_index(), self.me))

    def _take(self, record: Record) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= MAX_QUEUED:
                self.dropped += 1
                return
            self._queue.append(record)
            self._queued += 1
            self._cond.notify_all()
        listeners = list(self._listeners)
        if listeners:
            items = items_of(record)
            for listener in listeners:
                listener(items)

    def listen(self, listener: ItemListener) -> Callable[[], None]:
        """listener(items) for every record taken from now on (called on the recording
        thread: do not block)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        try:
            self.store.open()
        except Exception as exc:  # OSError, or damage nobody foresaw: never fatal
            self._fail(f"history directory {self.store.directory} unusable: {exc}")
        for problem in self.store.problems:
            log.warning("history repaired on open", extra={"problem": problem})
        self._opened.set()
        last = self.store.last_index
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                batch = list(self._queue)
                self._queue.clear()
            fresh = []
            for record in batch:  # an entry applied again after a restart: on file already
                if record.get("local") or record["index"] > last:
                    fresh.append(record)
                    last = record["index"] if not record.get("local") else last
            self._keep(fresh)
            with self._cond:
                self._written += len(batch)
                self._cond.notify_all()
                if self._closing and not self._queue:
                    break
        if not self.error:
            try:
                self.store.close()
            except OSError as exc:
                log.error("history not closed cleanly", extra={"error": str(exc)})

    def _keep(self, records: list[Record]) -> None:
        if not records:
            return
        if not self.error:
            try:
                self.store.append(records)
                return
            except Exception as exc:  # a full or read-only disk (OSError), or a bug
                self._fail(f"history not written to {self.store.directory}: {exc}")
        self._memory.extend(records)

    def _fail(self, error: str) -> None:
        self.error = error + "; kept in memory only (the last " \
            f"{MEMORY_RECORDS} records) until the peer restarts"
        log.error("history kept in memory only", extra={"error": self.error})

    def flush(self, timeout_s: float = FLUSH_WAIT_S) -> bool:
        """Wait until what was taken so far is written (True) or timeout_s passed."""
        if not self._opened.wait(timeout_s):
            return False
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._written >= target, timeout_s)

    # ------------------------------------------------------------ queries

    def query(self, host: str = "", vm: str = "", since: float = float("-inf"),
              until: float = float("inf"), last: int = 50) -> list[Item]:
        """The newest `last` items that match, oldest first (blocking: file reads)."""
        if last <= 0:
            return []
        self.flush()
        chunks: list[list[Item]] = []
        found = 0
        for records in self._records(since, until):
            chunk = [i for r in records for i in items_of(r)
                     if matches(i, host, vm, since, until)]
            chunks.append(chunk)
            found += len(chunk)
            if found >= last:
                break
        items = [i for chunk in reversed(chunks) for i in chunk]
        return items[-last:]

    def _records(self, since: float, until: float) -> Iterator[list[Record]]:
        """Lists of records, newest list first (each list in file order)."""
        if self.error:
            yield list(self._memory)
            return
        yield from self.store.read(since, until, newest_first=True)

    def status(self) -> dict[str, Any]:
        segments = list(self.store.segments)
        return {"directory": str(self.store.directory), "error": self.error,
                "bytes": sum(s.size for s in segments), "segments": len(segments),
                "damaged_lines": self.store.damaged_lines, "problems": self.store.problems,
                "dropped": self.dropped, "max_bytes": self.store.max_bytes,
                "max_age_s": self.store.max_age_s}


class DecisionHandler(logging.Handler):
    """Log records of decisions (they carry a reason) into the history."""

    def __init__(self, history: History) -> None:
        super().__init__(logging.INFO)
        self.history = history

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "reason"):
            self.history.record_decision(record)


async def _join(thread: threading.Thread) -> None:
    await asyncio.get_running_loop().run_in_executor(None, thread.join, 5.0)


def open_history(config: Config, replica: Replica) -> History:
    """The peer's history, fed by its replica, recording its decisions."""
    h = config.history
    directory = Path(h.dir) if h.dir else config.data_path / "history"
    history = History(directory, h.max_mib * 1024 * 1024, h.max_age_days * 86400.0,
                      config.peer.name, lambda: replica.applied_index)
    replica.on_entry(history.record_entry)
    history.open()
    history.record_decisions()
    return history
