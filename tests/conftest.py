"""Shared fixtures. ``fake_clerk`` and ``fake_tinybird`` come from the package's own pytest
plugin (``clerk_tinybird_middleware.testing.pytest_plugin``), as they would for users."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import traceback
from collections.abc import Iterator

import pytest

from clerk_tinybird_middleware.testing._issued import find_issued

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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(need_binary("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class _LeakCheck(logging.Handler):
    """Every record of every logger, at DEBUG, for the whole suite: any secret the fakes
    issued (session tokens, Tinybird JWTs, secret keys, admin tokens) fails the test."""

    def __init__(self, *, ignore: tuple[str, ...] = ()) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []
        self.ignore = ("httpcore.", *ignore)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.ignore):
            # httpcore logs the raw response headers *its client received* at DEBUG: the
            # tests' own clients reading x-tinybird-token / Set-Cookie, by design. The
            # package's outbound calls log no request headers and get no tokens in headers.
            return
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        for secret in find_issued(text):
            self.leaks.append(f"{record.name}: a secret ending …{secret[-6:]}")


@pytest.fixture(autouse=True)
def _no_secret_in_any_log(request: pytest.FixtureRequest) -> Iterator[None]:
    # A test whose own client puts a token in a URL (Tinybird's ``?token=``) gets httpx's
    # request line logged: that is the threat SECURITY.md warns about, shown on purpose.
    in_url = request.node.get_closest_marker("token_in_url") is not None
    handler = _LeakCheck(ignore=("httpx",) if in_url else ())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert not handler.leaks, f"secrets in log records: {handler.leaks}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def debug_logs() -> Iterator[list[logging.LogRecord]]:
    """Every log record, of every logger, at DEBUG, for leak checks."""
    handler = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
