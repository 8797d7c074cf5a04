"""A RADIUS client for tests (our codec over a real UDP socket), radclient as a foreign client, and
a small operator set up through the admin API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any

import httpx
import pytest

from ccserver.radius import codec
from ccserver.radius.codec import Code, Packet
from tests.server_harness import Server, ok

SECRET = "testing123"


class RadiusClient:
    def __init__(self, port: int, secret: str = SECRET, source: str = "127.0.0.1") -> None:
        self.port = port
        self.secret = secret.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(5)
        self.identifier = 0

    def close(self) -> None:
        self.sock.close()

    def build(self, code: Code, attributes: list[tuple[str, object]], **kw: Any) -> bytes:
        self.identifier = (self.identifier + 1) % 256
        return codec.encode_request(code, self.identifier, attributes, self.secret, **kw)

    def send_raw(self, data: bytes, timeout: float = 5.0) -> bytes | None:
        self.sock.settimeout(timeout)
        self.sock.sendto(data, ("127.0.0.1", self.port))
        try:
            reply, _ = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        return reply

    def request(self, code: Code, attributes: list[tuple[str, object]], **kw: Any) -> Packet:
        data = self.build(code, attributes, **kw)
        reply = self.send_raw(data)
        assert reply is not None, "no answer"
        return codec.verify_reply(reply, data[4:20], self.secret)

    def auth(self, user: str, password: str | None = None, **attrs: object) -> Packet:
        attributes: list[tuple[str, object]] = [("User-Name", user)]
        if password is not None:
            attributes.append(("User-Password", password))
        attributes += [(name.replace("_", "-"), value) for name, value in attrs.items()]
        return self.request(Code.ACCESS_REQUEST, attributes)

    def acct(self, status: str, session: str, **attrs: object) -> Packet:
        codes = {
            "Start": 1,
            "Stop": 2,
            "Interim-Update": 3,
            "Accounting-On": 7,
            "Accounting-Off": 8,
        }
        attributes: list[tuple[str, object]] = [
            ("Acct-Status-Type", codes[status]),
            ("Acct-Session-Id", session),
        ]
        attributes += [(name.replace("_", "-"), value) for name, value in attrs.items()]
        return self.request(Code.ACCOUNTING_REQUEST, attributes, message_authenticator=False)


def setup_operator(api: httpx.Client, reseller_balance: str = "100", coa_port: int = 3799) -> None:
    """NAS 127.0.0.1; operator -> reseller r1 (0.60/min to 44) -> c1 (1.20/min), c2."""
    nas = {"name": "gw1", "address": "127.0.0.1", "secret": SECRET, "coa_port": coa_port}
    ok(api.post("/v1/nas-clients", json=nas), 201)
    wholesale = ok(api.post("/v1/rate-groups", json={"name": "wholesale"}), 201)["id"]
    ok(
        api.post(
            f"/v1/rate-groups/{wholesale}/rates",
            json={"rates": [{"prefix": "44", "connect_fee": "0", "per_minute": "0.60"}]},
        )
    )
    ok(
        api.post(
            "/v1/accounts",
            json={
                "number": "r1",
                "kind": "reseller",
                "rate_group": wholesale,
                "balance": reseller_balance,
            },
        ),
        201,
    )
    retail = ok(api.post("/v1/rate-groups", json={"name": "retail", "owner": "r1"}), 201)["id"]
    ok(
        api.post(
            f"/v1/rate-groups/{retail}/rates",
            json={
                "rates": [
                    {"prefix": "44", "connect_fee": "0", "per_minute": "1.20"},
                    {"prefix": "1900", "connect_fee": "0", "per_minute": "3"},
                ]
            },
        )
    )
    for number in ("c1", "c2"):
        ok(
            api.post(
                "/v1/accounts",
                json={
                    "number": number,
                    "kind": "customer",
                    "parent": "r1",
                    "rate_group": retail,
                    "password": f"pw-{number}",
                    "balance": "10",
                },
            ),
            201,
        )


def radclient_path() -> str:
    path = shutil.which("radclient")
    if path is None:
        pytest.skip("radclient (Debian freeradius-utils) is not installed and could not be")
    return path


def radclient(server: Server, kind: str, attributes: str, secret: str = SECRET) -> str:
    port = server.auth_port if kind == "auth" else server.acct_port
    done = subprocess.run(
        [radclient_path(), "-x", "-r", "2", "-t", "3", f"127.0.0.1:{port}", kind, secret],
        input=attributes,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout + done.stderr


def metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
