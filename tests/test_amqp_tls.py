"""AMQP over TLS with a test CA and a client certificate, to the real RabbitMQ.

A TLS endpoint in front of RabbitMQ (as the Beskedfordeler's is) verifies our client
certificate; the gateway verifies the endpoint against the test CA."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import trustme

from adapters.runtime import run
from gateway import config as cfg
from tests import brokers
from tests.conftest import read_jsonl

FIXTURES = Path(__file__).parent / "fixtures"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class TlsFront:
    """TLS with required client certificates, forwarding to RabbitMQ's plain port."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.clients: list[dict[str, object]] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append(writer.get_extra_info("peercert"))
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 5672)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    async def start(self) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = server.sockets[0].getsockname()[1]
        return server


def _setup(tmp_path: Path) -> TlsFront:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    client = ca.issue_cert("aes-gateway.example.dk")
    client.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                                cafile=str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    return TlsFront(server_context)


def _run_through(front: TlsFront, tmp_path: Path, ca_file: str) -> None:
    async def scenario() -> None:
        server = await front.start()
        topo = await brokers.declare()
        try:
            await brokers.publish(topo.q30, [(FIXTURES / "v30-inline.xml").read_bytes()])
            config = cfg.parse(f"""
                [store]
                path = "{tmp_path / 'g.db'}"
                [[sources]]
                type = "amqp"
                url = "amqps://guest:guest@127.0.0.1:{front.port}/"
                queue = "{topo.q30}"
                [sources.tls]
                ca_file = "{tmp_path / ca_file}"
                cert_file = "{tmp_path / 'cert.pem'}"
                key_file = "{tmp_path / 'key.pem'}"
                [[sinks]]
                type = "jsonl"
                path = "{tmp_path / 'out.jsonl'}"
                [http]
                listen = "127.0.0.1:0"
            """)
            await run(config, until_idle=1.5)
        finally:
            await brokers.delete(topo)
            server.close()

    asyncio.run(scenario())


def test_amqps_with_client_certificate_verified_both_ways(tmp_path: Path) -> None:
    front = _setup(tmp_path)
    _run_through(front, tmp_path, "ca.pem")
    assert [e["event_type"] for e in read_jsonl(tmp_path / "out.jsonl")] == [
        "rejected", "case_linked"]
    assert front.clients, "the gateway connected through the TLS front"
    for peer in front.clients:  # the front saw our client certificate on every connection
        assert ("DNS", "aes-gateway.example.dk") in peer["subjectAltName"]  # type: ignore[operator]


def test_amqps_refuses_a_server_its_ca_does_not_vouch_for(tmp_path: Path) -> None:
    front = _setup(tmp_path)
    _run_through(front, tmp_path, "other-ca.pem")
    assert front.clients == []
    assert read_jsonl(tmp_path / "out.jsonl") == []
