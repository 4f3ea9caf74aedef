"""The push receiver: StatusKode 20 only after the outcome is committed, 40 when it cannot."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
import trustme

from adapters.push import PushReceiver
from adapters.runtime import run
from adapters.sqlite import Store
from gateway import config as cfg
from gateway.metrics import PUSH_NOT_NOW
from gateway.pipeline import Pipeline
from gateway.ports import Delivery
from gateway.service import Service
from tests.conftest import read_jsonl
from tests.fakes import BrokenStore
from tests.helpers import push_to_jsonl

T = TypeVar("T")
FIXTURES = Path(__file__).parent / "fixtures"
PUSH_BODY = (FIXTURES / "v30-push-body.xml").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_code(answer: str) -> int:
    return int(answer.split("<StatusKode>")[1].split("<")[0])


async def post(url: str, body: bytes, ssl_context: ssl.SSLContext | None = None) -> str:
    async with aiohttp.ClientSession() as session, session.post(
        url, data=body, ssl=ssl_context if ssl_context else False
    ) as response:
        assert response.status == 200
        return await response.text()


async def post_chunked(url: str, body: bytes) -> str:
    """`body` with chunked transfer encoding: no Content-Length."""
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16 * 1024):
            yield body[start:start + 16 * 1024]

    async with aiohttp.ClientSession() as session, session.post(url, data=chunks()) as response:
        assert response.status == 200
        return await response.text()


async def when_up(call: Callable[[], Awaitable[T]]) -> T:
    """Retry `call` while the server it talks to is still starting (5 s at most)."""
    for _ in range(100):
        try:
            return await call()
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
    return await call()


async def serve_and_post(
    config: cfg.Config, url: str, bodies: Sequence[bytes], ssl_context: ssl.SSLContext | None
) -> list[str]:
    service = asyncio.create_task(run(config, until_idle=0.5))
    answers = [await when_up(lambda b=body: post(url, b, ssl_context)) for body in bodies]
    await service
    return answers


def test_push_answers_20_after_commit_and_the_event_is_out(tmp_path: Path) -> None:
    port = free_port()
    config = cfg.parse(push_to_jsonl(tmp_path, port, 'path = "/beskedmodtag"')
                       + '[http]\nlisten = "127.0.0.1:0"\n')
    answers = asyncio.run(serve_and_post(config, f"http://127.0.0.1:{port}/beskedmodtag",
                                         [PUSH_BODY, PUSH_BODY, b"<not xml"], None))
    assert [status_code(a) for a in answers] == [20, 20, 20]  # a refused message is stored too
    assert "ModtagBeskedOutput" in answers[0]
    assert [e["event_type"] for e in read_jsonl(tmp_path / "out.jsonl")] == [
        "rejected", "case_linked"]


def test_an_oversized_push_is_quarantined_and_answered_20(tmp_path: Path) -> None:
    """3 MiB and 17 MiB against a 1 MiB limit: until stop 15, aiohttp answered HTTP 413 (no
    StatusKode BFO knows) and the gateway kept no record of the message. Until stop 22 only
    the first 1 MiB + 1 bytes were kept: `quarantine replay` after raising the limit had no
    whole message to decide. Now it is kept whole up to 16 MiB, as the other sources keep it."""
    port = free_port()
    config = cfg.parse(push_to_jsonl(tmp_path, port))
    big, huge = (b"<a%d>" % n + b"x" * (size * 1024 * 1024) + b"</a>"
                 for n, size in ((1, 3), (2, 17)))
    answers = asyncio.run(serve_and_post(config, f"http://127.0.0.1:{port}/", [big, huge],
                                         None))

    async def quarantined() -> list[tuple[str, str | None, int]]:
        store = await Store.open(str(tmp_path / "g.db"))
        try:
            return [(row.reason, row.detail, len(row.body))
                    async for page in store.quarantined_pages() for row in page]
        finally:
            await store.close()

    assert [status_code(a) for a in answers] == [20, 20]
    limit = config.matching.max_message_bytes
    assert asyncio.run(quarantined()) == [
        ("too_large", f"message over the limit of {limit} bytes", size)
        for size in (len(big), 16 * 1024 * 1024)]


def test_push_over_https_verifies_the_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("bfo-function-certificate")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    config = cfg.parse(f"""
        [store]
        path = "{tmp_path / 'g.db'}"
        [[sources]]
        type = "push"
        listen = "127.0.0.1:{port}"
        [sources.tls]
        cert_file = "{tmp_path / 'server.pem'}"
        key_file = "{tmp_path / 'server.pem'}"
        ca_file = "{tmp_path / 'ca.pem'}"
        require_client_cert = true
        [[sinks]]
        type = "jsonl"
        path = "{tmp_path / 'out.jsonl'}"
        [http]
        listen = "127.0.0.1:0"
    """)
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client.configure_cert(with_cert)
    without_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    async def scenario() -> tuple[str, type[BaseException] | None]:
        service = asyncio.create_task(run(config, until_idle=0.5))
        refused: type[BaseException] | None = None
        answer = await when_up(lambda: post(f"https://127.0.0.1:{port}/", PUSH_BODY, with_cert))
        try:
            await post(f"https://127.0.0.1:{port}/", PUSH_BODY, without_cert)
        except (aiohttp.ClientError, ssl.SSLError) as exc:
            refused = type(exc)
        await service
        return answer, refused

    answer, refused = asyncio.run(scenario())
    assert status_code(answer) == 20
    assert refused is not None, "a client without a certificate must be refused"


@pytest.mark.parametrize("broken", [True, False], ids=["store-unavailable", "store-ok"])
def test_push_answers_40_when_the_store_cannot_commit(tmp_path: Path, broken: bool) -> None:
    async def scenario() -> int:
        intake: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=10)
        store = BrokenStore() if broken else await Store.open(tmp_path / "g.db")
        port = free_port()
        receiver = PushReceiver(cfg.PushSource(listen=f"127.0.0.1:{port}"), intake, 1 << 20)
        closers = [store.close] if isinstance(store, Store) else []
        service = Service(Pipeline(store), intake, [receiver], [], closers=closers)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        answer = await when_up(lambda: post(f"http://127.0.0.1:{port}/", PUSH_BODY))
        stop.set()
        await task
        return status_code(answer)

    assert asyncio.run(scenario()) == (40 if broken else 20)


def test_push_accepts_only_the_allowed_client_certificates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CA such as OCES3 vouches for every Danish organisation's function certificate: until
    stop 16 any of them could push case events that the gateway emitted as AES's."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    config = cfg.parse(push_to_jsonl(tmp_path, port, f"""
        [sources.tls]
        cert_file = "{tmp_path / 'server.pem'}"
        key_file = "{tmp_path / 'server.pem'}"
        ca_file = "{tmp_path / 'ca.pem'}"
        require_client_cert = true
        allowed_clients = ["CN=Beskedfordeler, O=KOMBIT A/S"]
    """) + '[http]\nlisten = "127.0.0.1:0"\n')
    contexts = {}
    for organisation in ("KOMBIT A/S", "Anden A/S"):  # the same CN, from the same CA
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        ca.issue_cert("client", common_name="Beskedfordeler",
                      organization_name=organisation).configure_cert(context)
        contexts[organisation] = context

    async def status(context: ssl.SSLContext) -> int:
        async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{port}/", data=PUSH_BODY, ssl=context) as response:
            return response.status if response.status != 200 else status_code(
                await response.text())

    async def scenario() -> list[int]:
        service = asyncio.create_task(run(config, until_idle=0.5))
        answers = [await when_up(lambda: status(contexts["Anden A/S"])),
                   await status(contexts["KOMBIT A/S"])]
        await service
        return answers

    assert asyncio.run(scenario()) == [403, 20]
    assert [e["event_type"] for e in read_jsonl(tmp_path / "out.jsonl")] == [
        "rejected", "case_linked"]  # the allowed one only
    (refused,) = [r for r in caplog.records if r.getMessage().startswith("push refused")]
    assert refused.levelname == "WARNING"
    assert "organizationName=Anden A/S" in refused.subject  # type: ignore[attr-defined]


def test_push_answers_40_when_overloaded() -> None:
    async def scenario() -> int:
        intake: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=1)
        intake.put_nowait(object())  # type: ignore[arg-type] - the intake is already full
        port = free_port()
        receiver = PushReceiver(cfg.PushSource(listen=f"127.0.0.1:{port}"), intake, 1 << 20,
                                reasons.append)
        await receiver.start(asyncio.Event())
        try:
            return status_code(await post(f"http://127.0.0.1:{port}/", PUSH_BODY))
        finally:
            await receiver.close()

    reasons: list[str] = []
    assert asyncio.run(scenario()) == 40
    assert reasons == ["intake_full"]


def test_push_answers_40_past_max_held_bytes_and_takes_what_fits() -> None:
    """Until stop 24 every connection could hold a body: up to 256 x 16 MiB at once."""
    big = PUSH_BODY + b" " * 60_000  # whitespace after the root: the same message

    async def scenario() -> tuple[list[str], list[int]]:
        intake: asyncio.Queue[Delivery] = asyncio.Queue()  # never decided: the bodies stay held
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        config = cfg.PushSource(listen=f"127.0.0.1:{port}", timeout_seconds=1.0,
                                max_held_bytes=100_000)
        receiver = PushReceiver(config, intake, 1 << 20, reasons.append)
        await receiver.start(asyncio.Event())
        try:
            first = asyncio.create_task(post(url, big))  # held until it times out
            await asyncio.wait_for(intake.get(), 5)  # and read: the intake has it
            sizes = [receiver.held]
            second = await post(url, big)  # does not fit beside the first: refused at once
            sizes.append(intake.qsize())
            chunked = await post_chunked(url, big)  # no length to reserve: refused as read
            sizes.append(intake.qsize())
            small = asyncio.create_task(post(url, PUSH_BODY))  # fits beside it
            answers = [await first, second, chunked, await small]
            sizes.append(intake.qsize())
            answers.append(await post(url, big))  # the first is let go: fits again
            sizes += [intake.qsize(), receiver.held]
            return answers, sizes
        finally:
            await receiver.close()

    reasons: list[str] = []
    answers, sizes = asyncio.run(scenario())
    texts = [answer.split("<FejlbeskedTekst>")[1].split("<")[0] for answer in answers]
    assert [status_code(answer) for answer in answers] == [40] * 5
    assert texts == ["not stored in time", "overloaded", "overloaded", "not stored in time",
                     "not stored in time"]
    assert sizes == [len(big), 0, 0, 1, 2, 0]
    assert sorted(reasons) == sorted(["commit_timeout", "held_bytes", "held_bytes",
                                      "commit_timeout", "commit_timeout"])  # the metric's


def test_health_and_readiness(tmp_path: Path) -> None:
    port, http = free_port(), free_port()
    config = cfg.parse(f"""
        [store]
        path = "{tmp_path / 'g.db'}"
        [[sources]]
        type = "push"
        listen = "127.0.0.1:{port}"
        [[sinks]]
        type = "mqtt"
        url = "mqtt://127.0.0.1:{free_port()}"
        [http]
        listen = "127.0.0.1:{http}"
    """)

    async def scenario() -> tuple[int, int, dict[str, object], str]:
        stop = asyncio.Event()
        service = asyncio.create_task(run(config, stop=stop))
        async with aiohttp.ClientSession() as session:
            async def healthz() -> int:
                async with session.get(f"http://127.0.0.1:{http}/healthz") as alive:
                    return alive.status

            alive_status = await when_up(healthz)
            # the push listener starts after /healthz does: wait for it as for /healthz
            await when_up(lambda: post(f"http://127.0.0.1:{port}/", PUSH_BODY))  # MQTT sink down
            await asyncio.sleep(1.5)
            async with session.get(f"http://127.0.0.1:{http}/readyz") as ready:
                ready_status, body = ready.status, await ready.json()
            async with session.get(f"http://127.0.0.1:{http}/metrics") as scrape:
                metrics = await scrape.text()
        stop.set()
        await service
        return alive_status, ready_status, body, metrics

    alive, ready, body, metrics = asyncio.run(scenario())
    assert alive == 200
    assert ready == 503  # a stalled sink: not ready
    assert body["sinks_stalled"]
    assert 'aes_gateway_messages_total{outcome="emitted",version="3.0"} 1.0' in metrics
    for reason in PUSH_NOT_NOW:  # there from the start, for rates and alerts
        assert (f'aes_gateway_push_not_now_total{{reason="{reason}",'
                f'source="push:127.0.0.1:{port}"}} 0.0') in metrics


def test_a_body_that_does_not_arrive_in_time_is_answered_40(tmp_path: Path) -> None:
    """A client that sends its headers and then a trickle of its body: until stop 16 the
    receiver waited for the rest for ever, holding the connection."""
    port = free_port()
    config = cfg.parse(push_to_jsonl(tmp_path, port, "timeout_seconds = 0.5")
                       + '[http]\nlisten = "127.0.0.1:0"\n')

    async def trickle() -> bytes:
        for _ in range(100):  # while the receiver is still starting
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
        writer.write(b"POST / HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/xml\r\n"
                     b"Content-Length: 1000\r\n\r\n<ModtagBeskedInput")
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(4096), 5)
        finally:
            writer.close()

    async def scenario() -> bytes:
        service = asyncio.create_task(run(config, until_idle=1.0))
        answer = await trickle()
        await service
        return answer

    answer = asyncio.run(scenario()).decode()
    assert answer.startswith("HTTP/1.1 200")
    assert "<StatusKode>40</StatusKode>" in answer
    assert "body not received in time" in answer
    assert not (tmp_path / "out.jsonl").read_text()
