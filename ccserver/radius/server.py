"""RADIUS authentication and accounting over trio UDP sockets.

Each socket drains every readable datagram per wake-up. An Access-Request is answered at once (the
engine is synchronous); an Accounting-Request is answered only after its ledger write commits: the
write is queued and the writer answers it after COMMIT. At most ACCOUNTING_INFLIGHT_MAX of them
are in flight per socket: at the bound the socket is not read and the NAS's retransmissions wait
in the kernel buffer (backpressure, nothing dropped silently).
Known clients only; Message-Authenticator is verified before anything else; retransmissions get
the cached reply (RFC 5080) and are never processed twice.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import trio

from ccserver.actors.messages import (
    AccountingRequest,
    CallRequest,
    Chap,
    Credential,
    Grant,
    Pap,
    Reject,
    RejectReason,
    StopResult,
)
from ccserver.admin_api.app import Api
from ccserver.admin_api.nas_clients import NasClient, nas_table
from ccserver.config import split_host_port
from ccserver.ledger.writer import LedgerWrite, OpenSession, WriteOutcome
from ccserver.money import format_money
from ccserver.observability import DROPPED_PACKETS, REQUEST_SECONDS, REQUESTS, child, get_logger
from ccserver.radius import codec
from ccserver.radius.codec import Code, Packet, RadiusError

log = get_logger("ccserver.radius")

DATAGRAM_BYTES_MAX = 4096
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
ACCOUNTING_INFLIGHT_MAX = 2_000
DUPLICATE_CACHE_MAX = 200_000
DUPLICATE_TTL_SECONDS = 30.0  # RFC 5080 suggests keeping replies for a few retransmissions
# A burst is read whole, and the socket's task lets the others run after every YIELD_EVERY
# datagrams of it: the ledger writer then starts committing the first writes of a burst while the
# rest are still handled, rather than taking the whole burst in one batch after its last datagram.
# (Shielded: a datagram read is handled even when reading stops meanwhile.)
YIELD_EVERY = 32

RETURN_CODES = {
    RejectReason.UNKNOWN_ACCOUNT: 1,
    RejectReason.BAD_CREDENTIALS: 2,
    RejectReason.CONCURRENCY_LIMIT: 3,
    RejectReason.INSUFFICIENT_FUNDS: 4,
    RejectReason.EXPIRED: 5,
    RejectReason.SUSPENDED: 7,
    RejectReason.CPS_LIMIT: 8,
    RejectReason.BLOCKED_DESTINATION: 9,
    RejectReason.NO_RATE: 9,
    RejectReason.CLI_REJECTED: 7,
}
STATUS_START, STATUS_STOP, STATUS_INTERIM = 1, 2, 3
STATUS_ACCOUNTING_ON, STATUS_ACCOUNTING_OFF = 7, 8
STATUS_KINDS = {STATUS_START: "start", STATUS_STOP: "stop", STATUS_INTERIM: "interim"}
_IN_PROGRESS = b""
_EXPIRY = struct.Struct("<d")
_PORT = struct.Struct(">H")


def duplicate_key(address: Any, data: bytes) -> bytes:
    """(source address, identifier, request authenticator) of a request, as one bytes object."""
    key: bytes = data[1:2] + data[4:20] + _PORT.pack(address[1]) + address[0].encode()
    if len(address) > 3 and address[3]:
        key += b"%" + str(address[3]).encode()  # an IPv6 scope: link-local peers differ by it
    return key


class DuplicateCache:
    """Replies by duplicate_key(), kept for a while (RFC 5080).

    Two generations of plain dicts from bytes to bytes (the expiry time packed in front of the
    reply): nothing in them is a container the garbage collector has to walk, and dropping the
    older generation is O(1). A generation is retired when it holds size_max / 2 entries or is
    older than the TTL, so at most size_max replies are held; an entry is served until its TTL.
    """

    def __init__(self, size_max: int = DUPLICATE_CACHE_MAX, ttl: float = DUPLICATE_TTL_SECONDS):
        self._current: dict[bytes, bytes] = {}
        self._previous: dict[bytes, bytes] = {}
        self._generation_max = max(size_max // 2, 1)
        self._ttl = ttl
        self._started = -float("inf")

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def get(self, key: bytes, now: float) -> bytes | None:
        entry = self._current.get(key)
        if entry is None:
            entry = self._previous.get(key)
            if entry is None:
                return None
        if _EXPIRY.unpack_from(entry)[0] < now:
            self.forget(key)
            return None
        return entry[8:]

    def put(self, key: bytes, reply: bytes, now: float) -> None:
        if len(self._current) >= self._generation_max or now - self._started > self._ttl:
            self._previous = self._current
            self._current = {}
            self._started = now
        self._previous.pop(key, None)
        self._current[key] = _EXPIRY.pack(now + self._ttl) + reply

    def forget(self, key: bytes) -> None:
        self._current.pop(key, None)
        self._previous.pop(key, None)


class UdpEndpoint:
    """A non-blocking UDP socket driven by trio: drain on readable, wait when the send buffer is
    full."""

    def __init__(self, listen: str) -> None:
        host, port = split_host_port(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # The kernel may cap the size; the default still works.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        self.sock.setblocking(False)
        self.sock.bind((host, port))
        self.address = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def send_nowait(self, data: bytes, address: Any) -> bool:
        """Send if the socket takes it now; False when its send buffer is full."""
        try:
            self.sock.sendto(data, address)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                child(DROPPED_PACKETS, "send_failed").inc()
                return True
            raise
        return True

    async def send(self, data: bytes, address: Any) -> None:
        """Send, waiting while the send buffer is full."""
        while not self.send_nowait(data, address):
            await trio.lowlevel.wait_writable(self.sock)

    def drain(self) -> list[tuple[bytes, Any]]:
        received: list[tuple[bytes, Any]] = []
        while len(received) < 1024:
            try:
                received.append(self.sock.recvfrom(DATAGRAM_BYTES_MAX))
            except BlockingIOError:
                break
            except OSError:
                # An ICMP error queued from an earlier send; nothing to read for it.
                continue
        return received


def _credential(packet: Packet, secret: bytes) -> Credential | None:
    if packet.has("User-Password"):
        return Pap(codec.decrypt_password(packet, secret).decode("utf-8", "replace"))
    chap = codec.chap(packet)
    if chap is not None:
        ident, challenge, response = chap
        return Chap(ident, challenge, response)
    return None


def _text(packet: Packet, name: str) -> str:
    value = packet.get(name)
    return value if isinstance(value, str) else ""


class RadiusService:
    """Both RADIUS sockets and their handlers, over the Api's engine and ledger."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.engine = api.engine
        self.nas = nas_table(api)
        self.require_message_authenticator = api.config.radius.require_message_authenticator
        self.duplicates = DuplicateCache()
        # Where each client was last heard from: a Disconnect-Request goes there.
        self.last_address: dict[str, str] = {}
        self.read_scopes: list[trio.CancelScope] = []

    # -- plumbing ------------------------------------------------------------------------------

    def _admit(self, data: bytes, address: Any, kind: str) -> tuple[NasClient, Packet] | None:
        """Known client, well-formed, authenticated: or dropped and counted."""
        client = self.nas.find(address[0])
        if client is None:
            child(DROPPED_PACKETS, "unknown_client").inc()
            return None
        try:
            packet = codec.decode(data)
            expected = Code.ACCESS_REQUEST if kind == "auth" else Code.ACCOUNTING_REQUEST
            if packet.code != expected:
                raise RadiusError("malformed", f"code {packet.code} on the {kind} port")
            codec.verify_request(
                packet,
                client.secret,
                require_message_authenticator=(
                    self.require_message_authenticator and client.require_message_authenticator
                ),
            )
        except RadiusError as error:
            child(DROPPED_PACKETS, error.reason).inc()
            return None
        self.last_address[client.name] = address[0]
        return client, packet

    async def serve(
        self,
        endpoint: UdpEndpoint,
        kind: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        reading = trio.CancelScope()
        self.read_scopes.append(reading)
        accounting = _InFlight(ACCOUNTING_INFLIGHT_MAX)
        try:
            # Accounting-On/Off runs in a task of this nursery, and a reply that finds the send
            # buffer full is sent from one.
            async with trio.open_nursery() as nursery:
                task_status.started()
                with reading:
                    while True:
                        await trio.lowlevel.wait_readable(endpoint.sock)
                        for count, (data, address) in enumerate(endpoint.drain(), start=1):
                            if count % YIELD_EVERY == 0:
                                await trio.lowlevel.cancel_shielded_checkpoint()
                            try:
                                if kind == "auth":
                                    reply = self._auth(data, address)
                                    if reply is not None:
                                        await endpoint.send(reply, address)
                                else:
                                    # Wait for room rather than read more than we hold.
                                    await accounting.room()
                                    await self._acct(endpoint, nursery, accounting, data, address)
                            except Exception:
                                # A bug in one request must not take the socket down.
                                log.exception("radius_request_failed", kind=kind)
                                child(DROPPED_PACKETS, "internal_error").inc()
                # Reading has stopped: what is being committed is answered before the socket
                # closes.
                await accounting.drained()
        finally:
            endpoint.close()

    def stop_reading(self) -> None:
        for scope in self.read_scopes:
            scope.cancel()

    # -- Access-Request ------------------------------------------------------------------------

    def _auth(self, data: bytes, address: Any) -> bytes | None:
        started = time.perf_counter()
        admitted = self._admit(data, address, "auth")
        if admitted is None:
            return None
        client, packet = admitted
        key = duplicate_key(address, data)
        now = time.monotonic()
        cached = self.duplicates.get(key, now)
        if cached is not None:
            child(REQUESTS, "radius", "access", "duplicate").inc()
            return cached or None
        called = packet.get("Called-Station-Id")
        session_id = packet.get("Acct-Session-Id")
        request = CallRequest(
            nas=client.name,
            username=_text(packet, "User-Name"),
            called=called if isinstance(called, str) and called else None,
            calling=_text(packet, "Calling-Station-Id"),
            credential=_credential(packet, client.secret),
            source_ip=(packet.get("Framed-IP-Address") or None),  # type: ignore[arg-type]
            session_id=session_id if isinstance(session_id, str) and session_id else None,
        )
        result = self.engine.authorize(request)
        if isinstance(result, Grant):
            attributes: list[tuple[str, object]] = []
            if result.seconds is not None:
                attributes.append(("Session-Timeout", result.seconds))
                attributes.append(("h323-credit-time", str(result.seconds)))
            attributes += [
                ("h323-credit-amount", format_money(max(result.available_micros, 0), 2)),
                ("h323-currency", result.currency),
                ("h323-billing-model", "1" if result.prepaid else "0"),
                ("h323-return-code", "0"),
            ]
            reply = codec.encode_reply(Code.ACCESS_ACCEPT, packet, attributes, client.secret)
            outcome = "accept"
        else:
            detail = f" {result.account_number}" if result.account_number else ""
            attributes = [
                (
                    "Reply-Message",
                    f"{result.reason.value}{detail}{' ' if result.detail else ''}{result.detail}",
                ),
                ("h323-return-code", str(RETURN_CODES[result.reason])),
            ]
            reply = codec.encode_reply(Code.ACCESS_REJECT, packet, attributes, client.secret)
            outcome = result.reason.value
            log.info(
                "call_rejected",
                reason=result.reason.value,
                level=result.account_number,
                nas=client.name,
                user=request.username,
                called=request.called,
                session=request.session_id,
            )
        self.duplicates.put(key, reply, now)
        child(REQUESTS, "radius", "access", outcome).inc()
        child(REQUEST_SECONDS, "radius", "access").observe(time.perf_counter() - started)
        return reply

    # -- Accounting-Request --------------------------------------------------------------------

    # An Accounting-Request is handled in the socket's loop up to its ledger write, which is
    # queued; the writer calls back after COMMIT and the reply is sent from there. No task per
    # request: the task, its slot and its wake-up were a tenth of the CPU of a call's accounting.

    async def _acct(
        self,
        endpoint: UdpEndpoint,
        nursery: trio.Nursery,
        accounting: _InFlight,
        data: bytes,
        address: Any,
    ) -> None:
        started = time.perf_counter()
        admitted = self._admit(data, address, "acct")
        if admitted is None:
            return
        client, packet = admitted
        key = duplicate_key(address, data)
        now = time.monotonic()
        cached = self.duplicates.get(key, now)
        if cached is not None:
            # Still being committed (empty marker): the first copy will answer.
            child(REQUESTS, "radius", "accounting", "duplicate").inc()
            if cached:
                await endpoint.send(cached, address)
            return
        self.duplicates.put(key, _IN_PROGRESS, now)
        reply = _Reply(self, endpoint, nursery, accounting, client, packet, address, key, started)
        status = packet.get("Acct-Status-Type")
        if status in (STATUS_ACCOUNTING_ON, STATUS_ACCOUNTING_OFF):
            accounting.add()
            nursery.start_soon(self._nas_restarted_task, client, reply)
            return
        kind = STATUS_KINDS.get(status if isinstance(status, int) else -1, "unknown")
        reply.kind = kind
        try:
            prepared = self._call_accounting(client, packet, kind)
        except BaseException:
            self.duplicates.forget(key)  # not answered: a retransmission may try again
            raise
        if isinstance(prepared, str):
            reply.send(prepared)  # nothing to commit
            return
        write, reply.result = prepared
        accounting.add()
        try:
            await self.api.writer.enqueue(write, reply.committed)
        except BaseException:
            accounting.remove()
            self.duplicates.forget(key)
            raise

    def _accounting_request(self, client: NasClient, packet: Packet) -> AccountingRequest:
        seconds = packet.get("Acct-Session-Time")
        cause = packet.cisco("h323-disconnect-cause") or ""
        if not cause:
            terminate = packet.get("Acct-Terminate-Cause")
            cause = str(terminate) if terminate is not None else ""
        return AccountingRequest(
            nas=client.name,
            session_id=_text(packet, "Acct-Session-Id"),
            username=_text(packet, "User-Name"),
            called=_text(packet, "Called-Station-Id"),
            calling=_text(packet, "Calling-Station-Id"),
            source_ip=(packet.get("Framed-IP-Address") or None),  # type: ignore[arg-type]
            duration_seconds=seconds if isinstance(seconds, int) and seconds > 0 else 0,
            disconnect_cause=cause,
        )

    def _call_accounting(
        self, client: NasClient, packet: Packet, kind: str
    ) -> str | tuple[LedgerWrite, Callable[[bool], str]]:
        """The engine's part of a Start, Interim-Update or Stop: the outcome when there is
        nothing to commit, else the ledger write and what makes the outcome of its commit
        (told whether the write was applied now)."""
        request = self._accounting_request(client, packet)
        if not request.session_id:
            return "no_session_id"
        engine = self.engine
        if kind == "stop":
            result = engine.stop(request)
            if isinstance(result, Reject):
                log.warning(
                    "stop_not_charged",
                    reason=result.reason.value,
                    session=request.session_id,
                    nas=client.name,
                    user=request.username,
                )
                return result.reason.value

            def stopped(applied: bool, result: StopResult = result) -> str:
                if not applied and not result.duplicate:
                    # Committed before this process started (a Stop retransmitted across a
                    # restart): the ledger is right; the engine charged it again in memory, so
                    # give it back.
                    engine.revert(result.transfers)
                    return "duplicate"
                return "duplicate" if result.duplicate else "ok"

            write = LedgerWrite(
                transfers=result.transfers,
                cdr=result.cdr,
                close_session=(client.name, request.session_id),
            )
            return write, stopped
        known = (request.nas, request.session_id) in engine.sessions
        if kind == "start":
            session = engine.start(request)
        elif kind == "interim":
            session = engine.update(request)
        else:
            return "unknown_status"
        if isinstance(session, Reject):
            log.warning(
                "accounting_not_tracked",
                reason=session.reason.value,
                kind=kind,
                session=request.session_id,
                nas=client.name,
            )
            return session.reason.value
        if known and kind == "interim":
            return "ok"
        write = LedgerWrite(
            open_session=OpenSession(
                nas=client.name,
                session_id=request.session_id,
                account_id=session.account.id,
                username=session.username,
                calling=session.calling,
                called=session.called,
                started_at=session.start_ms / 1000,
                authorized=session.authorized,
            )
        )
        return write, _ok

    async def _nas_restarted_task(self, client: NasClient, reply: _Reply) -> None:
        reply.kind = "accounting_on_off"
        try:
            outcome = await self._nas_restarted(client)
        except BaseException as error:
            self.duplicates.forget(reply.key)  # not answered: a retransmission may try again
            if not isinstance(error, Exception):
                raise
            log.exception("radius_request_failed", kind="acct")
            child(DROPPED_PACKETS, "internal_error").inc()
            return
        else:
            reply.send(outcome)
        finally:
            reply.accounting.remove()

    async def _nas_restarted(self, client: NasClient) -> str:
        """Accounting-On/Off: every open call of that NAS is over; charge what was used."""
        results: list[StopResult] = self.engine.end_all(client.name)
        for result in results:
            await self.api.commit(
                LedgerWrite(
                    transfers=result.transfers,
                    cdr=result.cdr,
                    close_session=(client.name, result.cdr.session_id),
                )
            )
        log.info("nas_restarted", nas=client.name, calls_ended=len(results))
        return "ok"


def _ok(applied: bool) -> str:
    return "ok"


class _InFlight:
    """Accounting requests of one socket between their read and their answer, at most `limit`:
    at the bound the socket is not read (backpressure), and a closing socket waits for them."""

    def __init__(self, limit: int) -> None:
        assert limit > 0
        self.limit = limit
        self.count = 0
        self._changed = trio.Event()

    def add(self) -> None:
        self.count += 1
        assert self.count <= self.limit

    def remove(self) -> None:
        self.count -= 1
        assert self.count >= 0
        self._changed.set()

    async def room(self) -> None:
        while self.count >= self.limit:
            await self._wait()

    async def drained(self) -> None:
        while self.count:
            await self._wait()

    async def _wait(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()


class _Reply:
    """What answering one Accounting-Request needs once its write is committed."""

    __slots__ = (
        "accounting",
        "address",
        "client",
        "endpoint",
        "key",
        "kind",
        "nursery",
        "packet",
        "result",
        "service",
        "started",
    )

    def __init__(
        self,
        service: RadiusService,
        endpoint: UdpEndpoint,
        nursery: trio.Nursery,
        accounting: _InFlight,
        client: NasClient,
        packet: Packet,
        address: Any,
        key: bytes,
        started: float,
    ) -> None:
        self.service = service
        self.endpoint = endpoint
        self.nursery = nursery
        self.accounting = accounting
        self.client = client
        self.packet = packet
        self.address = address
        self.key = key
        self.started = started
        self.kind = "unknown"
        self.result: Callable[[bool], str] = _ok

    def committed(self, outcome: WriteOutcome | None, error: BaseException | None) -> None:
        """Writer.enqueue's callback (on the asyncpg loop, in the turn that read the COMMIT)."""
        self.accounting.remove()
        if error is not None:
            log.error("radius_request_failed", kind="acct", error=repr(error))
            child(DROPPED_PACKETS, "internal_error").inc()
            self.service.duplicates.forget(self.key)  # not answered: the NAS retries
            return
        assert outcome is not None
        self.send(self.result(outcome.applied))

    def send(self, outcome: str) -> None:
        service = self.service
        reply = codec.encode_reply(Code.ACCOUNTING_RESPONSE, self.packet, [], self.client.secret)
        service.duplicates.put(self.key, reply, time.monotonic())
        child(REQUESTS, "radius", self.kind, outcome).inc()
        child(REQUEST_SECONDS, "radius", self.kind).observe(time.perf_counter() - self.started)
        if not self.endpoint.send_nowait(reply, self.address):
            self.nursery.start_soon(self.endpoint.send, reply, self.address)


async def radius_server(
    api: Api,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Both sockets and the Disconnect-Request client, until `shutdown`."""
    from ccserver.radius.coa import DisconnectClient

    service = RadiusService(api)
    auth = UdpEndpoint(api.config.radius.auth_listen)
    acct = UdpEndpoint(api.config.radius.acct_listen)
    api.radius = service  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, auth, "auth")
        await nursery.start(service.serve, acct, "acct")
        disconnects = DisconnectClient(api, service)
        coa_scope = trio.CancelScope()
        nursery.start_soon(_run_in_scope, disconnects.run, coa_scope)
        log.info(
            "radius_listening",
            auth=api.config.radius.auth_listen,
            acct=api.config.radius.acct_listen,
        )
        task_status.started()
        await shutdown.wait()
        # New datagrams are no longer read; accounting in flight commits and is answered.
        service.stop_reading()
        coa_scope.cancel()


async def _run_in_scope(fn: Callable[[], Any], scope: trio.CancelScope) -> None:
    with scope:
        await fn()
