"""Spec part 5: CPR, kommunekode, case ids and Danish local time."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import BadInput, Reason
from gateway.normalize import (
    DANISH_TIME,
    local_to_utc,
    mask_cpr,
    normalize_cpr,
    normalize_legacy_case_id,
    normalize_municipality,
    to_utc,
)

UTC = dt.UTC


@pytest.mark.parametrize(
    ("cpr", "born"),
    [
        ("0101001234", "1900-01-01"),  # 7th digit 0-3: 1900s
        ("3112993999", "1999-12-31"),
        ("0101364234", "2036-01-01"),  # 4: 00-36 -> 2000s
        ("0101374234", "1937-01-01"),  # 4: 37-99 -> 1900s
        ("0101575234", "2057-01-01"),  # 5-8: 00-57 -> 2000s
        ("0101588234", "1858-01-01"),  # 5-8: 58-99 -> 1800s
        ("2902049234", "2004-02-29"),  # 9: 00-36 -> 2000s, a leap day
        ("0101379234", "1937-01-01"),  # 9: 37-99 -> 1900s
    ],
)
def test_cpr_century_rules_accept_real_dates(cpr: str, born: str) -> None:
    assert normalize_cpr(cpr) == cpr


@pytest.mark.parametrize(
    "cpr",
    [
        "2902014234",  # 2001 is no leap year
        "2902001234",  # 1900 is no leap year (7th digit 0-3 -> 1900)
        "3204851234",  # day 32
        "1413851234",  # month 13
        "000185123",  # 9 digits
        "14018512345",  # 11 digits
        "140185 1234",
        "14-0185-1234",
    ],
)
def test_cpr_invalid_is_bad_input(cpr: str) -> None:
    with pytest.raises(BadInput) as info:
        normalize_cpr(cpr)
    assert info.value.reason is Reason.INVALID_CPR
    assert cpr[6:] not in info.value.detail  # the detail never carries the whole CPR


def test_cpr_with_hyphen_is_normalised() -> None:
    assert normalize_cpr("140185-1234") == "1401851234"


@pytest.mark.parametrize("cpr", ["1401851234", "0101700001", "3112999998"])
def test_cpr_failing_modulus_11_is_accepted(cpr: str) -> None:
    weights = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)
    assert sum(int(d) * w for d, w in zip(cpr, weights, strict=True)) % 11 != 0
    assert normalize_cpr(cpr) == cpr


def test_mask_cpr_keeps_birth_date_only() -> None:
    assert mask_cpr("1401851234") == "140185-****"


@pytest.mark.parametrize(
    ("code", "expected"),
    [("101", "101"), ("0101", "101"), ("851", "851"), ("0851", "851"), ("000", None),
     ("0000", None)],
)
def test_municipality(code: str, expected: str | None) -> None:
    assert normalize_municipality(code) == expected


@pytest.mark.parametrize("code", ["1X1", "1101", "", "10101", "-101"])
def test_municipality_invalid(code: str) -> None:
    with pytest.raises(BadInput) as info:
        normalize_municipality(code)
    assert info.value.reason is Reason.INVALID_MUNICIPALITY


@pytest.mark.parametrize(
    ("value", "expected"), [("0001234567", "1234567"), ("1234567", "1234567"), ("10", "10")]
)
def test_legacy_case_id_without_leading_zeros(value: str, expected: str) -> None:
    assert normalize_legacy_case_id(value) == expected


@pytest.mark.parametrize("value", ["0000000000", "12345678901", "12A4567", ""])
def test_legacy_case_id_invalid(value: str) -> None:
    with pytest.raises(BadInput) as info:
        normalize_legacy_case_id(value)
    assert info.value.reason is Reason.INVALID_CASE_ID


def test_winter_and_summer_time() -> None:
    assert local_to_utc(dt.datetime(2022, 3, 1, 10, 15)) == (
        dt.datetime(2022, 3, 1, 9, 15, tzinfo=UTC), None)
    assert local_to_utc(dt.datetime(2022, 7, 1, 10, 15)) == (
        dt.datetime(2022, 7, 1, 8, 15, tzinfo=UTC), None)


def test_autumn_repeated_hour_is_first_occurrence_with_the_second_as_alternative() -> None:
    first, second = local_to_utc(dt.datetime(2022, 10, 30, 2, 30))
    assert first == dt.datetime(2022, 10, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert second == dt.datetime(2022, 10, 30, 1, 30, tzinfo=UTC)  # 02:30 CET


def test_spring_skipped_hour_is_shifted_forward_by_the_gap() -> None:
    # 02:30 does not exist on 2022-03-27; shifted by the one-hour gap it is 03:30 CEST.
    assert local_to_utc(dt.datetime(2022, 3, 27, 2, 30)) == (
        dt.datetime(2022, 3, 27, 1, 30, tzinfo=UTC), None)


def test_offset_times_are_exact_and_naive_ones_danish() -> None:
    aware = dt.datetime.fromisoformat("2022-03-01T10:15:42+01:00")
    assert to_utc(aware) == (dt.datetime(2022, 3, 1, 9, 15, 42, tzinfo=UTC), None)
    assert to_utc(aware.replace(tzinfo=None)) == to_utc(aware)


@given(st.from_regex(r"\d{6}-?\d{4}", fullmatch=True))
def test_normalising_a_cpr_twice_changes_nothing(value: str) -> None:
    try:
        once = normalize_cpr(value)
    except BadInput:
        return
    assert normalize_cpr(once) == once


@given(st.from_regex(r"\d{1,4}", fullmatch=True))
def test_normalising_a_municipality_twice_changes_nothing(value: str) -> None:
    try:
        once = normalize_municipality(value)
    except BadInput:
        return
    assert once is None or normalize_municipality(once) == once


@given(st.from_regex(r"\d{1,10}", fullmatch=True))
def test_normalising_a_legacy_id_twice_changes_nothing(value: str) -> None:
    try:
        once = normalize_legacy_case_id(value)
    except BadInput:
        return
    assert normalize_legacy_case_id(once) == once


@given(st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2040, 1, 1)))
def test_local_time_to_utc_and_back_is_stable(local: dt.datetime) -> None:
    first, _ = local_to_utc(local)
    again, _ = to_utc(first)
    assert again == first


def _zoneinfo_reading(naive: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
    """local_to_utc as it was before days without a change of clocks took a shortcut."""
    first = naive.replace(tzinfo=DANISH_TIME, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=DANISH_TIME, fold=1).astimezone(UTC)
    if first == second or first.astimezone(DANISH_TIME).replace(tzinfo=None) != naive:
        return first, None
    return first, second


def test_the_steady_day_shortcut_reads_every_time_as_zoneinfo_does() -> None:
    """Four times of every day 1970-2045, and every 5 minutes around each change of clocks."""
    day, end = dt.date(1970, 1, 1), dt.date(2046, 1, 1)
    changes = []
    while day < end:
        for hour, minute in ((0, 0), (2, 30), (12, 17), (23, 59)):
            naive = dt.datetime.combine(day, dt.time(hour, minute))
            assert local_to_utc(naive) == _zoneinfo_reading(naive), naive
        midnight = dt.datetime.combine(day, dt.time(), DANISH_TIME)
        if midnight.utcoffset() != (midnight + dt.timedelta(days=1)).utcoffset():
            changes.append(day)
        day += dt.timedelta(days=1)
    assert len(changes) >= 2 * 45  # summer time every year since 1980
    for change in changes:
        start = dt.datetime.combine(change - dt.timedelta(days=1), dt.time())
        for step in range(3 * 24 * 12):
            naive = start + dt.timedelta(minutes=5 * step)
            assert local_to_utc(naive) == _zoneinfo_reading(naive), naive
