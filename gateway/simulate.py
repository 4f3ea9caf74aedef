"""Realistic transition-period traffic in both versions, with an answer key.

The answer key is worked out from the simulated truth (which messages carry which case event),
not by running the gateway's own correlation, so a replay can be checked against it.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from gateway.correlate import DEFAULT_PAIR_WINDOW_HOURS
from gateway.model import Reason, Version
from gateway.normalize import UTC
from gateway.simulate_wire import BAD_INPUT, render_message

MUNICIPALITIES: Final = ("101", "147", "151", "157", "173", "230", "461", "561", "751", "851")
CASE_KINDS: Final = ("old_only", "new_only", "mirrored_legacy", "mirrored_fuzzy", "migrated")
CASE_WEIGHTS: Final = (20, 20, 25, 15, 20)
START: Final = dt.datetime(2022, 1, 3, 8, 0, tzinfo=UTC)
SPAN_DAYS: Final = 330  # covers both DST changes of 2022


@dataclass
class Case:
    kind: str
    cpr: str
    municipality: str
    legacy_id: int | None
    number: str | None


@dataclass
class TrueEvent:
    case: Case
    event_type: str
    occurred_at: dt.datetime
    versions: tuple[Version, ...]
    v3_legacy: bool  # the 3.0 message names TidligereSagsId
    event_ref: str
    local_text_override: str | None = None  # a 2.2 time in the spring gap
    key: int = 0


@dataclass
class Message:
    arrival: dt.datetime
    body: bytes
    event: TrueEvent | None  # None for bad input
    version: Version | None
    message_id: str
    reason: Reason | None = None
    redelivery: bool = False


@dataclass
class Expected:
    """The answer key, worked out from the truth."""

    outcomes: Counter[str] = field(default_factory=Counter)
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    duplicates_by_kind: Counter[str] = field(default_factory=Counter)
    matches_by_method: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    case_links: int = 0

    pair_outcomes: Counter[str] = field(
        default_factory=lambda: Counter({"both": 0, "only_2_2": 0, "only_3_0": 0}))

    def as_dict(self, overlap: dict[str, int]) -> dict[str, object]:
        return {
            "messages": sum(self.outcomes.values()),
            "emitted": self.outcomes["emitted"],
            "duplicates": self.outcomes["duplicate"],
            "quarantined": self.outcomes["quarantined"],
            "quarantined_by_reason": dict(sorted(self.quarantined_by_reason.items())),
            "duplicates_by_kind": dict(sorted(self.duplicates_by_kind.items())),
            "matches_by_method": dict(sorted(self.matches_by_method.items())),
            "conflicts": self.conflicts,
            "case_links": self.case_links,
            "pair_outcomes": dict(sorted(self.pair_outcomes.items())),
            "overlap": overlap,
        }


class Simulator:
    def __init__(self, seed: int, bad_share: float = 0.03, repeat_share: float = 0.03) -> None:
        self.rng = random.Random(seed)
        self.bad_share = bad_share
        self.repeat_share = repeat_share
        self._cprs: set[str] = set()
        self._legacy: set[int] = set()
        self._numbers: set[str] = set()
        self.events: list[TrueEvent] = []
        self.messages: list[Message] = []
        # Scenario events the gateway must keep apart: key -> its own gateway event
        self.conflicting: set[int] = set()
        self.ambiguous: set[int] = set()

    # --- identities -------------------------------------------------------------------------

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def cpr(self) -> str:
        while True:
            born = dt.date(1940, 1, 1) + dt.timedelta(days=self.rng.randrange(0, 365 * 65))
            yy = born.year % 100
            seventh = self.rng.choice("0123") if born.year < 2000 else "4"
            cpr = f"{born:%d%m}{yy:02d}{seventh}{self.rng.randrange(1000):03d}"
            if cpr not in self._cprs:
                self._cprs.add(cpr)
                return cpr

    def legacy_id(self) -> int:
        while (value := self.rng.randrange(1, 10**7)) in self._legacy:
            pass
        self._legacy.add(value)
        return value

    def case_number(self, year: int) -> str:
        while (value := f"AES-{year}-{self.rng.randrange(10**7):07d}") in self._numbers:
            pass
        self._numbers.add(value)
        return value

    # --- the truth --------------------------------------------------------------------------

    def new_case(self, kind: str, cpr: str | None = None) -> Case:
        old = kind != "new_only"
        new = kind != "old_only"
        return Case(
            kind=kind,
            cpr=cpr or self.cpr(),
            municipality=self.rng.choice(MUNICIPALITIES),
            legacy_id=self.legacy_id() if old else None,
            number=self.case_number(2022) if new else None,
        )

    def event_types(self) -> list[str]:
        chain = ["reported"]
        for _ in range(self.rng.randrange(0, 3)):
            kind = self.rng.choice(["functional_certificate", "specialist_certificate"])
            chain += [f"{kind}_requested", f"{kind}_received"]
        chain.append(self.rng.choice(["rejected", "recognised", "shelved", "cancelled"]))
        if self.rng.random() < 0.15:
            chain += ["reprocessing_started", "reprocessing_closed"]
        return chain

    def event_times(self, count: int) -> list[dt.datetime]:
        at = START + dt.timedelta(seconds=self.rng.randrange(SPAN_DAYS * 86400))
        times = []
        for _ in range(count):
            times.append(at)
            at += dt.timedelta(seconds=self.rng.randrange(3600, 21 * 86400))
        return times

    def add_case(self, kind: str) -> None:
        case = self.new_case(kind)
        types = self.event_types()
        migrate_at = self.rng.randrange(1, len(types) + 1)
        for index, (event_type, at) in enumerate(
            zip(types, self.event_times(len(types)), strict=True)
        ):
            versions = self._versions(kind, index >= migrate_at)
            self._add_event(case, event_type, at, versions, kind != "mirrored_fuzzy")

    def _versions(self, kind: str, migrated: bool) -> tuple[Version, ...]:
        if kind == "old_only" or (kind == "migrated" and not migrated):
            return (Version.V2_2,)
        if kind == "new_only" or (kind == "migrated" and self.rng.random() < 0.3):
            return (Version.V3_0,)
        return (Version.V2_2, Version.V3_0)

    def _add_event(
        self, case: Case, event_type: str, at: dt.datetime, versions: tuple[Version, ...],
        v3_legacy: bool,
    ) -> TrueEvent:
        event = TrueEvent(case, event_type, at, versions, v3_legacy and case.legacy_id is not None,
                          self.uuid(), key=len(self.events))
        self.events.append(event)
        return event

    def add_dst_cases(self) -> None:
        """Mirrored events at the autumn's repeated hour (both readings) and the spring gap."""
        for occurred in (
            dt.datetime(2022, 10, 30, 0, 30, 17, tzinfo=UTC),  # 02:30:17 CEST, first reading
            dt.datetime(2022, 10, 30, 1, 30, 48, tzinfo=UTC),  # 02:30:48 CET, second reading
        ):
            self._add_event(self.new_case("mirrored_legacy"), "reported", occurred,
                            (Version.V2_2, Version.V3_0), True)
        # 03:20 CEST written by 2.2 as 02:20, a time that does not exist
        gap = self._add_event(self.new_case("mirrored_fuzzy"), "rejected",
                              dt.datetime(2022, 3, 27, 1, 20, 5, tzinfo=UTC),
                              (Version.V2_2, Version.V3_0), False)
        gap.local_text_override = "202203270220"

    def add_scenarios(self) -> None:
        """A fuzzy ambiguity in each direction and a CPR conflict: never merged."""
        at = START + dt.timedelta(days=self.rng.randrange(SPAN_DAYS))
        for first, second in ((Version.V2_2, Version.V3_0), (Version.V3_0, Version.V2_2)):
            cpr = self.cpr()
            kind = {Version.V2_2: "old_only", Version.V3_0: "new_only"}
            twins = [
                self._add_event(self.new_case(kind[first], cpr), "reported",
                                at + dt.timedelta(seconds=offset), (first,), False)
                for offset in (0, 40)
            ]
            late = self._add_event(self.new_case(kind[second], cpr), "reported",
                                   at + dt.timedelta(seconds=20), (second,), False)
            assert len(twins) == 2  # noqa: S101 - two candidates make the ambiguity
            self.ambiguous.add(late.key)  # arrives after both twins (see build_messages)
            at += dt.timedelta(days=3)
        old = self._add_event(self.new_case("old_only"), "rejected", at, (Version.V2_2,), False)
        wrong = self.new_case("mirrored_legacy")
        wrong.legacy_id = old.case.legacy_id  # the same old case id, another person
        clash = self._add_event(wrong, "rejected", at + dt.timedelta(seconds=30),
                                (Version.V3_0,), True)
        self.conflicting.add(clash.key)

    # --- messages ---------------------------------------------------------------------------

    def lag(self) -> dt.timedelta:
        """Seconds to days, log-uniform."""
        return dt.timedelta(seconds=int(10 ** self.rng.uniform(0.5, 5.5)))

    def build_messages(self) -> None:
        scenario_keys = self.ambiguous | self.conflicting
        for event in self.events:
            for version in event.versions:
                arrival = event.occurred_at + self.lag()
                if event.key in scenario_keys:  # arrive after the events they must not join
                    arrival = event.occurred_at + dt.timedelta(days=6)
                self.messages.append(self._message(event, version, arrival))
        originals = list(self.messages)
        for original in originals:
            roll = self.rng.random()
            if roll < self.repeat_share:
                self.messages.append(Message(
                    original.arrival + dt.timedelta(seconds=self.rng.randrange(1, 3600)),
                    original.body, original.event, original.version, original.message_id,
                    redelivery=True))
            elif roll < 2 * self.repeat_share and original.event is not None:
                when = original.arrival + dt.timedelta(seconds=self.rng.randrange(60, 2 * 86400))
                assert original.version is not None  # noqa: S101 - set for valid messages
                self.messages.append(self._message(original.event, original.version, when))
        self._add_bad(originals)
        self.messages.sort(key=lambda m: (m.arrival, m.message_id))

    def _message(self, event: TrueEvent, version: Version, arrival: dt.datetime) -> Message:
        message_id = self.uuid()
        body = render_message(self, event, version, message_id, arrival)
        return Message(arrival, body, event, version, message_id)

    def _add_bad(self, originals: list[Message]) -> None:
        count = max(len(BAD_INPUT), int(len(originals) * self.bad_share)) if self.bad_share else 0
        kinds = list(BAD_INPUT)
        # Bad variants are rendered in either version, so take cases known in both.
        bases = [m for m in originals if m.event and m.event.case.legacy_id and m.event.case.number]
        for index in range(count):
            reason = kinds[index % len(kinds)] if index >= 1 else Reason.TOO_LARGE
            if reason is Reason.TOO_LARGE and index >= 1:
                reason = Reason.NOT_XML  # one oversized message is enough
            base = self.rng.choice(bases)
            assert base.event is not None  # noqa: S101 - originals are valid
            message_id = self.uuid()
            body = BAD_INPUT[reason](self, base.event, message_id, base.arrival)
            self.messages.append(Message(base.arrival + dt.timedelta(seconds=1), body, None,
                                         None, message_id, reason=reason))

    # --- the answer key ---------------------------------------------------------------------

    def canonical_events(self) -> int:
        """How many canonical events a gateway puts out for these messages: the new events
        and the `case_linked` ones."""
        key = self.answer_key()
        emitted, links = key["emitted"], key["case_links"]
        assert isinstance(emitted, int)  # noqa: S101 - counts
        assert isinstance(links, int)  # noqa: S101
        return emitted + links

    def answer_key(
        self, pair_window_s: int = int(DEFAULT_PAIR_WINDOW_HOURS * 3600)
    ) -> dict[str, object]:
        expected = Expected()
        accepted: dict[int, set[Version]] = {}
        first_arrival: dict[int, tuple[Version, dt.datetime]] = {}
        other_arrival: dict[int, dt.datetime] = {}
        first_legacy_v3: dict[int, bool] = {}
        linked: set[int] = set()  # legacy ids whose link the gateway knows
        for message in self.messages:
            if message.reason is not None:
                expected.outcomes["quarantined"] += 1
                expected.quarantined_by_reason[message.reason.value] += 1
                continue
            if message.redelivery:
                expected.outcomes["duplicate"] += 1
                expected.duplicates_by_kind["redelivery"] += 1
                continue
            event, version = message.event, message.version
            assert event is not None  # noqa: S101 - valid messages have both
            assert version is not None  # noqa: S101
            self._expect_valid(expected, event, version, accepted, first_legacy_v3, linked)
            first = first_arrival.setdefault(event.key, (version, message.arrival))
            if version is not first[0]:
                other_arrival.setdefault(event.key, message.arrival)
        for key, (version, arrived) in first_arrival.items():
            twin = other_arrival.get(key)
            paired = twin is not None and (twin - arrived).total_seconds() <= pair_window_s
            outcome = "both" if paired else f"only_{version.value.replace('.', '_')}"
            expected.pair_outcomes[outcome] += 1
        overlap = Counter(
            {3: "both", 1: "only_2_2", 2: "only_3_0"}[sum(_BIT[v] for v in seen)]
            for seen in accepted.values()
        )
        return expected.as_dict({k: overlap[k] for k in ("both", "only_2_2", "only_3_0")})

    def _expect_valid(
        self, expected: Expected, event: TrueEvent, version: Version,
        accepted: dict[int, set[Version]], first_legacy_v3: dict[int, bool], linked: set[int],
    ) -> None:
        legacy = event.case.legacy_id
        carries_legacy = version is Version.V3_0 and event.v3_legacy
        if event.key in self.conflicting:
            expected.conflicts += 1
        elif carries_legacy and legacy not in linked:
            linked.add(legacy)  # type: ignore[arg-type]
            expected.case_links += 1
        seen = accepted.get(event.key)
        if seen is None:
            accepted[event.key] = {version}
            first_legacy_v3[event.key] = carries_legacy
            expected.outcomes["emitted"] += 1
            if event.key in self.ambiguous:
                expected.matches_by_method["ambiguous"] += 1
            return
        expected.outcomes["duplicate"] += 1
        if version in seen:
            expected.duplicates_by_kind["same_version"] += 1
            return
        seen.add(version)
        expected.duplicates_by_kind["cross_version"] += 1
        if carries_legacy or first_legacy_v3[event.key]:
            method = "legacy_id"
        elif legacy in linked:
            method = "learned_link"
        else:
            method = "fuzzy"
            linked.add(legacy)  # type: ignore[arg-type]
            expected.case_links += 1
        expected.matches_by_method[method] += 1


_BIT: Final = {Version.V2_2: 1, Version.V3_0: 2}


def simulate(cases: int, seed: int, bad_share: float = 0.03, scenarios: bool = True) -> Simulator:
    """`scenarios=False` leaves out the ambiguity and conflict cases, whose outcome depends on
    arrival order: for tests whose sources (several queues) do not keep one order."""
    sim = Simulator(seed, bad_share=bad_share)
    for _ in range(cases):
        sim.add_case(sim.rng.choices(CASE_KINDS, CASE_WEIGHTS)[0])
    sim.add_dst_cases()
    if scenarios:
        sim.add_scenarios()
    sim.build_messages()
    return sim
