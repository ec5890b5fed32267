"""A trivial replicated state machine for tests and benchmarks: it counts commands and
chains a SHA-256 digest over (index, command), so two peers have the same digest iff
they applied the same commands at the same log indexes."""

from __future__ import annotations

import hashlib
import struct

_STATE = struct.Struct("<QQQ32s")  # count, last index, total bytes, chained digest


class ByteLog:
    def __init__(self) -> None:
        self.count = 0
        self.last_index = 0
        self.total_bytes = 0
        self._chain = b"\0" * 32

    def apply(self, data: bytes, index: int) -> int:
        if index <= self.last_index:
            raise ValueError(f"index {index} applied after {self.last_index}")
        self._chain = hashlib.sha256(self._chain + struct.pack("<Q", index) + data).digest()
        self.count += 1
        self.last_index = index
        self.total_bytes += len(data)
        return self.count

    def snapshot(self) -> bytes:
        return _STATE.pack(self.count, self.last_index, self.total_bytes, self._chain)

    def restore(self, data: bytes) -> None:
        self.count, self.last_index, self.total_bytes, self._chain = _STATE.unpack(data)

    def digest(self) -> str:
        return self._chain.hex()


def factory() -> ByteLog:
    return ByteLog()
