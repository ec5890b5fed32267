"""Structured logs: one line per decision, with its reason.

Text:  2026-11-22T10:15:02.318Z INFO  manager fence host=h2 token=41 reason="lease expired ..."
JSON:  {"ts": "...", "level": "info", "logger": "manager", "msg": "fence", "host": "h2", ...}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and k != "message"}


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname:<5}", record.name.removeprefix(
            "hacluster."), record.getMessage()]
        parts += [f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
                  for k, v in _fields(record).items()]
        line = " ".join(str(p) for p in parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _timestamp(record), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage(), **_fields(record)}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("hacluster")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def decision(logger: logging.Logger, what: str, reason: str, **fields: Any) -> None:
    """Log one decision with the line that explains it."""
    logger.info(what, extra={**fields, "reason": reason})
