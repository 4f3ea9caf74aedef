"""Beskedfordeler access: a SAML token from KOMBIT's STS, sent as the SASL EXTERNAL response.

aiormq's EXTERNAL mechanism sends an empty response. Our connections carry a token reference in
the URL query (`saml_token=<ref>`, never the token itself); for those, and only those, the
EXTERNAL response is the current token's raw bytes. Every reconnect asks for the current
token, and a refresher re-opens the connection with a fresh one before the old one expires.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aio_pika
import aiohttp
import aiormq.auth
import msgspec
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from adapters.amqp import Connector, client_properties
from adapters.tls import client_context
from gateway.config import StsConfig, TlsConfig

log = logging.getLogger("aes_gateway.sts")

SAML2_TOKEN_TYPE: Final = (
    "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0"  # noqa: S105 - a URI
)
ISSUE: Final = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue"
PUBLIC_KEY: Final = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/PublicKey"
LIFETIME_FORMAT: Final = "%m/%d/%Y %H:%M:%S"
TOKEN_QUERY: Final = "saml_token"  # noqa: S105 - the query key of a reference, not a secret


class StsError(Exception):
    """The STS did not issue a usable token."""


class Token(msgspec.Struct, frozen=True):
    assertion: bytes  # the raw SAML assertion, as the STS issued it
    expires_at: dt.datetime


def request_body(config: StsConfig) -> dict[str, Any]:
    """The REST variant's JSON issue request."""
    if config.tls.cert_file is None:
        raise StsError("sts.tls.cert_file (the OCES3 certificate) is required")
    pem = Path(config.tls.cert_file).read_text(encoding="ascii")
    der = ssl.PEM_cert_to_DER_cert(pem[: pem.index("-----END CERTIFICATE-----") + 25])
    return {
        "TokenType": SAML2_TOKEN_TYPE,
        "RequestType": ISSUE,
        "KeyType": PUBLIC_KEY,
        "AnvenderKontekst": {"Cvr": config.cvr},
        "UseKey": base64.b64encode(der).decode(),
        "AppliesTo": {"EndpointReference": {"Address": config.entity_id}},
    }


def parse_answer(answer: Any) -> Token:
    """`RequestedSecurityToken.Assertion` (base64) and `Lifetime` (UTC, `%m/%d/%Y %H:%M:%S`)."""
    try:
        assertion = base64.b64decode(answer["RequestedSecurityToken"]["Assertion"], validate=True)
        lifetime = answer["Lifetime"]
        expires = lifetime["Expires"] if isinstance(lifetime, dict) else lifetime
        expires_at = dt.datetime.strptime(expires, LIFETIME_FORMAT).replace(tzinfo=dt.UTC)
        assertion.decode("utf-8")  # the SASL response is sent as a UTF-8 long string
    except (KeyError, TypeError, ValueError) as exc:
        raise StsError(f"STS answer without a usable token: {exc!r}") from exc
    return Token(assertion, expires_at)


class StsClient:
    def __init__(self, config: StsConfig) -> None:
        self.config = config
        self._ssl = client_context(config.tls)

    async def issue(self) -> Token:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.post(self.config.url, json=request_body(self.config),
                             ssl=self._ssl) as response,
            ):
                if response.status != 200:
                    raise StsError(f"STS answered HTTP {response.status}")
                token = parse_answer(await response.json(content_type=None))
        except aiohttp.ClientError as exc:
            raise StsError(f"cannot reach the STS: {exc}") from exc
        log.info("STS token issued", extra={"expires_at": token.expires_at.isoformat()})
        return token


# --- SASL EXTERNAL with the token -------------------------------------------------------------

_TOKENS: dict[str, Callable[[], bytes]] = {}
_refs = itertools.count(1)
_original_encode = aiormq.auth.ExternalAuth.encode


def _external_response(self: aiormq.auth.ExternalAuth) -> str:
    ref = self.connector.url.query.get(TOKEN_QUERY)
    provider = _TOKENS.get(ref) if ref else None
    if provider is None:
        return str(_original_encode(self))
    return provider().decode("utf-8")


aiormq.auth.ExternalAuth.encode = _external_response  # type: ignore[method-assign]


def token_url(url: str, provider: Callable[[], bytes]) -> str:
    """The URL with `auth=external` and a reference to the token provider."""
    ref = f"t{next(_refs)}"
    _TOKENS[ref] = provider
    # a renewal closes the connection on purpose: re-open it at once, not after aio-pika's 5 s
    return str(URL(url).update_query(
        {"auth": "external", TOKEN_QUERY: ref, "reconnect_interval": "0.5"}))


class TokenKeeper:
    """Holds the current token and renews it before it expires, re-opening the connection."""

    def __init__(self, client: StsClient, refresh_before_s: int) -> None:
        self.client = client
        self.refresh_before = dt.timedelta(seconds=refresh_before_s)
        self.token: Token | None = None
        self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._task: asyncio.Task[None] | None = None

    def current(self) -> bytes:
        if self.token is None:
            raise StsError("no token yet")
        return self.token.assertion

    async def ensure(self) -> None:
        if self.token is None or self._due() <= 0:
            self._take(await self.client.issue())

    def _take(self, token: Token) -> None:
        """Renewed `refresh_before` ahead of expiry, but not before half its lifetime: with a
        lifetime shorter than that lead (refresh_before_seconds set to the lifetime, say), a
        token would be due at once, and the connection re-opened every second."""
        now = dt.datetime.now(dt.UTC)
        lead = min(self.refresh_before, (token.expires_at - now) / 2)
        if lead < self.refresh_before:
            log.warning("the STS token lives %.0f s, less than twice refresh_before_seconds "
                        "(%.0f s): it is renewed at half its lifetime",
                        (token.expires_at - now).total_seconds(),
                        self.refresh_before.total_seconds())
        self.token = token
        self._renew_at = token.expires_at - lead

    def _due(self) -> float:
        return (self._renew_at - dt.datetime.now(dt.UTC)).total_seconds()

    def keep_fresh(self, connection: AbstractRobustConnection) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._renew(connection), name="sts renew")

    async def _renew(self, connection: AbstractRobustConnection) -> None:
        while not connection.is_closed:
            await asyncio.sleep(max(self._due(), 1.0))
            try:
                self._take(await self.client.issue())
            except StsError:
                log.exception("token renewal failed; retrying in 30 s")
                await asyncio.sleep(30)
                continue
            log.info("re-opening the connection with the fresh token")
            await connection.reconnect()


def token_connector(url: str, tls: TlsConfig | None, sts: StsConfig, name: str) -> Connector:
    keeper = TokenKeeper(StsClient(sts), sts.refresh_before_seconds)
    full_url = token_url(url, keeper.current)

    async def connect() -> AbstractRobustConnection:
        await keeper.ensure()
        connection = await aio_pika.connect_robust(
            full_url, ssl_context=client_context(tls), timeout=10,
            client_properties=client_properties(name),
        )
        keeper.keep_fresh(connection)
        return connection

    return connect
