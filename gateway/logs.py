"""Structured (JSON) logging with CPR numbers masked everywhere, tracebacks included."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Final

import msgspec

# Ten digits, optionally DDMMYY-SSSS, not inside a longer number or a UUID.
CPR_PATTERN: Final = re.compile(r"(?<![\w-])(\d{6})-?\d{4}(?![\w-])")
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime"
}


QUIET_LIBRARIES: Final = ("aiosqlite", "aiormq", "aio_pika", "aiomqtt", "aiohttp.access")
# Libraries whose connection troubles repeat every second while a broker is away: aiormq and
# aio-pika log 3 lines a connection a second (two of them at error level) for a restart the
# gateway rides out by itself. The gateway logs the outage itself, once as it begins and once
# as it ends; these repeats pass once a minute, counted. So do asyncio's: out of file
# descriptors, its accept loop logs every failed accept (thousands of lines a second).
REPEATING_LIBRARIES: Final = ("aiormq", "aio_pika", "aiomqtt", "asyncio")
REPEAT_EVERY_S: Final = 60.0


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


class Repeats(logging.Filter):
    """Lets a library's record through once per `every_s` for each logger, level and message
    template (the text before its arguments); the next one that passes says, as `repeated`,
    how many were held back in between."""

    def __init__(self, libraries: tuple[str, ...] = REPEATING_LIBRARIES,
                 every_s: float = REPEAT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._prefixes = libraries
        self._every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        passed_at, held = self._seen.get(key, (-self._every_s, 0))
        if now - passed_at < self._every_s:
            self._seen[key] = (passed_at, held + 1)
            return False
        if len(self._seen) >= 1000:  # a bound, should a library put values in its templates
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.repeated = held
        return True


class Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The JSON lines, with room for a status line kept at the bottom of a terminal (replay's
    progress bar): while `status` is set, each record clears that line first and draws it
    again after itself, so the two do not run into each other."""

    status: Callable[[], str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.status is None:
            super().emit(record)
            return
        self.stream.write("\r\x1b[2K")  # back to the line's start, the line erased
        super().emit(record)
        self.stream.write(self.status())
        self.flush()


def handler() -> Handler | None:
    """The handler `setup` installed, if it did."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, Handler)), None)


def setup(stream: object = None, warn: bool = True) -> None:
    """JSON lines with CPR masked, on `stream` (stderr). `warn=False` in a parse worker: its
    parent has already said so if the level is not one."""
    level = os.environ.get("AES_GATEWAY_LOG_LEVEL", "INFO").upper()
    out = Handler(stream or sys.stderr)
    out.setFormatter(JsonFormatter())
    out.addFilter(Repeats())
    root = logging.getLogger()
    root.handlers[:] = [out]
    known = level in logging.getLevelNamesMapping()
    root.setLevel(level if known else "INFO")
    if not known and warn:
        logging.getLogger("aes_gateway").warning(
            "AES_GATEWAY_LOG_LEVEL %r is not a level (DEBUG, INFO, WARNING, ERROR); INFO it is",
            level[:20])
    # These libraries log whole SQL parameters and message bodies at DEBUG: a fixed-format
    # record holds the CPR between other digits, where no pattern can find it.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
