"""Is this the same event? (spec part 6). Pure and synchronous.

`CorrelationState` holds what the store knows that is relevant to a batch (or, in unit tests,
everything); `Correlator.accept` decides one parsed message against it, updates it, and records
the effects (new events, updated events, links, canonical output) for the store to commit.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

import msgspec

from gateway import canonical
from gateway.model import (
    CanonicalEvent,
    DuplicateKind,
    MatchMethod,
    Outcome,
    ParsedEvent,
    Version,
)

# The matching defaults (spec part 6), in one place: configuration, CLI and replay read them.
DEFAULT_TOLERANCE_S: Final = 120  # twins' occurred_at at most this far apart
DEFAULT_PAIR_WINDOW_HOURS: Final = 72.0  # how long an event waits for its twin (pair outcomes)

VERSION_BITS = {Version.V2_2: 1, Version.V3_0: 2}
BOTH_VERSIONS = 3

# Enum members as plain names: an enum attribute lookup costs a descriptor call, and these
# are read for every message.
_ONLY_2_2, _ONLY_3_0 = VERSION_BITS[Version.V2_2], VERSION_BITS[Version.V3_0]
_V3_0 = Version.V3_0
_EMITTED, _DUPLICATE = Outcome.EMITTED, Outcome.DUPLICATE
_SAME_VERSION, _CROSS_VERSION = DuplicateKind.SAME_VERSION, DuplicateKind.CROSS_VERSION
_LEGACY_ID, _LEARNED_LINK = MatchMethod.LEGACY_ID, MatchMethod.LEARNED_LINK
_FUZZY, _AMBIGUOUS = MatchMethod.FUZZY, MatchMethod.AMBIGUOUS

Times = tuple[int, ...]  # an event's time(s) in epoch seconds: two in a repeated hour
CaseIds = tuple[set[str], set[str]]  # (legacy case ids, case numbers), links included


class EventRecord(msgspec.Struct, gc=False):
    """What the store keeps of an accepted event to recognise its twins."""

    event_id: str
    event_type: str
    occurred_at: int  # epoch seconds, UTC
    occurred_alt: int | None
    legacy_case_id: str | None
    case_number: str | None
    cpr: str
    versions: int  # bit set of VERSION_BITS
    first_version: str
    event_ref: str | None
    first_seen: int  # stream time the first version arrived
    other_seen: int | None  # stream time the other version first arrived
    municipality_code: str | None
    seq: int  # acceptance order


class Link(msgspec.Struct, frozen=True, gc=False):
    legacy_case_id: str
    case_number: str
    cpr: str
    method: str


class Decision(msgspec.Struct, gc=False):
    """The outcome of one valid message."""

    outcome: Outcome
    event_id: str
    duplicate_kind: DuplicateKind | None = None
    match: MatchMethod | None = None
    conflict: bool = False
    lag_seconds: int | None = None
    first_version: str | None = None  # of the event a cross-version twin joined
    link: Link | None = None


class CorrelationState:
    """Indexed events and links. The store fills one per batch; tests use one for everything."""

    def __init__(self) -> None:
        self.messages: set[str] = set()
        self.events: dict[str, EventRecord] = {}
        self._by_ref: dict[str, str] = {}
        self._by_legacy: defaultdict[str, set[str]] = defaultdict(set)
        self._by_number: defaultdict[str, set[str]] = defaultdict(set)
        self._by_cpr: defaultdict[str, set[str]] = defaultdict(set)
        self.links_by_legacy: dict[str, Link] = {}
        self.links_by_number: dict[str, Link] = {}
        self._next_seq = 1 << 62  # after every stored rowid

    def add_event(self, record: EventRecord) -> None:
        self.events[record.event_id] = record
        self.index_event(record)

    def index_event(self, record: EventRecord) -> None:
        if record.event_ref is not None:
            self._by_ref[record.event_ref] = record.event_id
        if record.legacy_case_id is not None:
            self._by_legacy[record.legacy_case_id].add(record.event_id)
        if record.case_number is not None:
            self._by_number[record.case_number].add(record.event_id)
        self._by_cpr[record.cpr].add(record.event_id)

    def add_link(self, link: Link) -> None:
        self.links_by_legacy[link.legacy_case_id] = link
        self.links_by_number[link.case_number] = link

    def next_seq(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def by_ref(self, ref: str) -> EventRecord | None:
        event_id = self._by_ref.get(ref)
        return None if event_id is None else self.events[event_id]

    def of_case(self, legacy_ids: Iterable[str], numbers: Iterable[str]) -> list[EventRecord]:
        ids: set[str] = set()
        for legacy in legacy_ids:
            ids |= self._by_legacy.get(legacy, set())
        for number in numbers:
            ids |= self._by_number.get(number, set())
        return [self.events[i] for i in ids]

    def of_person(self, cpr: str) -> list[EventRecord]:
        return [self.events[i] for i in self._by_cpr.get(cpr, ())]


class Effects:
    """What a batch of decisions changed, for the store to commit in one transaction."""

    def __init__(self) -> None:
        self.new_events: dict[str, EventRecord] = {}
        self.updated_events: dict[str, EventRecord] = {}
        self.new_links: list[Link] = []
        self.used_links: set[str] = set()  # legacy ids of the links this batch's events used
        self.output: list[CanonicalEvent] = []


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


def _times(occurred_at: int, alt: int | None) -> tuple[int, ...]:
    return (occurred_at,) if alt is None else (occurred_at, alt)


class Correlator:
    """Decides each valid message against the state: new event, or which event it repeats."""

    def __init__(
        self, state: CorrelationState, effects: Effects, tolerance_s: int = DEFAULT_TOLERANCE_S
    ) -> None:
        self.state = state
        self.effects = effects
        self.tolerance_s = tolerance_s

    def accept(self, event: ParsedEvent, received_at: dt.datetime) -> Decision:
        stream_time = epoch(event.formed_at or received_at)
        link, link_conflict = self._learn_explicit_link(event)
        links = self._links_of(event)  # the explicit link just learned included
        for known in links:
            if known.cpr == event.cpr:
                self.effects.used_links.add(known.legacy_case_id)  # a case still active
            else:
                link_conflict = True
        case_ids = self._case_ids(event, links)
        times = _times(epoch(event.occurred_at), _epoch_or_none(event.occurred_alt))
        decision, ambiguous, conflict = self._match(event, stream_time, case_ids, times)
        if decision is None:  # no link was learned while matching: case_ids still hold
            decision = self._emit_new(event, received_at, stream_time, case_ids, times, ambiguous)
        decision.conflict = conflict or link_conflict
        link = link or decision.link
        if link is not None:
            decision.link = link
            self._publish_link(link, event, decision.event_id, received_at)
        return decision

    # --- matching ---------------------------------------------------------------------------

    def _match(
        self, event: ParsedEvent, stream_time: int, case_ids: CaseIds, times: Times
    ) -> tuple[Decision | None, bool, bool]:
        """(the duplicate decision or None, ambiguous, conflict)."""
        if event.event_ref is not None:
            known = self.state.by_ref(event.event_ref)
            if known is not None:
                decision = self._duplicate(known, event, stream_time, _LEGACY_ID)
                return decision, False, False
        candidates, conflict = self._same_case(event, case_ids, times)
        if candidates:
            first = min(candidates, key=lambda record: record.seq)
            method = self._case_method(first, event)
            return self._duplicate(first, event, stream_time, method), False, conflict
        fuzzy = self._fuzzy_candidates(event, times)
        if len(fuzzy) != 1:
            return None, len(fuzzy) > 1, conflict
        decision = self._duplicate(fuzzy[0], event, stream_time, _FUZZY)
        decision.link = self._learn_fuzzy_link(fuzzy[0])
        return decision, False, conflict

    def _links_of(self, event: ParsedEvent) -> list[Link]:
        links = []
        if event.legacy_case_id is not None:
            links.append(self.state.links_by_legacy.get(event.legacy_case_id))
        if event.case_number is not None:
            links.append(self.state.links_by_number.get(event.case_number))
        return [link for link in links if link is not None]

    @staticmethod
    def _case_ids(event: ParsedEvent, links: list[Link]) -> CaseIds:
        """The event's own case ids and those linked to them (links of this person only)."""
        legacy_ids = set() if event.legacy_case_id is None else {event.legacy_case_id}
        numbers = set() if event.case_number is None else {event.case_number}
        for link in links:
            if link.cpr == event.cpr:
                legacy_ids.add(link.legacy_case_id)
                numbers.add(link.case_number)
        return legacy_ids, numbers

    def _fits(self, record: EventRecord, event_type: str, mine: Times) -> bool:
        if record.event_type != event_type:
            return False
        tolerance = self.tolerance_s
        if record.occurred_alt is None and len(mine) == 1:  # the common case
            return abs(mine[0] - record.occurred_at) <= tolerance
        theirs = _times(record.occurred_at, record.occurred_alt)
        return any(abs(a - b) <= tolerance for a in mine for b in theirs)

    def _same_case(
        self, event: ParsedEvent, case_ids: CaseIds, times: Times
    ) -> tuple[list[EventRecord], bool]:
        """Events of the same case, type and time; those of another person are a conflict."""
        legacy_ids, numbers = case_ids
        event_type = event.event_type
        fitting = [r for r in self.state.of_case(legacy_ids, numbers)
                   if self._fits(r, event_type, times)]
        same_person = [r for r in fitting if r.cpr == event.cpr]
        return same_person, len(same_person) < len(fitting)

    @staticmethod
    def _case_method(record: EventRecord, event: ParsedEvent) -> MatchMethod:
        direct = (
            event.legacy_case_id is not None and record.legacy_case_id == event.legacy_case_id
        ) or (event.case_number is not None and record.case_number == event.case_number)
        return _LEGACY_ID if direct else _LEARNED_LINK

    def _fuzzy_candidates(self, event: ParsedEvent, times: Times) -> list[EventRecord]:
        """Spec part 6: a twin across versions with no case id in common, by person and time."""
        links = self.state
        event_type = event.event_type
        if event.version is _V3_0:
            if event.legacy_case_id is not None or event.case_number in links.links_by_number:
                return []
            return [
                r
                for r in self.state.of_person(event.cpr)
                if r.versions == _ONLY_2_2
                and r.legacy_case_id not in links.links_by_legacy
                and self._fits(r, event_type, times)
            ]
        if event.legacy_case_id in links.links_by_legacy:
            return []
        return [
            r
            for r in self.state.of_person(event.cpr)
            if r.versions == _ONLY_3_0
            and r.legacy_case_id is None
            and r.case_number not in links.links_by_number
            and self._fits(r, event_type, times)
        ]

    # --- outcomes ---------------------------------------------------------------------------

    def _duplicate(
        self, record: EventRecord, event: ParsedEvent, stream_time: int, method: MatchMethod
    ) -> Decision:
        bit = VERSION_BITS[event.version]
        if record.versions & bit:
            return Decision(_DUPLICATE, record.event_id, _SAME_VERSION)
        record.versions |= bit
        record.other_seen = stream_time
        record.legacy_case_id = record.legacy_case_id or event.legacy_case_id
        record.case_number = record.case_number or event.case_number
        record.event_ref = record.event_ref or event.event_ref
        self.state.index_event(record)
        if record.event_id not in self.effects.new_events:
            self.effects.updated_events[record.event_id] = record
        return Decision(
            _DUPLICATE,
            record.event_id,
            _CROSS_VERSION,
            match=method,
            lag_seconds=stream_time - record.first_seen,
            first_version=record.first_version,
        )

    def _emit_new(
        self,
        event: ParsedEvent,
        received_at: dt.datetime,
        stream_time: int,
        case_ids: CaseIds,
        times: Times,
        ambiguous: bool = False,
    ) -> Decision:
        event_id = canonical.event_id(event.identity())
        record = EventRecord(
            event_id=event_id,
            event_type=event.event_type,
            occurred_at=times[0],
            occurred_alt=times[1] if len(times) > 1 else None,
            legacy_case_id=event.legacy_case_id,
            case_number=event.case_number,
            cpr=event.cpr,
            versions=VERSION_BITS[event.version],
            first_version=event.version.value,
            event_ref=event.event_ref,
            first_seen=stream_time,
            other_seen=None,
            municipality_code=event.municipality_code,
            seq=self.state.next_seq(),
        )
        self.state.add_event(record)
        self.effects.new_events[event_id] = record
        legacy, number = case_ids
        match = _AMBIGUOUS if ambiguous else None
        self.effects.output.append(
            canonical.case_event(
                event, event_id, received_at, _only(legacy), _only(number), match
            )
        )
        return Decision(_EMITTED, event_id, match=match)

    # --- links ------------------------------------------------------------------------------

    def _learn_explicit_link(self, event: ParsedEvent) -> tuple[Link | None, bool]:
        """A 3.0 message naming its old case id links the two ids, unless people differ."""
        legacy, number = event.legacy_case_id, event.case_number
        if legacy is None or number is None:
            return None, False
        known = self.state.links_by_legacy.get(legacy)
        if known is not None and known.case_number == number:
            return None, known.cpr != event.cpr
        if known is not None or number in self.state.links_by_number:
            return None, False  # each id links once; the first link stands
        if any(r.cpr != event.cpr for r in self.state.of_case([legacy], [number])):
            return None, True
        return self._add_link(Link(legacy, number, event.cpr, MatchMethod.LEGACY_ID.value)), False

    def _learn_fuzzy_link(self, record: EventRecord) -> Link | None:
        """After a fuzzy merge the record carries both ids: that pair is the link."""
        legacy, number = record.legacy_case_id, record.case_number
        if legacy is None or number is None:
            return None
        return self._add_link(Link(legacy, number, record.cpr, MatchMethod.FUZZY.value))

    def _add_link(self, link: Link) -> Link:
        self.state.add_link(link)
        self.effects.new_links.append(link)
        return link

    def _publish_link(
        self, link: Link, event: ParsedEvent, event_id: str, received_at: dt.datetime
    ) -> None:
        record = self.state.events[event_id]
        occurred_at = dt.datetime.fromtimestamp(record.occurred_at, dt.UTC)
        self.effects.output.append(canonical.link_event(link, event, occurred_at, received_at))


def _epoch_or_none(value: dt.datetime | None) -> int | None:
    return None if value is None else epoch(value)


def _only(values: set[str]) -> str | None:
    """The single id of a kind, or None; two ids of a kind (a conflict) are not guessed."""
    return next(iter(values)) if len(values) == 1 else None
