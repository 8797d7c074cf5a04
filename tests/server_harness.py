"""A real `ccserver serve` process for end-to-end tests: its own database, free loopback ports,
a bootstrap token, and an HTTP client pointed at it."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

READY_TIMEOUT_SECONDS = 60


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None):
        self.token = "boot_" + secrets.token_urlsafe(16)
        self.http_port = free_port()
        self.auth_port = free_port(socket.SOCK_DGRAM)
        self.acct_port = free_port(socket.SOCK_DGRAM)
        self.diameter_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.env = {
            **os.environ,
            "CCSERVER_DATABASE__URL": database_url,
            "CCSERVER_DATABASE__DATA_DIR": str(data_dir),
            "CCSERVER_ADMIN_API__LISTEN": f"127.0.0.1:{self.http_port}",
            "CCSERVER_ADMIN_API__BOOTSTRAP_TOKEN": self.token,
            "CCSERVER_RADIUS__AUTH_LISTEN": f"127.0.0.1:{self.auth_port}",
            "CCSERVER_RADIUS__ACCT_LISTEN": f"127.0.0.1:{self.acct_port}",
            "CCSERVER_DIAMETER__LISTEN": f"127.0.0.1:{self.diameter_port}",
            "CCSERVER_LOG__LEVEL": "info",
            **(extra_env or {}),
        }
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ccserver", "serve", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {READY_TIMEOUT_SECONDS} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


def start_server(database_url: str, data_dir: Path) -> Server:
    """A started server; a half-started one is killed, never left behind."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = Server(database_url, data_dir)
    try:
        server.start()
    except BaseException:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        raise
    return server


@contextlib.contextmanager
def running(database_url: str, data_dir: Path) -> Iterator[Server]:
    """A server for one block: stopped (and its exit code checked) however the block ends."""
    server = start_server(database_url, data_dir)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, server.log()


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    running = Server(database_url, tmp_path)
    running.start()
    yield running
    code = running.stop()
    assert code == 0, running.log()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def sigterm_during(
    running: Server, work: Callable[[int, threading.Event], None], workers: int = 8
) -> None:
    """Run `work(worker, stop)` in `workers` threads; after 1.5 s send the server SIGTERM and
    check it exits 0; then set `stop` and wait for the threads."""
    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(i, stop)) for i in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    assert running.stop(signal.SIGTERM) == 0
    stop.set()
    for thread in threads:
        thread.join()
