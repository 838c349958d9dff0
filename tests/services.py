"""Real services the tests start on loopback, and the rule for when one is missing.

``CLERK_TINYBIRD_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns a missing binary into a
failure instead of a skip: a green CI never hides a missing install step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

REQUIRE_SERVICES = os.environ.get("CLERK_TINYBIRD_REQUIRE_SERVICES") == "1"


def need_binary(name: str) -> str:
    """The path of ``name``; skip without it — or fail when services are required (CI)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make test installs it when run as root)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, stoppable and restartable mid-test."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


def _wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class RedisCluster:
    """A real Redis Cluster on loopback (``redis-server --cluster-enabled yes`` per node, joined
    with ``redis-cli --cluster create``), foreground processes, free ports, a temp dir.

    ``--cluster-require-full-coverage no``: with no replicas, a killed node's slots are down
    while the other nodes keep serving theirs (what a cache must survive).
    """

    def __init__(self, nodes: int = 3, *, node_timeout_ms: int = 1000) -> None:
        self.server = need_binary("redis-server")
        self.cli = need_binary("redis-cli")
        self.dir = tempfile.mkdtemp(prefix="clerk-tinybird-cluster-")
        self.ports = [free_port() for _ in range(nodes)]
        self.bus_ports = [free_port() for _ in range(nodes)]
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def url(self, node: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[node]}/0"

    def _run_cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [self.cli, "-p", str(port), *args], capture_output=True, text=True, timeout=5
        )
        return done.stdout

    def start_node(self, port: int) -> None:
        """Start (or restart, keeping its nodes.conf) the node on ``port``."""
        index = self.ports.index(port)
        folder = os.path.join(self.dir, str(port))
        os.makedirs(folder, exist_ok=True)
        argv = [
            self.server,
            *("--bind", "127.0.0.1", "--port", str(port)),
            *("--cluster-port", str(self.bus_ports[index]), "--cluster-enabled", "yes"),
            *("--cluster-config-file", "nodes.conf", "--dir", folder),
            *("--cluster-node-timeout", str(self.node_timeout_ms)),
            *("--cluster-require-full-coverage", "no"),
            *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
        ]
        self.procs[port] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_until(lambda: self._run_cli(port, "ping").strip() == "PONG", 10, f"node {port}")

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait_until(self.healthy, 30, "the cluster")
        return self

    def healthy(self) -> bool:
        return all(
            "cluster_state:ok" in self._run_cli(port, "cluster", "info")
            for port, proc in self.procs.items()
            if proc.poll() is None
        )

    def slot_owner(self, key: str) -> int:
        """The port of the node serving ``key``'s slot."""
        slot = int(self._run_cli(self.ports[0], "cluster", "keyslot", key).strip())
        for line in self._run_cli(self.ports[0], "cluster", "nodes").splitlines():
            fields = line.split()
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(key)

    def stored_keys(self) -> list[str]:
        found: list[str] = []
        for port, proc in self.procs.items():
            if proc.poll() is None:
                found += self._run_cli(port, "--scan").split()
        return found

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    cert: str
    key: str


def make_tls_files(folder: str) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (cryptography)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clerk-tinybird test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(
        *(os.path.join(folder, name) for name in ("ca.crt", "server.crt", "server.key"))
    )
    with open(files.ca, "wb") as out:
        out.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(files.cert, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(files.key, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


class TLSRedisServer(RedisServer):
    """A redis-server answering only TLS (``--port 0 --tls-port``), with files from
    :func:`make_tls_files`; ``url`` verifies the certificate against that CA."""

    def __init__(self, binary: str, tls: TLSFiles) -> None:
        super().__init__(binary)
        self.tls = tls
        self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={tls.ca}"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                self.binary,
                *("--bind", "127.0.0.1", "--port", "0", "--tls-port", str(self.port)),
                *("--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key),
                *("--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(lambda: self.info("stats") is not None, 10, "redis-server with TLS")

    def info(self, section: str) -> dict[str, str]:
        cli = need_binary("redis-cli")
        done = subprocess.run(
            [cli, "--tls", "--cacert", self.tls.ca, "-p", str(self.port), "info", section],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        pairs = (line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
        return {name: value.strip() for name, value in pairs}


def requests_from_threads(
    url: str, path: str, tokens: list[str], threads: int = 20, each: int = 10
) -> list[tuple[str, str]]:
    """``threads`` clients released at once, each sending ``each`` requests to ``path`` with the
    session tokens in turn (Bearer): every answer's (user, Tinybird token). Each answer must be
    200 and carry its token in the body (``{"user", "token"}``) as in the header."""
    start = threading.Barrier(threads)

    def worker(n: int) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        with httpx.Client(base_url=url, timeout=20) as http:
            start.wait()
            for i in range(each):
                token = tokens[(n + i) % len(tokens)]
                response = http.get(path, headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 200
                body = response.json()
                assert body["token"] == response.headers["x-tinybird-token"]
                seen.append((body["user"], body["token"]))
        return seen

    with ThreadPoolExecutor(threads) as pool:
        return [pair for seen in pool.map(worker, range(threads)) for pair in seen]
