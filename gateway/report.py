"""The migration report: per month and municipality, how the two versions overlap."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

ReportRow = tuple[int, str | None, str, int, int | None]  # first_seen, kommune, first, bits, lag


@dataclass
class Cell:
    first_2_2: int = 0
    first_3_0: int = 0
    twins: int = 0
    only_2_2: int = 0
    only_3_0: int = 0
    lags: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        lags = sorted(self.lags)
        return {
            "events": self.first_2_2 + self.first_3_0,
            "first_2_2": self.first_2_2, "first_3_0": self.first_3_0,
            "twins": self.twins, "only_2_2": self.only_2_2, "only_3_0": self.only_3_0,
            "lag_p50_s": _percentile(lags, 0.50), "lag_p90_s": _percentile(lags, 0.90),
            "lag_p99_s": _percentile(lags, 0.99),
        }


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def build(rows: Iterable[ReportRow]) -> list[dict[str, object]]:
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for first_seen, kommune, first_version, versions, lag in rows:
        month = dt.datetime.fromtimestamp(first_seen, dt.UTC).strftime("%Y-%m")
        cell = cells[(month, kommune or "unknown")]
        if first_version == "2.2":
            cell.first_2_2 += 1
        else:
            cell.first_3_0 += 1
        if versions == 3:
            cell.twins += 1
            if lag is not None:
                cell.lags.append(lag)
        elif versions == 1:
            cell.only_2_2 += 1
        else:
            cell.only_3_0 += 1
    return [{"month": m, "municipality_code": k, **cells[(m, k)].as_dict()}
            for m, k in sorted(cells)]


def table(report: list[dict[str, object]]) -> str:
    header = ("month", "kommune", "events", "first 2.2", "first 3.0", "twins", "only 2.2",
              "only 3.0", "lag p50", "lag p90", "lag p99")
    keys = ("month", "municipality_code", "events", "first_2_2", "first_3_0", "twins",
            "only_2_2", "only_3_0", "lag_p50_s", "lag_p90_s", "lag_p99_s")
    lines = ["  ".join(f"{h:>9}" for h in header)]
    for row in report:
        lines.append("  ".join(f"{_human(row[k]):>9}" for k in keys))
    return "\n".join(lines)


def _human(value: object) -> str:
    return "-" if value is None else str(value)
