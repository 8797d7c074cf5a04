"""RADIUS load generator: one process, several UDP sockets, a window of outstanding requests.

Run by ops/bench/radius_bench.py in its own process (so that it never shares an interpreter with
the server it measures), or by hand:

    .venv/bin/python ops/bench/radius_loadgen.py --mode cycle --auth-port 1812 --acct-port 1813 \
        --secret testing123 --users users.json --seconds 10

Modes (a "unit" is what the throughput counts):
- auth: one Access-Request (User-Password, Called-Station-Id, Acct-Session-Id,
  Message-Authenticator) per unit; a unit completes on Access-Accept.
- acct: Accounting-Request Start then Stop for a new Acct-Session-Id; the Stop is sent when the
  Start is answered.
- cycle: Access-Request, Start, Stop for a new Acct-Session-Id, each sent when the previous one
  is answered (Access-Reject ends the unit).

Without --rate the load is closed-loop: --parallelism units are always in flight (each has exactly
one request outstanding). With --rate, units start on a fixed schedule (open loop), still capped by
the window. Nothing is retransmitted: a request unanswered after --timeout is a loss, and its unit
is abandoned.

Requests are built from templates encoded once per user by our codec
(ccserver.radius.codec.encode_request); per request only the Identifier, the Request
Authenticator, the session id, the hidden User-Password and the Message-Authenticator are patched
in (checked byte for byte against encode_request at start-up). Every reply's Response
Authenticator is checked; every --full-check-every-th reply goes through codec.verify_reply.

Latency is measured from the send to the receive of each request (time.perf_counter_ns), and
also to the reply's arrival in the socket as the kernel stamped it (SO_TIMESTAMPNS):
"kernel_latency_ms" leaves out the time a reply waited for this process to read it, which tells
how much of the latency is the load generator's own. Only replies received in the measurement
window (after --warmup, for --seconds) are counted. The result is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib
import json
import os
import select
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

from ccserver.radius import codec
from ccserver.radius.codec import Code, RadiusError


def _pick_md5() -> Callable[..., Any]:
    # CPython's built-in MD5 costs a third of OpenSSL's for packet-sized inputs.
    try:
        return importlib.import_module("_md5").md5  # type: ignore[no-any-return]
    except (ImportError, AttributeError):  # pragma: no cover
        import hashlib

        return hashlib.md5


md5 = _pick_md5()

ZERO16 = bytes(16)
USER_PASSWORD = 2
ACCT_SESSION_ID = 44
MESSAGE_AUTHENTICATOR = 80
IDENTIFIERS = 256
SESSION_DIGITS = 12
STEPS = {"auth": ("auth",), "acct": ("start", "stop"), "cycle": ("auth", "start", "stop")}
KINDS = ("auth", "start", "stop")
POSITIVE = {
    "auth": Code.ACCESS_ACCEPT,
    "start": Code.ACCOUNTING_RESPONSE,
    "stop": Code.ACCOUNTING_RESPONSE,
}
# Each reply's arrival as the kernel stamped it (CLOCK_REALTIME): the latency without the time
# the reply waited in this process's socket for it to read.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
ANCILLARY_BYTES = socket.CMSG_SPACE(TIMESPEC.size)
SCAN_NS = 50_000_000  # look for timed-out requests every 50 ms


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _offsets(data: bytes) -> dict[int, int]:
    """Offset of the value of the first attribute of each type."""
    found: dict[int, int] = {}
    pos = codec.HEADER_LENGTH
    while pos < len(data):
        found.setdefault(data[pos], pos + 2)
        pos += data[pos + 1]
    return found


class Template:
    """One request encoded once by the codec; build() patches what changes per request."""

    __slots__ = ("inner", "ma", "outer", "pw", "pw_padded", "raw", "secret", "secret_md5", "sid")

    def __init__(
        self, code: Code, attributes: list[tuple[str, object]], secret: bytes, session_width: int
    ) -> None:
        placeholder = "0" * session_width
        attributes = [(n, placeholder if n == "Acct-Session-Id" else v) for n, v in attributes]
        access = code == Code.ACCESS_REQUEST
        kwargs: dict[str, Any] = {"authenticator": ZERO16} if access else {}
        raw = codec.encode_request(
            code, 0, attributes, secret, message_authenticator=access, **kwargs
        )
        offsets = _offsets(raw)
        self.raw = raw
        self.secret = secret
        self.sid = offsets[ACCT_SESSION_ID]
        self.pw = offsets.get(USER_PASSWORD, -1)
        self.ma = offsets.get(MESSAGE_AUTHENTICATOR, -1)
        self.pw_padded = b""
        if self.pw >= 0:
            clear = dict(attributes)["User-Password"]
            clear = clear.encode() if isinstance(clear, str) else clear
            assert isinstance(clear, bytes)
            self.pw_padded = clear.ljust(max(16, (len(clear) + 15) // 16 * 16), b"\0")
        key = (
            secret.ljust(64, b"\0") if len(secret) <= 64 else md5(secret).digest().ljust(64, b"\0")
        )
        self.inner = md5(bytes(b ^ 0x36 for b in key))
        self.outer = md5(bytes(b ^ 0x5C for b in key))
        self.secret_md5 = md5(secret)
        # The fast path must produce what the codec produces.
        sample_sid = "7" * session_width
        sample_auth = os.urandom(16) if access else None
        built = self.build(201, sample_sid.encode(), sample_auth or ZERO16)
        kwargs = {"authenticator": sample_auth} if access else {}
        expected = codec.encode_request(
            code,
            201,
            [(n, sample_sid if n == "Acct-Session-Id" else v) for n, v in attributes],
            secret,
            message_authenticator=access,
            **kwargs,
        )
        if built != expected:
            raise AssertionError(f"template for {code.name} differs from codec.encode_request")

    def build(self, identifier: int, session_id: bytes, authenticator: bytes) -> bytes:
        buf = bytearray(self.raw)
        buf[1] = identifier
        sid = self.sid
        buf[sid : sid + len(session_id)] = session_id
        ma = self.ma
        if ma < 0:  # Accounting-Request: the Request Authenticator is an MD5 over the packet
            buf[4:20] = ZERO16
            h = md5(buf)
            h.update(self.secret)
            buf[4:20] = h.digest()
            return bytes(buf)
        buf[4:20] = authenticator
        pw = self.pw
        if pw >= 0:
            last = authenticator
            padded = self.pw_padded
            for start in range(0, len(padded), 16):
                h = self.secret_md5.copy()
                h.update(last)
                last = _xor(padded[start : start + 16], h.digest())
                buf[pw + start : pw + start + 16] = last
        buf[ma : ma + 16] = ZERO16
        inner = self.inner.copy()
        inner.update(buf)
        outer = self.outer.copy()
        outer.update(inner.digest())
        buf[ma : ma + 16] = outer.digest()
        return bytes(buf)


class Unit:
    __slots__ = ("session", "started", "step", "user")

    def __init__(self, user: int, session: bytes, started: int) -> None:
        self.user = user
        self.session = session
        self.step = 0
        self.started = started


def percentiles(samples: array[int]) -> dict[str, float]:
    if not samples:
        return {"samples": 0}
    ordered = sorted(samples)
    n = len(ordered)

    def at(fraction: float) -> float:
        return round(ordered[min(n - 1, int(fraction * n))] / 1e6, 3)

    return {
        "samples": n,
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": round(ordered[-1] / 1e6, 3),
        "mean": round(sum(ordered) / n / 1e6, 3),
    }


def build_templates(args: argparse.Namespace, users: list[tuple[str, str]]) -> dict[str, list[Any]]:
    secret = args.secret.encode()
    width = len(args.session_prefix) + SESSION_DIGITS
    common: list[tuple[str, object]] = [
        ("Called-Station-Id", args.called),
        ("Calling-Station-Id", args.calling),
        ("NAS-IP-Address", "127.0.0.1"),
    ]
    stop_extra = [("Acct-Session-Time", args.call_seconds), ("Acct-Terminate-Cause", 1)]
    steps = STEPS[args.mode]
    templates: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for user, password in users:
        session: list[tuple[str, object]] = [("User-Name", user), ("Acct-Session-Id", "")]
        if "auth" in steps:
            auth = [*session, ("User-Password", password), *common]
            templates["auth"].append(Template(Code.ACCESS_REQUEST, auth, secret, width))
        if "start" in steps:
            start = [("Acct-Status-Type", 1), *session, *common]
            templates["start"].append(Template(Code.ACCOUNTING_REQUEST, start, secret, width))
            stop = [("Acct-Status-Type", 2), *session, *common, *stop_extra]
            templates["stop"].append(Template(Code.ACCOUNTING_REQUEST, stop, secret, width))
    return templates


def run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.users) as f:
        users = [(str(u), str(p)) for u, p in json.load(f)]
    if not users:
        raise SystemExit("no users")
    if args.parallelism > args.sockets * IDENTIFIERS // 2:
        raise SystemExit("--parallelism may be at most 128 per socket (identifiers are reused)")
    secret = args.secret.encode()
    templates = build_templates(args, users)
    steps = STEPS[args.mode]
    ports = {"auth": args.auth_port, "start": args.acct_port, "stop": args.acct_port}
    addresses = {kind: (args.server, port) for kind, port in ports.items()}

    socks: list[socket.socket] = []
    epoll = select.epoll()
    for _ in range(args.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            s.setsockopt(socket.SOL_SOCKET, option, 1 << 21)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((args.bind, 0))
        s.setblocking(False)
        socks.append(s)
        epoll.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    # FIFO free lists: an identifier whose request timed out is reused as late as possible.
    free = [collections.deque(range(IDENTIFIERS)) for _ in socks]
    pending: list[dict[int, tuple[Unit, int, bytes, str]]] = [{} for _ in socks]

    latencies = {kind: array("q") for kind in KINDS}
    # With --latency-log: per answered request in the window, its send (ns after the window
    # opened), its latency (ns) and its kind's index in KINDS.
    timeline = array("q")
    kinds_index = {kind: i for i, kind in enumerate(KINDS)}
    kernel_latencies = array("q")
    unit_latencies = array("q")
    counts = collections.Counter[str]()
    first_reject: list[str] = []
    prefix = args.session_prefix.encode()
    next_session = 0
    next_user = 0
    next_socket = 0
    inflight = 0
    full_check_every = max(args.full_check_every, 0)
    replies_seen = 0

    gc.collect()
    gc.freeze()
    gc.disable()
    realtime_offset = time.time_ns() - time.perf_counter_ns()
    cpu_started = time.process_time()
    t0 = time.perf_counter_ns()
    window_start = t0 + int(args.warmup * 1e9)
    window_end = window_start + int(args.seconds * 1e9)
    timeout_ns = int(args.timeout * 1e9)
    interval_ns = int(1e9 / args.rate) if args.rate > 0 else 0
    next_due = t0
    next_scan = t0 + SCAN_NS
    hard_end = window_end + timeout_ns + 1_000_000_000

    def send(unit: Unit, kind: str, now: int) -> bool:
        nonlocal next_socket
        for _ in range(len(socks)):
            index = next_socket
            next_socket = (next_socket + 1) % len(socks)
            if free[index]:
                break
        else:
            counts["no_identifier"] += 1
            return False
        identifier = free[index].popleft()
        authenticator = os.urandom(16) if kind == "auth" else ZERO16
        data = templates[kind][unit.user].build(identifier, unit.session, authenticator)
        try:
            socks[index].sendto(data, addresses[kind])
        except OSError:
            free[index].append(identifier)
            counts["send_errors"] += 1
            return False
        pending[index][identifier] = (unit, now, data[4:20], kind)
        counts["sent"] += 1
        return True

    def start_unit(now: int) -> bool:
        nonlocal next_session, next_user, inflight
        session = prefix + b"%0*d" % (SESSION_DIGITS, next_session)
        next_session += 1
        unit = Unit(next_user, session, now)
        next_user = (next_user + 1) % len(users)
        if not send(unit, steps[0], now):
            return False
        inflight += 1
        return True

    def on_reply(index: int, data: bytes, now: int, arrived: int) -> None:
        nonlocal inflight, replies_seen
        if len(data) < 20:
            counts["bad_replies"] += 1
            return
        entry = pending[index].get(data[1])
        if entry is None:
            counts["stray_replies"] += 1
            return
        unit, sent, request_authenticator, kind = entry
        length = int.from_bytes(data[2:4], "big")
        h = md5(data[:4])
        h.update(request_authenticator)
        h.update(data[20:length])
        h.update(secret)
        if length < 20 or length > len(data) or h.digest() != data[4:20]:
            counts["bad_replies"] += 1  # not ours (e.g. a late reply): keep waiting
            return
        del pending[index][data[1]]
        free[index].append(data[1])
        replies_seen += 1
        if full_check_every and replies_seen % full_check_every == 0:
            try:
                codec.verify_reply(
                    data,
                    request_authenticator,
                    secret,
                    require_message_authenticator=args.require_message_authenticator,
                )
                counts["full_checks"] += 1
            except RadiusError as error:
                counts["bad_replies"] += 1
                print(f"reply failed the full check: {error}", file=sys.stderr)
        in_window = window_start <= now <= window_end
        if in_window:
            latencies[kind].append(now - sent)
            kernel_latencies.append(arrived - sent)
            if args.latency_log:
                timeline.extend((sent - window_start, now - sent, kinds_index[kind]))
            counts["answered"] += 1
        if data[0] != POSITIVE[kind]:
            counts["rejects"] += 1
            if not first_reject:
                try:
                    message = codec.decode(data).get("Reply-Message")
                except RadiusError as error:
                    message = str(error)
                first_reject.append(f"{kind}: code {data[0]}: {message}")
                print(f"first negative answer: {first_reject[0]}", file=sys.stderr)
            inflight -= 1
            return
        unit.step += 1
        if unit.step < len(steps):
            if not send(unit, steps[unit.step], now):
                inflight -= 1
            return
        inflight -= 1
        if in_window:
            counts["completed"] += 1
            unit_latencies.append(now - unit.started)

    try:
        while True:
            now = time.perf_counter_ns()
            accepting = now < window_end
            if accepting:
                if interval_ns:
                    if next_due <= now and inflight >= args.parallelism:
                        counts["window_full"] += 1
                    while next_due <= now and inflight < args.parallelism:
                        if now - next_due > 1_000_000:
                            counts["late_starts"] += 1
                        next_due += interval_ns
                        if not start_unit(now):
                            break
                else:
                    while inflight < args.parallelism and start_unit(now):
                        pass
            elif inflight == 0 or now > hard_end:
                break
            if now >= next_scan:
                next_scan = now + SCAN_NS
                for index, waiting in enumerate(pending):
                    expired = [i for i, e in waiting.items() if now - e[1] > timeout_ns]
                    for identifier in expired:
                        del waiting[identifier]
                        free[index].append(identifier)
                        counts["timeouts"] += 1
                        inflight -= 1
            if interval_ns and accepting and inflight < args.parallelism:
                # Sleep until the next start is due (epoll rounds up to 1 ms: starts due within
                # the same millisecond go out together).
                wait = min(max(0.0, (next_due - now) / 1e9), SCAN_NS / 1e9)
            else:
                # Closed loop, or the window is full: only an answer or a timeout frees a slot.
                wait = SCAN_NS / 1e9
            for fd, _ in epoll.poll(wait):
                index = by_fd[fd]
                s = socks[index]
                while True:
                    try:
                        data, ancillary, _, _ = s.recvmsg(4096, ANCILLARY_BYTES)
                    except BlockingIOError:
                        break
                    except OSError:
                        counts["recv_errors"] += 1
                        continue
                    now = time.perf_counter_ns()
                    arrived = now
                    for level, kind, cdata in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            seconds, nanoseconds = TIMESPEC.unpack(cdata)
                            arrived = seconds * 1_000_000_000 + nanoseconds - realtime_offset
                    on_reply(index, data, now, arrived)
    finally:
        for s in socks:
            s.close()
        epoll.close()
    cpu = time.process_time() - cpu_started
    wall = (time.perf_counter_ns() - t0) / 1e9
    all_latencies = array("q")
    for kind in KINDS:
        all_latencies.extend(latencies[kind])
    if args.latency_log:
        with open(args.latency_log, "w") as log:
            log.write("sent_ms\tlatency_ms\tkind\n")
            for i in range(0, len(timeline), 3):
                sent_at, latency, kind_at = timeline[i : i + 3]
                log.write(f"{sent_at / 1e6:.3f}\t{latency / 1e6:.3f}\t{KINDS[kind_at]}\n")
    # Requests still pending at the end never got an answer.
    counts["timeouts"] += sum(len(p) for p in pending)
    return {
        "mode": args.mode,
        "rate_target": args.rate,
        "parallelism": args.parallelism,
        "sockets": args.sockets,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "users": len(users),
        "units_completed": counts["completed"],
        "units_per_s": round(counts["completed"] / args.seconds, 1),
        "requests_answered": counts["answered"],
        "requests_per_s": round(counts["answered"] / args.seconds, 1),
        "latency_ms": percentiles(all_latencies),
        "kernel_latency_ms": percentiles(kernel_latencies),
        "by_kind": {k: percentiles(v) for k, v in latencies.items() if k in steps},
        "unit_latency_ms": percentiles(unit_latencies),
        "sent": counts["sent"],
        "timeouts": counts["timeouts"],
        "rejects": counts["rejects"],
        "first_reject": first_reject[0] if first_reject else None,
        "bad_replies": counts["bad_replies"],
        "stray_replies": counts["stray_replies"],
        "send_errors": counts["send_errors"] + counts["no_identifier"],
        "window_full": counts["window_full"],
        "late_starts": counts["late_starts"],
        "full_checks": counts["full_checks"],
        "cpu_percent": round(100 * cpu / wall, 1) if wall else 0.0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mode", choices=sorted(STEPS), required=True)
    parser.add_argument("--server", default="127.0.0.1")
    parser.add_argument("--bind", default="127.0.0.1", help="source address of the sockets")
    parser.add_argument("--auth-port", type=int, default=1812)
    parser.add_argument("--acct-port", type=int, default=1813)
    parser.add_argument("--secret", default="testing123")
    parser.add_argument("--users", required=True, help='JSON file: [["user", "password"], ...]')
    parser.add_argument("--called", default="442071234567", help="Called-Station-Id")
    parser.add_argument("--calling", default="15550100000", help="Calling-Station-Id")
    parser.add_argument("--call-seconds", type=int, default=60, help="Acct-Session-Time of Stop")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=1.0, help="load before the window")
    parser.add_argument("--parallelism", type=int, default=64, help="units in flight at most")
    parser.add_argument("--sockets", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="units/s (0: closed loop)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds before a loss")
    parser.add_argument(
        "--session-prefix",
        default=f"lg{os.getpid() % 100_000:05d}{os.urandom(2).hex()}-",
        help="Acct-Session-Id prefix (a 12-digit counter follows)",
    )
    parser.add_argument(
        "--latency-log", metavar="PATH", help="write each answered request's send and latency"
    )
    parser.add_argument("--full-check-every", type=int, default=64, metavar="N")
    parser.add_argument(
        "--require-message-authenticator",
        action="store_true",
        help="full checks require a Message-Authenticator in Access-Accept/Reject",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
