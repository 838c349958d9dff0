"""A tiny threaded HTTP server on 127.0.0.1 for the fakes.

Standard library only (``wsgiref`` + ``ThreadingMixIn``): one thread per connection, so a
fake that sleeps to simulate a slow upstream does not hold up other clients.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .._types import StartResponse, WSGIApp, WSGIEnviron

__all__ = ["LoopbackFake", "serve_wsgi"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines would carry nothing secret, but they are noise in test output


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # a fake told to hang must not hang the test that stops it
    allow_reuse_address = True
    request_queue_size = 256


@contextmanager
def serve_wsgi(app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (0 = a free port) and yield its base URL."""
    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    # shutdown() waits for one poll: keep it short (tests start and stop many servers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class LoopbackFake:
    """Base of the fakes: a WSGI app that serves itself on loopback and knows its URL."""

    _api_url: str | None = None

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        raise NotImplementedError

    @property
    def api_url(self) -> str:
        """The base URL while serving (``with fake.serve():``)."""
        if self._api_url is None:
            raise RuntimeError(f"{type(self).__name__} is not serving: use `with fake.serve():`")
        return self._api_url

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve on ``host`` (a free port by default) and yield the base URL."""
        with serve_wsgi(self, host, port) as url:
            self._api_url = url
            try:
                yield url
            finally:
                self._api_url = None
