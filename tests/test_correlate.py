"""Spec part 6: when two messages are the same event. Pure core, in-memory state."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from gateway.correlate import CorrelationState, Correlator, Decision, Effects
from gateway.model import DuplicateKind, MatchMethod, Outcome, ParsedEvent, Version
from tests.helpers import event

V22, V30 = Version.V2_2, Version.V3_0
T0 = dt.datetime(2022, 3, 1, 9, 15, tzinfo=dt.UTC)
RECEIVED = dt.datetime(2022, 3, 1, 9, 20, tzinfo=dt.UTC)
OTHER_CPR = "0101001234"


class Core:
    """The correlator over one in-memory state, the way the store uses it per batch."""

    def __init__(self, tolerance_s: int = 120) -> None:
        self.effects = Effects()
        self.correlator = Correlator(CorrelationState(), self.effects, tolerance_s)

    def accept(self, *events: ParsedEvent) -> list[Decision]:
        return [self.correlator.accept(e, RECEIVED) for e in events]

    def output_types(self) -> list[str]:
        return [e.event_type for e in self.effects.output]


def test_new_event_is_emitted_with_a_deterministic_id() -> None:
    first, second = Core(), Core()
    one = event(V22, legacy="1234567")
    assert first.accept(one)[0].outcome is Outcome.EMITTED
    assert second.accept(one)[0].event_id == first.accept(one)[0].event_id


def test_same_version_resend_of_2_2() -> None:
    core = Core()
    _, resend = core.accept(event(V22, legacy="1234567"), event(V22, legacy="1234567"))
    assert resend.outcome is Outcome.DUPLICATE
    assert resend.duplicate_kind is DuplicateKind.SAME_VERSION


def test_3_0_repeating_a_haendelse_id_is_the_same_event_whatever_else_it_says() -> None:
    core = Core()
    first = event(V30, number="AES-2022-0000001", ref="0b4b2f8e-3c1e-4c55-9d5e-6a0f3f1c2b7a")
    other = event(V30, event_type="recognised", at=T0 + dt.timedelta(days=9),
                  number="AES-2022-0000002", ref="0b4b2f8e-3c1e-4c55-9d5e-6a0f3f1c2b7a")
    decisions = core.accept(first, other)
    assert decisions[1].duplicate_kind is DuplicateKind.SAME_VERSION
    assert decisions[1].event_id == decisions[0].event_id


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["2.2-first", "3.0-first"])
def test_cross_version_twin_by_old_case_id_in_either_order(order: tuple[int, int]) -> None:
    messages = [
        event(V22, legacy="1234567"),
        event(V30, legacy="1234567", number="AES-2022-0004711", at=T0 + dt.timedelta(seconds=42)),
    ]
    core = Core()
    first, second = core.accept(*(messages[i] for i in order))
    assert first.outcome is Outcome.EMITTED
    assert second.duplicate_kind is DuplicateKind.CROSS_VERSION
    assert second.match is MatchMethod.LEGACY_ID
    assert second.event_id == first.event_id
    assert core.output_types() == ["rejected", "case_linked"]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["2.2-first", "3.0-first"])
def test_cross_version_twin_by_learned_link_in_either_order(order: tuple[int, int]) -> None:
    core = Core()
    # An earlier event of the case names its old id: that teaches the link.
    core.accept(event(V30, event_type="reported", at=T0 - dt.timedelta(days=30),
                      legacy="1234567", number="AES-2022-0004711"))
    messages = [event(V22, legacy="1234567"), event(V30, number="AES-2022-0004711")]
    first, second = core.accept(*(messages[i] for i in order))
    assert second.match is MatchMethod.LEARNED_LINK
    assert second.event_id == first.event_id
    assert core.output_types() == ["reported", "case_linked", "rejected"]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["2.2-first", "3.0-first"])
def test_fuzzy_twin_links_the_case_in_either_order(order: tuple[int, int]) -> None:
    core = Core()
    messages = [event(V22, legacy="1234567"),
                event(V30, number="AES-2022-0004711", at=T0 + dt.timedelta(seconds=50))]
    first, second = core.accept(*(messages[i] for i in order))
    assert second.match is MatchMethod.FUZZY
    assert second.event_id == first.event_id
    assert second.link is not None
    assert (second.link.legacy_case_id, second.link.case_number) == ("1234567", "AES-2022-0004711")
    # and every later event of either id uses that link
    later = core.accept(
        event(V30, event_type="recognised", at=T0 + dt.timedelta(days=5),
              number="AES-2022-0004711"),
        event(V22, event_type="recognised", at=T0 + dt.timedelta(days=5), legacy="1234567"),
    )
    assert later[1].match is MatchMethod.LEARNED_LINK
    assert core.output_types() == ["rejected", "case_linked", "recognised"]


def test_fuzzy_needs_the_same_person() -> None:
    core = Core()
    core.accept(event(V22, legacy="1234567"))
    (decision,) = core.accept(event(V30, number="AES-2022-0004711", cpr=OTHER_CPR))
    assert decision.outcome is Outcome.EMITTED


@pytest.mark.parametrize("late", [V30, V22], ids=["3.0-late", "2.2-late"])
def test_fuzzy_with_two_candidates_is_ambiguous_and_not_merged(late: Version) -> None:
    core = Core()
    if late is V30:
        core.accept(event(V22, legacy="1111111"), event(V22, legacy="2222222",
                                                        at=T0 + dt.timedelta(seconds=40)))
        (decision,) = core.accept(event(V30, number="AES-2022-0000001",
                                        at=T0 + dt.timedelta(seconds=20)))
    else:
        core.accept(event(V30, number="AES-2022-0000001"),
                    event(V30, number="AES-2022-0000002", at=T0 + dt.timedelta(seconds=40)))
        (decision,) = core.accept(event(V22, legacy="1111111", at=T0 + dt.timedelta(seconds=20)))
    assert decision.outcome is Outcome.EMITTED
    assert decision.match is MatchMethod.AMBIGUOUS
    assert "case_linked" not in core.output_types()
    assert core.effects.output[-1].provenance.match == "ambiguous"


def test_fuzzy_skips_a_2_2_event_whose_case_is_already_linked() -> None:
    core = Core()
    core.accept(event(V30, event_type="reported", at=T0 - dt.timedelta(days=3),
                      legacy="1234567", number="AES-2022-0000009"))
    core.accept(event(V22, legacy="1234567"))
    (decision,) = core.accept(event(V30, number="AES-2022-0004711"))
    assert decision.outcome is Outcome.EMITTED


@pytest.mark.parametrize(("gap", "same"), [(120, True), (121, False), (-120, True), (-121, False)])
def test_match_tolerance_boundary(gap: int, same: bool) -> None:
    core = Core()
    _, second = core.accept(
        event(V22, legacy="1234567"),
        event(V30, legacy="1234567", number="AES-2022-0004711", at=T0 + dt.timedelta(seconds=gap)),
    )
    assert (second.outcome is Outcome.DUPLICATE) is same


def test_tolerance_is_configurable() -> None:
    core = Core(tolerance_s=600)
    _, second = core.accept(
        event(V22, legacy="1234567"),
        event(V30, legacy="1234567", number="AES-2022-0004711", at=T0 + dt.timedelta(seconds=500)),
    )
    assert second.outcome is Outcome.DUPLICATE


def test_different_event_types_are_different_events() -> None:
    core = Core()
    _, second = core.accept(event(V22, legacy="1234567"),
                            event(V22, event_type="recognised", legacy="1234567"))
    assert second.outcome is Outcome.EMITTED


def test_autumn_twin_matches_the_second_occurrence() -> None:
    first = dt.datetime(2022, 10, 30, 0, 30, tzinfo=dt.UTC)
    second = dt.datetime(2022, 10, 30, 1, 30, tzinfo=dt.UTC)
    core = Core()
    decisions = core.accept(
        event(V22, at=first, alt=second, legacy="1234567"),
        event(V30, at=second + dt.timedelta(seconds=48), legacy="1234567",
              number="AES-2022-0004711"),
    )
    assert decisions[1].duplicate_kind is DuplicateKind.CROSS_VERSION
    assert core.effects.output[0].occurred_at == first  # canonical: the first occurrence


def test_link_across_people_is_a_conflict_and_never_merged() -> None:
    core = Core()
    old, clash = core.accept(
        event(V22, legacy="1234567"),
        event(V30, legacy="1234567", number="AES-2022-0004711", cpr=OTHER_CPR),
    )
    assert clash.outcome is Outcome.EMITTED
    assert clash.conflict
    assert clash.event_id != old.event_id
    assert "case_linked" not in core.output_types()


def test_conflict_when_a_learned_link_names_another_person() -> None:
    core = Core()
    core.accept(event(V30, event_type="reported", at=T0 - dt.timedelta(days=3),
                      legacy="1234567", number="AES-2022-0004711"))
    (decision,) = core.accept(event(V22, legacy="1234567", cpr=OTHER_CPR))
    assert decision.outcome is Outcome.EMITTED
    assert decision.conflict


def test_case_linked_is_emitted_once_per_link() -> None:
    core = Core()
    core.accept(*(
        event(V30, event_type=t, at=T0 + dt.timedelta(days=i), legacy="1234567",
              number="AES-2022-0004711")
        for i, t in enumerate(["reported", "rejected", "reprocessing_started"])
    ))
    assert core.output_types().count("case_linked") == 1


def test_new_events_carry_both_ids_once_the_link_is_known() -> None:
    core = Core()
    core.accept(event(V30, event_type="reported", at=T0 - dt.timedelta(days=3),
                      legacy="1234567", number="AES-2022-0004711"))
    core.accept(event(V22, legacy="1234567"))
    emitted = core.effects.output[-1]
    assert (emitted.case.legacy_case_id, emitted.case.case_number) == (
        "1234567", "AES-2022-0004711")


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_outcome_counts_do_not_depend_on_arrival_order(order: tuple[int, ...]) -> None:
    messages = [
        event(V22, legacy="1234567"),
        event(V30, number="AES-2022-0004711", at=T0 + dt.timedelta(seconds=30)),
        event(V22, event_type="recognised", at=T0 + dt.timedelta(days=2), legacy="1234567"),
        event(V30, event_type="recognised", at=T0 + dt.timedelta(days=2, seconds=5),
              number="AES-2022-0004711"),
    ]
    core = Core()
    decisions = core.accept(*(messages[i] for i in order))
    assert sum(d.outcome is Outcome.EMITTED for d in decisions) == 2
    assert sum(d.duplicate_kind is DuplicateKind.CROSS_VERSION for d in decisions) == 2
    assert core.output_types().count("case_linked") == 1
