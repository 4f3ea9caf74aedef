"""Normalisation (spec part 5): CPR, kommunekode, case ids, Danish local time to UTC.

Every function either returns the normal form or raises BadInput; normalising a normal form
returns it unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import re
from zoneinfo import ZoneInfo

from gateway.model import BadInput, Reason

DANISH_TIME = ZoneInfo("Europe/Copenhagen")
UTC = dt.UTC

_CPR = re.compile(r"(\d{6})-?(\d{4})")
_DIGITS = re.compile(r"\d+")


def mask_cpr(cpr: str) -> str:
    """`1401851234` -> `140185-****`: the birth date stays readable, the person does not."""
    return f"{cpr[:6]}-****" if len(cpr) >= 6 else "******-****"


def _cpr_century(year2: int, digit7: int) -> int:
    """The CPR century rules: the 7th digit and the two-digit year give the century."""
    if digit7 <= 3:
        return 1900
    if digit7 in (4, 9):
        return 2000 if year2 <= 36 else 1900
    return 2000 if year2 <= 57 else 1800  # 5-8


# A person's CPR comes twice a message (envelope and payload) and again with each of their
# events: a small cache spares the date check. Refusals raise and are never cached.
@functools.lru_cache(maxsize=4096)
def normalize_cpr(value: str) -> str:
    """10 digits, hyphen removed; the first six must be a real date. No modulus-11 check."""
    match = _CPR.fullmatch(value.strip())
    if match is None:
        raise BadInput(Reason.INVALID_CPR, "CPR is not 10 digits (DDMMYYSSSS)")
    cpr = match.group(1) + match.group(2)
    day, month, year2 = int(cpr[0:2]), int(cpr[2:4]), int(cpr[4:6])
    year = _cpr_century(year2, int(cpr[6])) + year2
    try:
        dt.date(year, month, day)
    except ValueError:
        raise BadInput(
            Reason.INVALID_CPR, f"CPR {mask_cpr(cpr)} does not start with a real date"
        ) from None
    return cpr


def normalize_municipality(value: str) -> str | None:
    """Kommunekode as 3 digits (`0101` -> `101`); `000` means unknown and gives None."""
    code = value.strip()
    if not _DIGITS.fullmatch(code) or len(code) > 4 or (len(code) == 4 and code[0] != "0"):
        raise BadInput(Reason.INVALID_MUNICIPALITY, f"kommunekode {code[:8]!r} is not 3 digits")
    code = code[-3:].rjust(3, "0")
    return None if code == "000" else code


def normalize_legacy_case_id(value: str) -> str:
    """The old system's SagsId: digits, compared and stored without leading zeros."""
    text = value.strip()
    if not _DIGITS.fullmatch(text) or len(text) > 10:
        raise BadInput(Reason.INVALID_CASE_ID, f"old case id {text[:16]!r} is not up to 10 digits")
    stripped = text.lstrip("0")
    if not stripped:
        raise BadInput(Reason.INVALID_CASE_ID, "old case id is all zeros")
    return stripped


def local_to_utc(local: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
    """Danish wall-clock time to UTC.

    Returns (canonical, alternative). In the autumn's repeated hour the canonical time is the
    first occurrence and the alternative the second; in the spring's skipped hour the time is
    shifted forward by the gap (PEP 495: fold=0 reads a gap time with the offset before it).
    """
    naive = local.replace(tzinfo=None)
    try:
        offset = _steady_offset(naive.date())
        if offset is not None:  # no change of clocks that day: one offset (zoneinfo: ~3 us)
            return (naive - offset).replace(tzinfo=UTC), None
        first = naive.replace(tzinfo=DANISH_TIME, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=DANISH_TIME, fold=1).astimezone(UTC)
    except OverflowError:  # the first or last hours of year 1 or 9999
        raise _out_of_range(naive) from None
    if first == second:
        return first, None
    round_trip = first.astimezone(DANISH_TIME).replace(tzinfo=None)
    if round_trip != naive:  # skipped hour: fold=0 already shifted it forward by the gap
        return first, None
    return first, second


@functools.lru_cache(maxsize=4096)  # days: about eleven years of them
def _steady_offset(day: dt.date) -> dt.timedelta | None:
    """Danish time's UTC offset on a day without a change of clocks; None on a day with one."""
    start = dt.datetime.combine(day, dt.time(), DANISH_TIME).utcoffset()
    if day == dt.date.max:  # 31 December 9999: no day after it, and no change of clocks
        return start
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), DANISH_TIME).utcoffset()
    return start if start == end else None


def to_utc(value: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
    """Aware times are exact; naive ones are Danish local time (spec: no offset = Danish)."""
    if value.tzinfo is None:
        return local_to_utc(value)
    try:
        return value.astimezone(UTC), None
    except OverflowError:  # e.g. 9999-12-31T23:00:00-14:00 is in year 10000
        raise _out_of_range(value) from None


def _out_of_range(value: dt.datetime) -> BadInput:
    return BadInput(Reason.INVALID_TIME, f"time {value.isoformat()[:40]!r} is out of range in "
                                         "UTC")


def parse_xs_datetime(text: str) -> dt.datetime:
    """xs:dateTime (with or without offset, `Z` allowed) to a datetime; invalid raises."""
    value = text.strip()
    if len(value) >= 19 and value[10] == "T":
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(value)
    raise BadInput(Reason.INVALID_TIME, f"time {value[:40]!r} is not xs:dateTime")


def parse_xs_date(text: str) -> dt.date:
    value = text.strip()
    if len(value) == 10:
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(value)
    raise BadInput(Reason.INVALID_DATE, f"date {value[:20]!r} is not YYYY-MM-DD")


def parse_compact_date(text: str) -> dt.date | None:
    """`YYYYMMDD`, or blanks for unknown."""
    if not text.strip():
        return None
    if len(text) == 8 and text.isdigit():
        with contextlib.suppress(ValueError):
            return dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    raise BadInput(Reason.INVALID_DATE, f"date {text!r} is not YYYYMMDD")


def parse_compact_local_time(text: str) -> dt.datetime:
    """`YYYYMMDDHHMM` Danish local time, naive."""
    if len(text) == 12 and text.isdigit():
        with contextlib.suppress(ValueError):
            return dt.datetime(
                int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12])
            )
    raise BadInput(Reason.INVALID_TIME, f"time {text!r} is not YYYYMMDDHHMM")


def rfc3339(value: dt.datetime) -> str:
    """Canonical time text: UTC with `Z`."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
