"""Counting outcomes for the replay summary (the same figures the metrics carry)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from gateway.decide import Result
from gateway.model import Outcome


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.quarantined_by_reason: Counter[str] = Counter()
        self.duplicates_by_kind: Counter[str] = Counter()
        self.matches_by_method: Counter[str] = Counter()
        self.conflicts = 0
        self.case_links = 0
        self.pair_outcomes: Counter[str] = Counter({"both": 0, "only_2_2": 0, "only_3_0": 0})

    def add_pairs(self, outcomes: dict[str, int]) -> None:
        self.pair_outcomes.update(outcomes)

    def add(self, results: Iterable[Result]) -> None:
        # The enums are str: counted as they are, without a `.value` lookup per message (a
        # member and its value are the same key).
        for result in results:
            self.outcomes[result.outcome] += 1
            if result.reason is not None:
                self.quarantined_by_reason[result.reason] += 1
            if result.duplicate_kind is not None:
                self.duplicates_by_kind[result.duplicate_kind] += 1
            if result.match is not None:
                self.matches_by_method[result.match] += 1
            self.conflicts += result.conflict
            self.case_links += result.linked

    @property
    def messages(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "emitted": self.outcomes[Outcome.EMITTED.value],
            "duplicates": self.outcomes[Outcome.DUPLICATE.value],
            "quarantined": self.outcomes[Outcome.QUARANTINED.value],
            "quarantined_by_reason": _plain(self.quarantined_by_reason),
            "duplicates_by_kind": _plain(self.duplicates_by_kind),
            "matches_by_method": _plain(self.matches_by_method),
            "conflicts": self.conflicts,
            "case_links": self.case_links,
            "pair_outcomes": dict(sorted(self.pair_outcomes.items())),
        }


def _plain(counts: Counter[str]) -> dict[str, int]:
    """Sorted, keyed by plain strings (enum members become their values)."""
    return {str(key): count for key, count in sorted(counts.items())}
