"""A minimal AMQP 0-9-1 peer that records each connection's SASL mechanism and response bytes.

It speaks just the connection handshake (and answers Close), which is all a test of the
authentication needs; everything else is the real RabbitMQ's job in the other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import pamqp.commands as amqp
import pamqp.frame
from pamqp import commands as c


class FakeBroker:
    def __init__(self) -> None:
        self.responses: list[bytes] = []
        self.connected_at: list[dt.datetime] = []
        self.mechanisms: list[str] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self.connected = asyncio.Event()

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(8)  # protocol header
            self._send(writer, c.Connection.Start(mechanisms="EXTERNAL PLAIN", locales="en_US"))
            start_ok = await self._read(reader)
            assert isinstance(start_ok, amqp.Connection.StartOk)
            self.mechanisms.append(start_ok.mechanism)
            self.connected_at.append(dt.datetime.now(dt.UTC))
            response = start_ok.response
            self.responses.append(response.encode("utf-8") if isinstance(response, str)
                                  else bytes(response))
            self._send(writer, c.Connection.Tune(channel_max=16, frame_max=131072, heartbeat=0))
            await self._read(reader)  # TuneOk
            await self._read(reader)  # Open
            self._send(writer, c.Connection.OpenOk())
            self.connected.set()
            while True:
                frame = await self._read(reader)
                if isinstance(frame, amqp.Connection.Close):
                    self._send(writer, c.Connection.CloseOk())
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, frame: object) -> None:
        writer.write(pamqp.frame.marshal(frame, 0))  # type: ignore[arg-type]

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> object:
        header = await reader.readexactly(7)
        size = int.from_bytes(header[3:7], "big")
        payload = await reader.readexactly(size + 1)
        _, _, frame = pamqp.frame.unmarshal(header + payload)
        return frame
