"""Structured (JSON) logging with CPR numbers masked everywhere, tracebacks included."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Final

import msgspec

# Ten digits, optionally DDMMYY-SSSS, not inside a longer number or a UUID.
CPR_PATTERN: Final = re.compile(r"(?<![\w-])(\d{6})-?\d{4}(?![\w-])")
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime"
}


QUIET_LIBRARIES: Final = ("aiosqlite", "aiormq", "aio_pika", "aiomqtt", "aiohttp.access")


def mask(text: str) -> str:
    return CPR_PATTERN.sub(r"\1-****", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask(msgspec.json.encode(entry).decode())


def setup(stream: object = None) -> None:
    level = os.environ.get("AES_GATEWAY_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    known = level in logging.getLevelNamesMapping()
    root.setLevel(level if known else "INFO")
    if not known:
        logging.getLogger("aes_gateway").warning(
            "AES_GATEWAY_LOG_LEVEL %r is not a level (DEBUG, INFO, WARNING, ERROR); INFO it is",
            level[:20])
    # These libraries log whole SQL parameters and message bodies at DEBUG: a fixed-format
    # record holds the CPR between other digits, where no pattern can find it.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
