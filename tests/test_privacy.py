"""A raw message shown to an operator (`quarantine show`): every CPR in it masked."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import msgspec
import pytest

from gateway.privacy import apply, mask_message
from tests.conftest import run_cli
from tests.helpers import replayed_store

FIXTURES = Path(__file__).parent / "fixtures"
CPR, MASKED = "1401851234", "140185"


def _leaks(text: str, cpr: str = CPR) -> list[str]:
    """Where the person's last four digits still stand after their birth date, or the CPR
    can be read from any Base64 left in the text."""
    found = [m.group() for m in re.finditer(cpr[:6] + "-?" + cpr[6:], text)]
    for blob in re.findall(r"[A-Za-z0-9+/=]{16,}", text):
        data = blob.rstrip("=")
        data = data[: len(data) - len(data) % 4 if len(data) % 4 == 1 else len(data)]
        decoded = base64.b64decode(data + "=" * (-len(data) % 4))
        if cpr.encode() in decoded:
            found.append(f"Base64 {blob[:20]}...")
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.xml")))
def test_every_message_form_is_shown_with_its_cpr_masked(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    assert _leaks(body.decode()) != [], "the fixture names the person"
    shown = mask_message(body)
    assert _leaks(shown) == []
    assert MASKED in shown  # the birth date stays readable


def test_a_base64_payload_is_shown_decoded() -> None:
    shown = mask_message((FIXTURES / "v22-base64.xml").read_bytes())
    assert "decoded from Base64 for display" in shown
    assert "AESH01" in shown
    assert "140185****" in shown  # the record keeps its layout


def test_a_malformed_cpr_is_masked_where_the_format_puts_a_cpr() -> None:
    record = "AESH0100012345671401851X3410101202203011015"
    body = (b'<Haendelsesbesked><Beskeddata><Sagshaendelse xmlns="urn:dk:aes:sagshaendelse:'
            b'1.0">' + record.encode() + b"</Sagshaendelse></Beskeddata></Haendelsesbesked>")
    shown = mask_message(body)
    assert "1X34" not in shown
    assert "140185****" in shown
    xml = b"<Skadelidte><CPR>14018-51234</CPR></Skadelidte>"
    assert "51234" not in mask_message(xml)


def test_base64_that_does_not_decode_is_withheld() -> None:
    blob = base64.b64encode(b"AESH010001234567" + CPR.encode()).decode()
    body = f'<Base64 encoding="ISO-8859-1">{blob}!</Base64>'.encode()
    shown = mask_message(body)
    assert _leaks(shown) == []
    assert "withheld" in shown


def test_quarantine_show_masks_a_2_2_record_and_raw_shows_it_as_stored(tmp_path: Path) -> None:
    body = (FIXTURES / "v22-inline.xml").read_bytes()
    store = replayed_store(tmp_path, body, "--max-bytes", "1000")
    shown = run_cli("quarantine", "show", "1", "--store", str(store)).stdout
    assert "too_large" in shown
    assert _leaks(shown) == []
    raw = run_cli("quarantine", "show", "1", "--raw", "--store", str(store)).stdout
    assert raw.encode() == body


def test_quarantine_list_and_show_mask_a_cpr_quoted_in_the_reason(tmp_path: Path) -> None:
    body = (FIXTURES / "v22-inline.xml").read_bytes().replace(
        b"93981c87-7736-45fd-8e12-0c7394331045", CPR.encode())  # a CPR where the type goes
    store = replayed_store(tmp_path, body)
    listed = run_cli("quarantine", "list", "--store", str(store)).stdout
    assert "unknown_beskedtype" in listed
    assert "140185-****" in listed  # the detail quotes the Beskedtype
    assert _leaks(listed) == []
    assert _leaks(run_cli("quarantine", "show", "1", "--store", str(store)).stdout) == []


@pytest.mark.parametrize("mode", ["pseudonymised", "omitted"])
def test_a_sink_without_cpr_gets_free_text_with_any_cpr_masked(mode: str) -> None:
    """A caseworker may type a CPR into the event's text; a sink configured not to see the
    CPR got it there."""
    event = msgspec.json.decode(run_cli("replay", str(FIXTURES / "v30-inline.xml"),
                                        "--output", "-").stdout.splitlines()[0])
    event["description"] = "Sagen vedrører 140185-1234 (og 1401851234)"
    event["certificate"] = {"kind": "specialist", "specialty": "CPR 1401851234",
                            "requested_on": None, "received_on": None}
    shown = msgspec.json.decode(apply(msgspec.json.encode(event), mode, b"secret"))
    assert shown["description"] == "Sagen vedrører 140185-**** (og 140185-****)"
    assert shown["certificate"]["specialty"] == "CPR 140185-****"
    assert _leaks(json.dumps(shown)) == []
    full = msgspec.json.decode(apply(msgspec.json.encode(event), "full", None))
    assert full["description"] == event["description"]  # as AES wrote it, for a full sink
