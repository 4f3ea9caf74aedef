"""The migration report: per month and municipality, how the two versions overlap."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Final

# month, kommune, first 2.2, first 3.0, twins, only 2.2, only 3.0, twins with a lag
CountRow = tuple[str, str, int, int, int, int, int, int]
LagRow = tuple[str, str, int]  # month, kommune, lag in seconds: sorted by all three
QUANTILES: Final = (("lag_p50_s", 0.50), ("lag_p90_s", 0.90), ("lag_p99_s", 0.99))


def build(counts: Iterable[CountRow], lags: Iterable[LagRow]) -> list[dict[str, object]]:
    """The report from per-cell counts and the lags in sorted order, read once: memory grows
    with the cells (months x municipalities), not with the events (5 million: 1.5 GB when
    every lag was held)."""
    cells: dict[tuple[str, str], dict[str, object]] = {}
    ranks: dict[tuple[str, str], dict[int, list[str]]] = {}
    for month, kommune, first_2_2, first_3_0, twins, only_2_2, only_3_0, lagged in counts:
        cells[(month, kommune)] = {
            "month": month, "municipality_code": kommune, "events": first_2_2 + first_3_0,
            "first_2_2": first_2_2, "first_3_0": first_3_0, "twins": twins,
            "only_2_2": only_2_2, "only_3_0": only_3_0,
            **{name: None for name, _ in QUANTILES},
        }
        wanted: dict[int, list[str]] = {}
        for name, q in QUANTILES:  # the nearest rank at or below, as sorted(lags)[int(q * n)]
            wanted.setdefault(min(lagged - 1, int(q * lagged)), []).append(name)
        ranks[(month, kommune)] = wanted
    cell_key: tuple[str, str] | None = None
    index = 0
    for month, kommune, lag in lags:
        if (month, kommune) != cell_key:
            cell_key, index = (month, kommune), 0
        for name in ranks[cell_key].get(index, ()):
            cells[cell_key][name] = lag
        index += 1
    return [cells[key] for key in sorted(cells)]


COLUMNS: Final = ("month", "municipality_code", "events", "first_2_2", "first_3_0", "twins",
                  "only_2_2", "only_3_0", "lag_p50_s", "lag_p90_s", "lag_p99_s")


def table(report: list[dict[str, object]]) -> str:
    header = ("month", "kommune", "events", "first 2.2", "first 3.0", "twins", "only 2.2",
              "only 3.0", "lag p50", "lag p90", "lag p99")
    lines = ["  ".join(f"{h:>9}" for h in header)]
    for row in report:
        lines.append("  ".join(f"{_human(row[k]):>9}" for k in COLUMNS))
    return "\n".join(lines)


def csv_text(report: list[dict[str, object]]) -> str:
    """For a spreadsheet: a header of the JSON keys, a row a cell, an empty field for no lag."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([("" if row[k] is None else row[k]) for k in COLUMNS] for row in report)
    return out.getvalue()


def _human(value: object) -> str:
    return "-" if value is None else str(value)
