"""The RADIUS front end against a running server: radclient as a foreign client, our codec as a
fast one, a fake NAS for Disconnect-Request, and the metrics that count what was dropped."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccserver.radius import codec
from ccserver.radius.codec import Code
from tests.radius_world import (
    SECRET,
    RadiusClient,
    metric,
    radclient,
    setup_operator,
    wait_for,
)
from tests.server_harness import Server, free_port, ok, sigterm_during


@pytest.fixture
def radius(server: Server, api: httpx.Client) -> Any:
    setup_operator(api)
    auth = RadiusClient(server.auth_port)
    acct = RadiusClient(server.acct_port)
    yield auth, acct
    auth.close()
    acct.close()


def balance(api: httpx.Client, number: str) -> str:
    return str(ok(api.get(f"/v1/accounts/{number}"))["balance"])


def test_radclient_authorizes_a_call_and_accounts_for_it(
    server: Server, api: httpx.Client, radius: Any
) -> None:
    out = radclient(
        server,
        "auth",
        "User-Name=c1,User-Password=pw-c1,Called-Station-Id=442071234567,"
        "Acct-Session-Id=rc-1,Message-Authenticator=0x00",
    )
    assert "Received Access-Accept" in out, out
    assert "Session-Timeout = 500" in out, out  # 10.00 at 1.20/min buys 500 s
    assert 'h323-credit-time = "h323-credit-time=500"' in out, out
    assert 'h323-return-code = "h323-return-code=0"' in out, out
    assert 'h323-billing-model = "h323-billing-model=1"' in out, out
    out = radclient(
        server,
        "acct",
        "Acct-Status-Type=Start,User-Name=c1,Acct-Session-Id=rc-1,Called-Station-Id=442071234567",
    )
    assert "Received Accounting-Response" in out, out
    assert ok(api.get("/v1/accounts/c1"))["active_calls"] == 1
    out = radclient(
        server,
        "acct",
        "Acct-Status-Type=Stop,User-Name=c1,Acct-Session-Id=rc-1,"
        "Called-Station-Id=442071234567,Acct-Session-Time=60",
    )
    assert "Received Accounting-Response" in out, out
    assert balance(api, "c1") == "8.8000"  # 60 s at 1.20/min
    assert balance(api, "r1") == "99.4000"  # r1 pays the operator 0.60/min
    cdrs = ok(api.get("/v1/cdrs", params={"account": "c1"}))["items"]
    assert len(cdrs) == 1 and cdrs[0]["duration_seconds"] == 60


def test_every_reject_token_and_its_return_code(
    server: Server, api: httpx.Client, radius: Any
) -> None:
    auth, _ = radius

    def reject(expected: str, code: str, user: str, password: str | None, **attrs: object) -> None:
        reply = auth.auth(user, password, **attrs)
        assert reply.code == Code.ACCESS_REJECT
        message = reply.get("Reply-Message")
        assert isinstance(message, str) and message.split()[0] == expected, message
        assert reply.cisco("h323-return-code") == code

    called = {"Called_Station_Id": "4420"}
    reject("unknown_account", "1", "nobody", "x", **called)
    reject("bad_credentials", "2", "c1", "wrong", **called)
    reject("no_rate", "9", "c1", "pw-c1", Called_Station_Id="331234")
    ok(api.patch("/v1/accounts/c1", json={"blocked_prefixes": ["4420"]}))
    reject("blocked_destination", "9", "c1", "pw-c1", **called)
    ok(api.patch("/v1/accounts/c1", json={"blocked_prefixes": []}))
    ok(api.patch("/v1/accounts/r1", json={"status": "suspended"}))
    reject("suspended", "7", "c1", "pw-c1", **called)
    ok(api.patch("/v1/accounts/r1", json={"status": "active"}))
    ok(api.patch("/v1/accounts/c1", json={"expires_at": "2020-01-01T00:00:00Z"}))
    reject("expired", "5", "c1", "pw-c1", **called)
    ok(api.patch("/v1/accounts/c1", json={"expires_at": None}))
    ok(api.patch("/v1/accounts/c1", json={"cli_policy": "listed", "caller_ids": ["111"]}))
    reject("cli_rejected", "7", "c1", "pw-c1", Calling_Station_Id="222", **called)
    ok(api.patch("/v1/accounts/c1", json={"cli_policy": "any", "caller_ids": []}))
    ok(api.patch("/v1/accounts/r1", json={"max_concurrent": 1}))
    assert auth.auth("c1", "pw-c1", Acct_Session_Id="a", **called).code == Code.ACCESS_ACCEPT
    reject("concurrency_limit", "3", "c2", "pw-c2", Acct_Session_Id="b", **called)
    ok(api.patch("/v1/accounts/r1", json={"max_concurrent": 0, "cps": 1}))
    assert auth.auth("c2", "pw-c2", Acct_Session_Id="c", **called).code == Code.ACCESS_ACCEPT
    reject("cps_limit", "8", "c2", "pw-c2", Acct_Session_Id="d", **called)
    time.sleep(1.1)
    ok(api.patch("/v1/accounts/r1", json={"cps": 0}))
    ok(api.patch("/v1/accounts/c2", json={"billing": "prepaid"}))
    ok(
        api.post(
            "/v1/accounts",
            json={
                "number": "broke",
                "kind": "customer",
                "parent": "r1",
                "password": "pw",
                "rate_group": _retail(api),
            },
        ),
        201,
    )
    reject("insufficient_funds", "4", "broke", "pw", **called)
    assert metric(server, "ccserver_requests_total", protocol="radius", result="cps_limit") == 1


def _retail(api: httpx.Client) -> int:
    groups = ok(api.get("/v1/rate-groups"))["items"]
    return int(next(g["id"] for g in groups if g["name"] == "retail"))


def test_authentication_only_has_no_session_timeout(radius: Any) -> None:
    auth, _ = radius
    reply = auth.auth("c1", "pw-c1")
    assert reply.code == Code.ACCESS_ACCEPT and reply.get("Session-Timeout") is None
    # Message-Authenticator is the first attribute of the reply (BlastRADIUS).
    assert reply.attributes[0][0] == 80


def test_unknown_client_and_bad_message_authenticator_are_dropped(
    server: Server, radius: Any
) -> None:
    auth, _ = radius
    stranger = RadiusClient(server.auth_port, source="127.0.0.2")
    try:
        request = stranger.build(
            Code.ACCESS_REQUEST, [("User-Name", "c1"), ("User-Password", "pw-c1")]
        )
        assert stranger.send_raw(request, timeout=0.5) is None
    finally:
        stranger.close()
    assert metric(server, "ccserver_dropped_packets_total", reason="unknown_client") == 1
    missing = auth.build(
        Code.ACCESS_REQUEST,
        [("User-Name", "c1"), ("User-Password", "pw-c1")],
        message_authenticator=False,
    )
    assert auth.send_raw(missing, timeout=0.5) is None
    assert (
        metric(server, "ccserver_dropped_packets_total", reason="missing_message_authenticator")
        == 1
    )
    wrong = RadiusClient(server.auth_port, secret="not-the-secret")
    try:
        request = wrong.build(Code.ACCESS_REQUEST, [("User-Name", "c1"), ("User-Password", "x")])
        assert wrong.send_raw(request, timeout=0.5) is None
    finally:
        wrong.close()
    assert metric(server, "ccserver_dropped_packets_total", reason="bad_message_authenticator") == 1


def test_a_retransmitted_stop_is_charged_once(api: httpx.Client, radius: Any) -> None:
    auth, acct = radius
    assert auth.auth("c1", "pw-c1", Called_Station_Id="4420", Acct_Session_Id="s9").code == 2
    acct.acct("Start", "s9", User_Name="c1", Called_Station_Id="4420")
    stop = acct.build(
        Code.ACCOUNTING_REQUEST,
        [
            ("Acct-Status-Type", 2),
            ("Acct-Session-Id", "s9"),
            ("User-Name", "c1"),
            ("Called-Station-Id", "4420"),
            ("Acct-Session-Time", 30),
        ],
        message_authenticator=False,
    )
    first = acct.send_raw(stop)
    again = acct.send_raw(stop)  # the same datagram: a retransmission
    assert first is not None and first == again
    # A new Stop for the same call (new identifier) is recognised too.
    acct.acct("Stop", "s9", User_Name="c1", Called_Station_Id="4420", Acct_Session_Time=30)
    assert balance(api, "c1") == "9.4000"
    assert len(ok(api.get("/v1/cdrs", params={"account": "c1"}))["items"]) == 1


class FakeNas:
    """Answers Disconnect-Requests with Disconnect-ACK and remembers them."""

    def __init__(self) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.received: list[codec.Packet] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            try:
                data, address = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            packet = codec.decode(data)
            codec.verify_request(packet, SECRET.encode(), require_message_authenticator=False)
            self.received.append(packet)
            reply = codec.encode_reply(Code.DISCONNECT_ACK, packet, [], SECRET.encode())
            self.sock.sendto(reply, address)

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


def test_two_calls_draining_a_reseller_get_disconnect_requests(
    server: Server, api: httpx.Client
) -> None:
    nas = FakeNas()
    try:
        # r1 can pay 3.00 at 0.60/min: two calls together drain it in 150 s; make it 3 s by
        # pricing r1 at 60.00/min (1.00 a second each).
        setup_operator(api, reseller_balance="6", coa_port=nas.port)
        wholesale = next(
            g["id"] for g in ok(api.get("/v1/rate-groups"))["items"] if g["name"] == "wholesale"
        )
        ok(
            api.post(
                f"/v1/rate-groups/{wholesale}/rates",
                json={"rates": [{"prefix": "44", "connect_fee": "0", "per_minute": "60"}]},
            )
        )
        ok(api.patch("/v1/accounts/c1", json={}))
        auth = RadiusClient(server.auth_port)
        acct = RadiusClient(server.acct_port)
        for user, session in (("c1", "d1"), ("c2", "d2")):
            reply = auth.auth(user, f"pw-{user}", Called_Station_Id="4420", Acct_Session_Id=session)
            assert reply.code == Code.ACCESS_ACCEPT
            acct.acct("Start", session, User_Name=user, Called_Station_Id="4420")
        started = time.monotonic()
        wait_for(lambda: len(nas.received) == 2, timeout=15)
        elapsed = time.monotonic() - started
        assert 2.0 <= elapsed <= 5.0, elapsed  # 6.00 at 2 x 1.00/s lasts 3 s
        sessions = {p.get("Acct-Session-Id") for p in nas.received}
        assert sessions == {"d1", "d2"}
        assert {p.get("User-Name") for p in nas.received} == {"c1", "c2"}
        assert all(p.attributes[0][0] == 80 or p.has("Message-Authenticator") for p in nas.received)
        wait_for(
            lambda: (
                metric(server, "ccserver_disconnects_total", reason="depleted", result="ack") == 2
            )
        )
        for session, user in (("d1", "c1"), ("d2", "c2")):
            acct.acct(
                "Stop",
                session,
                User_Name=user,
                Called_Station_Id="4420",
                Acct_Session_Time=int(elapsed),
            )
        # r1 ends within one 1-second increment per call of its floor.
        assert float(balance(api, "r1")) >= -2.0
        auth.close()
        acct.close()
    finally:
        nas.close()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzzed_datagrams_never_break_the_socket(data: Any) -> None:
    """Random and mutated datagrams at the codec: only RadiusError, never a crash."""
    client = RadiusClient.__new__(RadiusClient)
    client.secret = SECRET.encode()
    client.identifier = 0
    valid = client.build(Code.ACCESS_REQUEST, [("User-Name", "c1"), ("User-Password", "pw")])
    blob = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.builds(
                lambda i, b: valid[:i] + bytes([b]) + valid[i + 1 :],
                st.integers(0, len(valid) - 1),
                st.integers(0, 255),
            ),
        )
    )
    try:
        packet = codec.decode(blob)
        codec.verify_request(packet, SECRET.encode(), require_message_authenticator=True)
    except codec.RadiusError:
        pass


def test_garbage_at_the_live_socket_is_counted_and_service_goes_on(
    server: Server, radius: Any
) -> None:
    import random

    auth, _ = radius
    rng = random.Random(5)
    valid = auth.build(Code.ACCESS_REQUEST, [("User-Name", "c1"), ("User-Password", "pw-c1")])
    for n in range(500):
        if n % 2:
            blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        else:
            index = rng.randrange(len(valid))
            blob = valid[:index] + bytes([rng.getrandbits(8)]) + valid[index + 1 :]
        auth.sock.sendto(blob, ("127.0.0.1", server.auth_port))
    time.sleep(0.5)
    while True:  # drain whatever the server did answer (a mutation may still be valid)
        try:
            auth.sock.settimeout(0.1)
            auth.sock.recvfrom(4096)
        except TimeoutError:
            break
    assert auth.auth("c1", "pw-c1").code == Code.ACCESS_ACCEPT
    dropped = metric(server, "ccserver_dropped_packets_total")
    assert dropped >= 400


def test_tshark_judges_a_captured_call(server: Server, api: httpx.Client, tmp_path: Any) -> None:
    """A live capture on loopback of a whole call: no malformed packet, good authenticators."""
    import shutil
    import subprocess

    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed and could not be (apt-get install tshark)")
    setup_operator(api)
    pcap = tmp_path / "call.pcap"
    ports = f"udp port {server.auth_port} or udp port {server.acct_port}"
    capture = subprocess.Popen(
        [tshark, "-i", "lo", "-f", ports, "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stderr is not None
        for line in capture.stderr:  # tshark says when it listens
            if "Capture started" in line:
                break
        time.sleep(0.5)
        auth = RadiusClient(server.auth_port)
        acct = RadiusClient(server.acct_port)
        assert auth.auth("c1", "pw-c1", Called_Station_Id="4420", Acct_Session_Id="t1").code == 2
        assert auth.auth("c1", "wrong", Called_Station_Id="4420").code == Code.ACCESS_REJECT
        acct.acct("Start", "t1", User_Name="c1", Called_Station_Id="4420")
        acct.acct("Stop", "t1", User_Name="c1", Called_Station_Id="4420", Acct_Session_Time=5)
        out = radclient(
            server, "auth", "User-Name=c2,User-Password=pw-c2,Message-Authenticator=0x00"
        )
        assert "Access-Accept" in out
        auth.close()
        acct.close()
        time.sleep(0.5)
    finally:
        capture.terminate()
        capture.wait(10)
    fields = ("radius.code", "radius.authenticator.valid", "_ws.malformed", "_ws.expert.severity")
    command = [
        tshark,
        "-2",
        "-r",
        str(pcap),
        "-n",
        "-o",
        f"radius.shared_secret:{SECRET}",
        "-o",
        "radius.validate_authenticator:TRUE",
        "-d",
        f"udp.port=={server.auth_port},radius",
        "-d",
        f"udp.port=={server.acct_port},radius",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]
    for field in fields:
        command += ["-e", field]
    rows = [
        dict(zip(fields, line.split("\t"), strict=True))
        for line in subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=60
        ).stdout.splitlines()
    ]
    codes = [int(row["radius.code"]) for row in rows]
    assert codes.count(1) == 3 and codes.count(2) == 2 and codes.count(3) == 1, codes
    assert codes.count(4) == 2 and codes.count(5) == 2, codes
    for row in rows:
        assert row["_ws.malformed"] == "", row
        severities = [int(s, 0) for s in row["_ws.expert.severity"].split("|") if s]
        assert all(s < 0x600000 for s in severities), row
        if int(row["radius.code"]) != 1:  # every reply and Accounting-Request authenticator
            assert row["radius.authenticator.valid"] == "1", row


def test_sigterm_during_a_stream_of_accounting_loses_no_acknowledged_start(
    database_url: str, tmp_path: Any
) -> None:
    running = Server(database_url, tmp_path)
    running.start()
    with running.client() as api:
        setup_operator(api)
    acknowledged: list[str] = []

    def nas(worker: int, stop: threading.Event) -> None:
        client = RadiusClient(running.acct_port)
        try:
            n = 0
            while not stop.is_set():
                session = f"w{worker}-{n}"
                n += 1
                attributes: list[tuple[str, object]] = [
                    ("Acct-Status-Type", 1),
                    ("Acct-Session-Id", session),
                    ("User-Name", "c1"),
                    ("Called-Station-Id", "4420"),
                ]
                data = client.build(Code.ACCOUNTING_REQUEST, attributes)
                try:
                    reply = client.send_raw(data, timeout=1.0)
                except OSError:
                    return  # the server is gone (ICMP port unreachable)
                if reply is not None:
                    codec.verify_reply(reply, data[4:20], client.secret)
                    acknowledged.append(session)
        finally:
            client.close()

    sigterm_during(running, nas)
    assert len(acknowledged) > 20

    async def committed() -> set[str]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch("SELECT session_id FROM sessions")
            return {row["session_id"] for row in rows}
        finally:
            await connection.close()

    assert set(acknowledged) <= asyncio.run(committed())
