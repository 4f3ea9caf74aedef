"""Beskedfordeler access: the STS client over mutual TLS; the token as SASL EXTERNAL response."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import trustme
from aiohttp import web

from adapters.sts import StsClient, StsError, TokenKeeper, parse_answer, token_url
from gateway.config import StsConfig, TlsConfig
from tests.fake_amqp import FakeBroker

# A SAML-like assertion with characters outside ASCII: it must arrive byte for byte.
ASSERTION = (
    '<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_a1">'
    "<saml:Issuer>https://adgangsstyring.stoettesystemerne.dk</saml:Issuer>"
    "<saml:AttributeValue>Københavns Kommune - Ærø Å</saml:AttributeValue></saml:Assertion>"
).encode()


class Sts:
    """A local STS speaking the documented JSON over mutual TLS; lifetimes are configurable."""

    def __init__(self, tmp: Path, lifetime_s: int = 3600) -> None:
        self.ca = trustme.CA()
        self.tmp = tmp
        self.lifetime_s = lifetime_s
        self.requests: list[dict[str, Any]] = []
        self.peer_certs: list[bytes] = []
        self.ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        self.ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(tmp / "sts.pem"))
        client = self.ca.issue_cert("organisation-oces3")
        client.private_key_pem.write_to_path(str(tmp / "oces-key.pem"))
        client.cert_chain_pems[0].write_to_path(str(tmp / "oces-cert.pem"))
        self.port = 0
        self.runner: web.AppRunner | None = None

    def config(self) -> StsConfig:
        return StsConfig(
            url=f"https://127.0.0.1:{self.port}/runtime/api/rest/wstrust/v1/issue",
            cvr="64942212",
            tls=TlsConfig(ca_file=str(self.tmp / "ca.pem"),
                          cert_file=str(self.tmp / "oces-cert.pem"),
                          key_file=str(self.tmp / "oces-key.pem")),
            refresh_before_seconds=2,
        )

    async def issue(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        ssl_object = request.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        self.peer_certs.append(ssl_object.getpeercert(binary_form=True))
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lifetime_s)
        number = len(self.requests)
        return web.json_response({
            "RequestedSecurityToken": {
                "Assertion": base64.b64encode(ASSERTION + f"<!-- {number} -->".encode()).decode()},
            "Lifetime": {"Created": dt.datetime.now(dt.UTC).strftime("%m/%d/%Y %H:%M:%S"),
                         "Expires": expires.strftime("%m/%d/%Y %H:%M:%S")},
        })

    async def __aenter__(self) -> Sts:
        app = web.Application()
        app.router.add_post("/runtime/api/rest/wstrust/v1/issue", self.issue)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                             cafile=str(self.tmp / "ca.pem"))
        context.load_cert_chain(str(self.tmp / "sts.pem"))
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def test_sts_client_sends_the_documented_request_over_mutual_tls(tmp_path: Path) -> None:
    async def scenario() -> tuple[Sts, bytes]:
        async with Sts(tmp_path) as sts:
            token = await StsClient(sts.config()).issue()
            return sts, token.assertion

    sts, assertion = asyncio.run(scenario())
    (request,) = sts.requests
    assert request["TokenType"].endswith("#SAMLV2.0")
    assert request["RequestType"].endswith("/Issue")
    assert request["KeyType"].endswith("/PublicKey")
    assert request["AnvenderKontekst"] == {"Cvr": "64942212"}
    assert request["AppliesTo"] == {
        "EndpointReference": {"Address": "http://entityid.kombit.dk/service/bfo_modtag/2"}}
    assert base64.b64decode(request["UseKey"]) == sts.peer_certs[0]  # our certificate, DER
    assert assertion == ASSERTION + b"<!-- 1 -->"


@pytest.mark.parametrize(
    "answer",
    [{}, {"RequestedSecurityToken": {"Assertion": "!!"}, "Lifetime": "01/01/2030 00:00:00"},
     {"RequestedSecurityToken": {"Assertion": "QUJD"}, "Lifetime": "2030-01-01"}],
)
def test_unusable_sts_answers_are_errors(answer: dict[str, Any]) -> None:
    with pytest.raises(StsError):
        parse_answer(answer)


def test_sasl_external_response_is_the_token_byte_for_byte() -> None:
    async def scenario() -> FakeBroker:
        async with FakeBroker() as broker:
            url = token_url(f"amqp://127.0.0.1:{broker.port}/BF", lambda: ASSERTION)
            connection = await aio_pika.connect(url, timeout=5)
            await connection.close()
            return broker

    broker = asyncio.run(scenario())
    assert broker.mechanisms == ["EXTERNAL"]
    assert broker.responses == [ASSERTION]


def test_other_external_connections_keep_the_empty_response() -> None:
    async def scenario() -> FakeBroker:
        async with FakeBroker() as broker:
            connection = await aio_pika.connect(
                f"amqp://127.0.0.1:{broker.port}/?auth=external", timeout=5)
            await connection.close()
            return broker

    assert asyncio.run(scenario()).responses == [b""]


def test_token_is_renewed_and_the_connection_reopened_before_expiry(tmp_path: Path) -> None:
    async def scenario() -> tuple[FakeBroker, Sts, dt.datetime]:
        async with Sts(tmp_path, lifetime_s=4) as sts, FakeBroker() as broker:
            keeper = TokenKeeper(StsClient(sts.config()), refresh_before_s=2)
            await keeper.ensure()
            assert keeper.token is not None
            first_expiry = keeper.token.expires_at
            url = token_url(f"amqp://127.0.0.1:{broker.port}/BF", keeper.current)
            connection = await aio_pika.connect_robust(url, timeout=5)
            keeper.keep_fresh(connection)
            for _ in range(100):  # the first token expires after 4 s; renewal is due after 2 s
                if len(broker.responses) >= 2:
                    break
                await asyncio.sleep(0.1)
            await connection.close()
            return broker, sts, first_expiry

    broker, sts, first_expiry = asyncio.run(scenario())
    assert broker.connected_at[1] < first_expiry  # re-opened while the old token was valid
    assert broker.responses[:2] == [ASSERTION + b"<!-- 1 -->", ASSERTION + b"<!-- 2 -->"]
    assert len(sts.requests) >= 2


def test_a_token_shorter_lived_than_the_renewal_lead_is_renewed_at_half_its_life(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """refresh_before_seconds longer than the STS's tokens live (set to the lifetime, say)
    made every token due at once: a new token and a re-opened connection every second."""
    async def scenario() -> Sts:
        async with Sts(tmp_path, lifetime_s=6) as sts, FakeBroker() as broker:
            keeper = TokenKeeper(StsClient(sts.config()), refresh_before_s=10)
            await keeper.ensure()
            url = token_url(f"amqp://127.0.0.1:{broker.port}/BF", keeper.current)
            connection = await aio_pika.connect_robust(url, timeout=5)
            keeper.keep_fresh(connection)
            await asyncio.sleep(4.5)
            await connection.close()
            return sts

    sts = asyncio.run(scenario())
    assert len(sts.requests) == 2  # the first, and one at about half its life (2.5-3 s)
    assert "renewed at half its lifetime" in caplog.text
