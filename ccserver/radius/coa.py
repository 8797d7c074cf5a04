"""Disconnect-Request client (RFC 5176): ends calls on the NAS when a level of their chain runs
dry, when an account is suspended or deleted, or when an operator asks through the API.

Each request goes to the client's last-seen address and CoA port with User-Name,
Acct-Session-Id and Message-Authenticator, and is retried with backoff until a Disconnect-ACK or
-NAK arrives or the attempts run out. Results are counted in ccserver_disconnects_total.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import trio

from ccserver.actors.messages import Disconnect
from ccserver.admin_api.app import Api
from ccserver.config import split_host_port
from ccserver.observability import DISCONNECTS, get_logger
from ccserver.radius import codec
from ccserver.radius.codec import Code, RadiusError

if TYPE_CHECKING:
    from ccserver.radius.server import RadiusService

log = get_logger("ccserver.radius.coa")

ATTEMPTS_MAX = 4
FIRST_WAIT_SECONDS = 1.0  # doubled after each unanswered attempt
INFLIGHT_MAX = 256  # the identifier space per destination is 256


class DisconnectClient:
    def __init__(self, api: Api, service: RadiusService) -> None:
        self.api = api
        self.service = service
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        # Requests leave from the address the server listens on, which NAS firewalls expect.
        self.sock.bind((split_host_port(api.config.radius.auth_listen)[0], 0))
        self._waiting: dict[tuple[Any, int], tuple[bytes, trio.MemorySendChannel[Any]]] = {}
        self._next_id = 0
        self._slots = trio.Semaphore(INFLIGHT_MAX)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive)
                async for event in self.api.disconnect_receive:
                    await self._slots.acquire()
                    nursery.start_soon(self._disconnect, event)
        finally:
            self.sock.close()

    async def _receive(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            while True:
                try:
                    data, address = self.sock.recvfrom(4096)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                if len(data) < 2:
                    continue
                waiting = self._waiting.get((address, data[1]))
                if waiting is not None:
                    waiting[1].send_nowait(data)

    def _identifier(self, destination: Any) -> int:
        for _ in range(256):
            self._next_id = (self._next_id + 1) % 256
            if (destination, self._next_id) not in self._waiting:
                return self._next_id
        raise RuntimeError("no free RADIUS identifier")  # bounded by INFLIGHT_MAX

    async def _disconnect(self, event: Disconnect) -> None:
        try:
            result = await self._send(event)
        finally:
            self._slots.release()
        DISCONNECTS.labels(event.reason, result).inc()
        log.warning(
            "disconnect",
            session=event.session_id,
            nas=event.nas,
            user=event.username,
            reason=event.reason,
            level=event.account_number,
            result=result,
        )

    async def _send(self, event: Disconnect) -> str:
        client = self.service.nas.get(event.nas)
        address = self.service.last_address.get(event.nas)
        if client is None or address is None:
            return "no_client"
        destination = (address, client.coa_port)
        identifier = self._identifier(destination)
        attributes: list[tuple[str, object]] = [
            ("User-Name", event.username),
            ("Acct-Session-Id", event.session_id),
        ]
        request = codec.encode_request(
            Code.DISCONNECT_REQUEST, identifier, attributes, client.secret
        )
        send, receive = trio.open_memory_channel[bytes](4)
        self._waiting[(destination, identifier)] = (request[4:20], send)
        try:
            wait = FIRST_WAIT_SECONDS
            for _ in range(ATTEMPTS_MAX):
                try:
                    self.sock.sendto(request, destination)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
                    continue
                except OSError:
                    pass  # unreachable now; the next attempt may get through
                with trio.move_on_after(wait):
                    while True:
                        data = await receive.receive()
                        try:
                            reply = codec.verify_reply(data, request[4:20], client.secret)
                        except RadiusError:
                            continue  # forged or garbled: keep waiting for the real answer
                        if reply.code == Code.DISCONNECT_ACK:
                            return "ack"
                        if reply.code == Code.DISCONNECT_NAK:
                            return "nak"
                wait *= 2
            return "timeout"
        finally:
            del self._waiting[(destination, identifier)]
